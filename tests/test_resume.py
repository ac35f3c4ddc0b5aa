"""Faults: a run killed with SIGKILL mid-epoch and resumed from ``last.ckpt`` ends exactly as an
uninterrupted run; two runs with the same seed are identical (deterministic mode, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

SRC = str(Path(__file__).parents[1] / "src")
# 24 training cases in batches of 4: 6 steps per epoch, last.ckpt every 4 steps.
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
    "checkpoint.every_n_train_steps=4",
    "evaluation.n_bootstrap=20",
]
KILL_AT_STEP = 9  # epoch 1, third batch; the newest last.ckpt is from step 8, mid-epoch

# Trains like the command line, plus a callback that SIGKILLs the process (no clean-up at all)
# after the optimiser step KILL_AT_STEP.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from hydra import compose, initialize_config_dir
    from nervus_lightning.config import config_dir
    from nervus_lightning.cli.overrides import with_csv_data_group
    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.workflows.train import train

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


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(dataset, tmp_path):
    csv = dataset()
    whole = tmp_path / "whole"
    train_cli(csv, whole)

    killed = tmp_path / "killed"
    out = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(killed), str(KILL_AT_STEP), f"data.csv={csv}", *RUN],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 8 and state["epoch"] == 1  # mid-epoch: 2 of 6 steps done
    assert not (killed / "predictions.csv").exists()

    train_cli(csv, killed, f"ckpt_path={last}")
    diff = max_abs_diff(weights(whole), weights(killed))
    print(f"max abs weight difference, resumed vs uninterrupted: {diff:g}")
    assert diff == 0.0
    assert (killed / "predictions.csv").read_bytes() == (whole / "predictions.csv").read_bytes()
    # The curve goes on across the kill; only the training loss of the resumed epoch differs: it
    # is the mean over the batches trained after the resume (Lightning restarts that average).
    resumed = pd.read_csv(killed / "learning_curve.csv")
    expected = pd.read_csv(whole / "learning_curve.csv")
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
