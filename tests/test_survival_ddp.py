"""With several processes the Cox loss uses the risk sets of the global batch, with gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_loss_sees_the_global_batch

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.tasks.survival import SurvivalTask

N = 16


def _batch():
    g = torch.Generator().manual_seed(0)
    risk = torch.randn(N, 1, generator=g)
    time = torch.randint(1, 6, (N, 1), generator=g).float()  # many ties
    event = (torch.rand(N, 1, generator=g) < 0.6).float()
    return risk, time, event


@pytest.mark.slow
def test_gathered_loss_equals_global_batch_loss():
    risk, time, event = _batch()
    task = SurvivalTask([LabelSpec("label_death", "survival", period="period_death")])
    assert_loss_sees_the_global_batch(task, risk, time, event, port=29511)


def _tabular_survival_module():
    from nervus_lightning.data.schema import DataSchema
    from nervus_lightning.module import NervusModule

    schema = DataSchema(
        labels=[LabelSpec("label_death", "survival", period="period_death")],
        input_columns=["input_a", "input_b"],
        input_mean=[0.0, 0.0],
        input_std=[1.0, 1.0],
    )
    torch.manual_seed(0)
    return NervusModule(
        schema, extractor=None, tabular={"hidden": [8], "dropout": 0.0, "norm": "none"}
    )


def _survival_batch():
    g = torch.Generator().manual_seed(1)
    return {
        "index": torch.arange(N),
        "tabular": torch.randn(N, 2, generator=g),
        "time": torch.randint(1, 6, (N, 1), generator=g).float(),
        "target": (torch.rand(N, 1, generator=g) < 0.6).float(),
    }


def _module_worker(rank: int, world: int, port: int, out: dict) -> None:
    import lightning as L

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    module = _tabular_survival_module()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    module.trainer = trainer
    module.setup("fit")  # the module's own DDP path: gather risks with gradients
    part = slice(rank * N // world, (rank + 1) * N // world)
    batch = {k: v[part] for k, v in _survival_batch().items()}
    loss = torch.stack(module._losses(module(batch), batch)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    out[rank] = (loss.item(), grads)
    dist.destroy_process_group()


@pytest.mark.slow
def test_module_gathers_the_global_batch_in_ddp():
    """Two real gloo processes run NervusModule.training_step through Lightning's DDP strategy:
    each sees the loss of the global batch, and DDP's gradient average equals the gradient of
    one process holding the whole batch."""
    world = 2
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_module_worker, args=(world, 29513, out), nprocs=world, join=True)
    module = _tabular_survival_module()
    batch = _survival_batch()
    expected = module._losses(module(batch), batch)[0]
    expected.backward()
    full = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    for rank in range(world):
        assert out[rank][0] == pytest.approx(expected.item(), rel=1e-6)
    for name, grad in full.items():
        averaged = sum(out[rank][1][name] for rank in range(world)) / world
        torch.testing.assert_close(averaged, grad, rtol=1e-5, atol=1e-7)
