"""With several processes the Cox loss uses the risk sets of the global batch, with gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.tasks.survival import SurvivalTask

N = 16


def _batch():
    g = torch.Generator().manual_seed(0)
    risk = torch.randn(N, 1, generator=g)
    time = torch.randint(1, 6, (N, 1), generator=g).float()  # many ties
    event = (torch.rand(N, 1, generator=g) < 0.6).float()
    return risk, time, event


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.nn.functional import all_gather

    risk, time, event = _batch()
    part = slice(rank * N // world, (rank + 1) * N // world)
    local = risk[part].clone().requires_grad_(True)
    task = SurvivalTask([LabelSpec("label_death", "survival", period="period_death")])
    task.gather = lambda t: torch.cat(all_gather(t))
    loss = task.loss(local, {"target": event[part], "time": time[part]}, 0)
    loss.backward()
    out[rank] = (loss.item(), local.grad.clone())
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_equals_global_batch_loss():
    world = 2
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(world, 29511, out), nprocs=world, join=True)
    risk, time, event = _batch()
    full = risk.clone().requires_grad_(True)
    task = SurvivalTask([LabelSpec("label_death", "survival", period="period_death")])
    expected = task.loss(full, {"target": event, "time": time}, 0)
    expected.backward()
    for rank in range(world):
        loss, grad = out[rank]
        assert loss == pytest.approx(expected.item(), rel=1e-6)
        # all_gather's backward sums the gradient of every rank's (identical) loss; DDP then
        # averages over ranks, which gives the global-batch gradient.
        part = slice(rank * N // world, (rank + 1) * N // world)
        torch.testing.assert_close(grad / world, full.grad[part])
