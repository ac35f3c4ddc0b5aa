"""Faults: a run killed with SIGKILL mid-epoch or between epochs and resumed from ``last.ckpt``
ends exactly as an uninterrupted run; two runs with the same seed are identical (deterministic
mode, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

SRC = str(Path(__file__).parents[1] / "src")
# 24 training cases in batches of 4: 6 steps per epoch.
RUN = [
    "model/extractor=small_cnn",  # small checkpoints (see FAST in conftest)
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.image_size=16",
    "data.batch_size=4",
    "data.num_workers=0",
    "augmentation=xray",  # random: the resumed run must draw what the uninterrupted one drew
    "evaluation.n_bootstrap=20",
]
# Where the run is killed (after that optimiser step), the last.ckpt it leaves, and the options
# that make it: every 4 steps, so the newest is from step 8, 2 of epoch 1's 6 steps done; or
# every epoch's end (the interval of ResumeCheckpoint set to 0 s, as any epoch of a minute or
# more would have it), so a kill at epoch 2's first step leaves the end of epoch 1.
KILLS = {
    "mid-epoch": (9, 8, 1, ["checkpoint.every_n_train_steps=4"]),
    "between epochs": (13, 12, 1, []),
}

# Trains like the command line, plus a callback that SIGKILLs the process (no clean-up at all)
# after the optimiser step argv[2].
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from hydra import compose, initialize_config_dir
    import nervus_lightning.callbacks
    from nervus_lightning.config import config_dir
    from nervus_lightning.cli.overrides import with_csv_data_group
    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.workflows.train import train

    nervus_lightning.callbacks.RESUME_EVERY_S = 0.0

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=with_csv_data_group(sys.argv[3:]))
    train(train_settings(cfg), sys.argv[1], callbacks=[KillAt()])
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC}


def train_cli(csv: Path, run_dir: Path, *extra: str) -> None:
    args = ["-m", "nervus_lightning", f"data.csv={csv}", f"hydra.run.dir={run_dir}", *RUN]
    out = subprocess.run(
        [sys.executable, *args, *extra], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["state_dict"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.mark.parametrize("kill", list(KILLS))
def test_sigkill_then_resume_equals_uninterrupted(dataset, tmp_path, kill):
    kill_at, saved_step, saved_epoch, options = KILLS[kill]
    csv = dataset()
    whole = tmp_path / "whole"
    train_cli(csv, whole, *options)

    killed = tmp_path / "killed"
    out = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(killed), str(kill_at), f"data.csv={csv}", *RUN]
        + options,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["global_step"], state["epoch"]) == (saved_step, saved_epoch)
    assert not (killed / "predictions.csv").exists()

    train_cli(csv, killed, f"ckpt_path={last}", *options)
    diff = max_abs_diff(weights(whole), weights(killed))
    print(f"max abs weight difference, resumed vs uninterrupted: {diff:g}")
    assert diff == 0.0
    assert (killed / "predictions.csv").read_bytes() == (whole / "predictions.csv").read_bytes()
    # The curve goes on across the kill; after a kill mid-epoch only the training loss of the
    # resumed epoch differs: it is the mean over the batches trained after the resume (Lightning
    # restarts that average).
    resumed = pd.read_csv(killed / "learning_curve.csv")
    expected = pd.read_csv(whole / "learning_curve.csv")
    if kill == "mid-epoch":
        train_cols = [c for c in expected.columns if c.startswith("train_loss")]
        resumed.loc[1, train_cols] = expected.loc[1, train_cols]
    pd.testing.assert_frame_equal(resumed, expected)


@pytest.mark.slow
def test_same_seed_same_predictions(dataset, tmp_path):
    csv = dataset()
    first, second = tmp_path / "first", tmp_path / "second"
    train_cli(csv, first)
    train_cli(csv, second)
    assert max_abs_diff(weights(first), weights(second)) == 0.0
    pd.testing.assert_frame_equal(
        pd.read_csv(first / "predictions.csv"),
        pd.read_csv(second / "predictions.csv"),
        check_exact=True,
    )


# -- the pieces, fast ---------------------------------------------------------------------------


def test_loader_resumes_at_the_saved_batch():
    from nervus_lightning.data.sampling import EpochSampler, ResumableLoader

    data = list(range(10))
    loader = ResumableLoader(data, sampler=EpochSampler(data, seed=1), batch_size=3)
    loader.sampler.set_epoch(2)
    whole = [b.tolist() for b in loader]
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 1}

    resumed = ResumableLoader(data, sampler=EpochSampler(data, seed=1), batch_size=3)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [b.tolist() for b in resumed] == whole[1:]
    assert [b.tolist() for b in resumed] == whole  # the skip applies to that epoch once
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # a checkpoint of an epoch that had ended: nothing skipped
    assert len([b for b in resumed]) == len(whole)


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from nervus_lightning.callbacks import RandomStates

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(RandomStates().state_dict(), tmp_path / "states.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    callback = RandomStates()
    callback.load_state_dict(torch.load(tmp_path / "states.pt", weights_only=True))
    callback.on_train_start(None, None)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


class _Clock:
    """A stand-in for time.monotonic that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fitting_trainer(max_epochs: int, saved: list) -> SimpleNamespace:
    from lightning.pytorch.trainer.states import TrainerFn

    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        fast_dev_run=False,
        should_stop=False,
        max_epochs=max_epochs,
        current_epoch=0,
        global_step=0,
        strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
    )
    trainer.save_checkpoint = lambda path: saved.append(trainer.current_epoch)
    return trainer


def test_last_ckpt_is_written_once_a_minute_and_at_the_last_epoch(monkeypatch, tmp_path):
    from nervus_lightning import callbacks

    clock = _Clock()
    monkeypatch.setattr(callbacks.time, "monotonic", clock)
    saved: list[int] = []
    trainer = _fitting_trainer(max_epochs=100, saved=saved)
    last = callbacks.ResumeCheckpoint(tmp_path)
    last.on_train_start(trainer, None)
    for epoch in range(100):  # epochs of 1.5 s
        clock.now += 1.5
        trainer.current_epoch, trainer.global_step = epoch, epoch + 1
        last.on_train_epoch_end(trainer, None)
    last.on_train_end(trainer, None)  # nothing new since the last epoch's end
    assert saved == [39, 79, 99]
    assert last.every_s == callbacks.RESUME_EVERY_S == 60.0

    saved.clear()  # epochs of a minute or more: every epoch; early stopping's last one too
    trainer = _fitting_trainer(max_epochs=100, saved=saved)
    last = callbacks.ResumeCheckpoint(tmp_path)
    last.on_train_start(trainer, None)
    for epoch in range(3):
        clock.now += 61
        trainer.current_epoch, trainer.global_step = epoch, epoch + 1
        last.on_train_epoch_end(trainer, None)
    clock.now += 1
    trainer.current_epoch, trainer.global_step, trainer.should_stop = 3, 4, True
    last.on_train_epoch_end(trainer, None)
    assert saved == [0, 1, 2, 3]

    saved.clear()  # trainer.max_steps inside an epoch: written when training ends
    trainer.global_step = 5
    last.on_train_end(trainer, None)
    assert saved == [3]


def test_learning_curve_is_rewritten_every_few_seconds_and_at_the_end(monkeypatch, tmp_path):
    from nervus_lightning import callbacks

    clock = _Clock()
    monkeypatch.setattr(callbacks.time, "monotonic", clock)
    writes: list[int] = []
    monkeypatch.setattr(callbacks, "write_csv", lambda path, frame: writes.append(len(frame)))
    curve = callbacks.LearningCurve(tmp_path)
    trainer = SimpleNamespace(callback_metrics={}, current_epoch=0)
    for epoch in range(30):  # epochs of 0.4 s
        clock.now += 0.4
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"train_loss": torch.tensor(1.0), "val_loss": torch.tensor(2.0)}
        curve.on_train_epoch_end(trainer, None)
    assert writes == [13, 26]  # at 5.2 s (5 s after the start), at 10.4 s (5 s after 5.2)
    curve.on_train_end(trainer, None)
    assert writes == [13, 26, 30]
    curve.on_exception(trainer, None, RuntimeError())  # nothing new: not rewritten
    assert writes == [13, 26, 30]
