"""The epoch's train_loss is logged once per epoch, not on every step: the same case-weighted
mean of the step losses, without Lightning's per-call bookkeeping on every step (about 0.8 ms of
host time a step, as much as a small network's whole step: benchmarks/step_overhead.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import make_dataset

from nervus_lightning.console import quiet_lightning
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.module import NervusModule


@pytest.mark.parametrize("ensemble", [1, 2])
def test_train_loss_is_the_case_weighted_mean_logged_once(tmp_path, monkeypatch, ensemble):
    csv = make_dataset(tmp_path, n=80, images=False)  # 40 training rows: batches 16, 16, 8
    dm = NervusDataModule(csv, batch_size=16, use_images=False)
    module = NervusModule(
        dm.schema, extractor=None, mixer=None, task="classification", ensemble=ensemble
    )
    steps: list[tuple[float, int]] = []  # one per member per step
    losses_of = module._losses

    def record(outputs, batch):
        losses = losses_of(outputs, batch)
        if module.training:
            steps.append((float(torch.stack(losses).detach().sum()), len(batch["index"])))
        return losses

    calls: list[str] = []
    log = module.log

    def count(name, *args, **kwargs):
        calls.append(name)
        return log(name, *args, **kwargs)

    monkeypatch.setattr(module, "_losses", record)
    monkeypatch.setattr(module, "log", count)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path, **options)
    with quiet_lightning():
        trainer.fit(module, datamodule=dm)
    # The members' mean of each step (the logged scale is one model's).
    steps = [
        (sum(loss for loss, _ in steps[i : i + ensemble]) / ensemble, steps[i][1])
        for i in range(0, len(steps), ensemble)
    ]
    assert [cases for _, cases in steps] == [16, 16, 8] * 2
    last = steps[3:]  # the second epoch's steps
    expected = sum(loss * cases for loss, cases in last) / sum(cases for _, cases in last)
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(expected, rel=1e-6)
    assert calls.count("train_loss") == 2  # once per epoch, not once per step
