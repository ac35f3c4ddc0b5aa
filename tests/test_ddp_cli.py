"""Several processes (``trainer=ddp`` on CPU with gloo) through the real command line: every
case counted once, and the same numbers as one process gives for the same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from nervus_lightning.data.sampling import EpochSampler, inverse_frequency_weights
from nervus_lightning.survival.loss import cox_loss
from nervus_lightning.workflows.predict import predict

DDP = [
    "model/extractor=small_cnn",  # small checkpoints (see FAST in conftest)
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.image_size=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "evaluation.n_bootstrap=20",
]
# 46 cases: 23 train, 11 val, 12 test; odd splits make the sampler pad with a repeated case.
N_CASES = 46


def train_cli(csv: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    args = ["-m", "nervus_lightning", f"data.csv={csv}", f"hydra.run.dir={run_dir}", *DDP]
    out = subprocess.run(
        [sys.executable, *args, *extra],
        cwd=run_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def best_epoch_row(run_dir: Path) -> tuple[str, dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best_checkpoint"]
    epoch = int(Path(best).name.split("-")[0].removeprefix("epoch"))
    curve = pd.read_csv(run_dir / "learning_curve.csv").set_index("epoch")
    assert curve.loc[epoch, "val_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-6)
    return best, curve.loc[epoch].to_dict()


def assert_every_case_once(run_dir: Path, csv: Path) -> pd.DataFrame:
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert predictions["uniqID"].is_unique
    assert list(predictions["uniqID"]) == list(pd.read_csv(csv)["uniqID"])
    return predictions


def assert_same_as_one_process(run_dir: Path, csv: Path, tmp_path: Path) -> None:
    """``predict`` with the best checkpoint in this (single) process writes the same
    predictions and metrics as the multi-process run. (Not bit for bit: Lightning gives each
    CPU process a share of the cores, and float32 sums over other thread counts round
    differently, by about 1e-9.)"""
    best, _ = best_epoch_row(run_dir)
    single = tmp_path / "single"
    predict(best, csv, single, batch_size=8, device="cpu", evaluation={"n_bootstrap": 20})
    pd.testing.assert_frame_equal(
        pd.read_csv(single / "predictions.csv"),
        pd.read_csv(run_dir / "predictions.csv"),
        check_exact=False,
        rtol=1e-6,
        atol=1e-7,
    )
    expected = pd.json_normalize(json.loads((single / "metrics.json").read_text()))
    got = pd.json_normalize(json.loads((run_dir / "metrics.json").read_text()))
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6, atol=1e-7)


def test_ddp_classification_counts_every_case_once(dataset, tmp_path):
    csv = dataset(n=N_CASES)
    run_dir = tmp_path / "run"
    out = train_cli(csv, run_dir)
    text = out.stdout + out.stderr
    assert "sync_batchnorm is off" in text
    # None of Lightning's warnings that do not apply here (nervus_lightning.console): the
    # losses are synced, the test cases each count once, all_gather's deprecation is Lightning's.
    for noise in ("sync_dist=True", "devices=1", "all_gather is deprecated", "_pytree"):
        assert noise not in text, noise
    predictions = assert_every_case_once(run_dir, csv)
    assert_same_as_one_process(run_dir, csv, tmp_path)
    # The validation numbers logged during training are those of the 11 val cases, each once,
    # as scikit-learn computes them from one process's predictions of the best checkpoint.
    _, row = best_epoch_row(run_dir)
    val = predictions[predictions["split"] == "val"]
    assert len(val) == 11
    total = 0.0
    for label, classes in (("label_cls", ["no", "yes"]), ("label_three", ["x", "y", "z"])):
        probs = val[[f"prob_{label}_{c}" for c in classes]].to_numpy()
        loss = log_loss(val[label], probs, labels=classes)
        assert row[f"val_loss_{label}"] == pytest.approx(loss, rel=1e-5)
        total += loss
        if len(classes) == 2:
            auc = roc_auc_score(val[label] == classes[1], probs[:, 1])
        else:
            auc = roc_auc_score(val[label], probs, multi_class="ovr", labels=classes)
        assert row[f"val_auroc_{label}"] == pytest.approx(auc, rel=1e-5)
        accuracy = np.mean(np.asarray(classes)[probs.argmax(1)] == val[label])
        assert row[f"val_accuracy_{label}"] == pytest.approx(accuracy, rel=1e-6)
    assert row["val_loss"] == pytest.approx(total, rel=1e-5)


def test_ddp_survival_counts_every_case_once(dataset, tmp_path):
    csv = dataset(n=N_CASES, task="survival")
    run_dir = tmp_path / "run"
    train_cli(csv, run_dir, "task=survival", "data.batch_size=12")
    predictions = assert_every_case_once(run_dir, csv)
    assert_same_as_one_process(run_dir, csv, tmp_path)
    # The val loss is the Cox loss of the whole val split (not of each process's share).
    _, row = best_epoch_row(run_dir)
    val = predictions[predictions["split"] == "val"]
    expected = cox_loss(
        torch.tensor(val["risk_label_death"].to_numpy()),
        torch.tensor(val["period_death"].to_numpy()),
        torch.tensor(val["label_death"].to_numpy() > 0),
    )
    assert row["val_loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_ddp_competing_risks_fused_same_as_one_process(dataset, tmp_path):
    """DeepHit with two causes on images and table in two processes: every case once, and the
    curves and metrics of one process for the same checkpoint."""
    csv = dataset(n=N_CASES, task="survival")
    frame = pd.read_csv(csv)
    second = (frame["label_death"] == 1) & (np.arange(len(frame)) % 2 == 1)
    frame.loc[second, "label_death"] = 2  # every other event is of a second cause
    assert set(frame.loc[frame["split"] == "train", "label_death"]) == {0, 1, 2}
    frame.to_csv(csv, index=False)
    run_dir = tmp_path / "run"
    train_cli(csv, run_dir, "task=survival", "task.model=deephit", "task.num_durations=5")
    predictions = assert_every_case_once(run_dir, csv)
    assert any(c.startswith("cif_label_death_2_t") for c in predictions.columns)
    assert_same_as_one_process(run_dir, csv, tmp_path)


@pytest.mark.slow
def test_ddp_weighted_sampler_runs(dataset, tmp_path):
    csv = dataset(n=N_CASES, images=False)
    run_dir = tmp_path / "run"
    train_cli(csv, run_dir, "sampler=weighted", "model/extractor=none")
    assert_every_case_once(run_dir, csv)


# -- the training order: one global draw dealt out to the processes -------------------------


def _shares(n_cases: int, world: int, epoch: int, weights=None) -> list[list[int]]:
    data = list(range(n_cases))
    out = []
    for rank in range(world):
        sampler = EpochSampler(data, world, rank, seed=7, weights=weights)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_processes_share_one_global_order(weighted):
    weights = np.linspace(1, 3, 23) if weighted else None
    (single,) = _shares(23, 1, epoch=3, weights=weights)
    shares = _shares(23, 2, epoch=3, weights=weights)
    assert [len(s) for s in shares] == [12, 12]  # 23 cases padded to 24
    dealt = [i for pair in zip(*shares, strict=True) for i in pair]
    assert dealt[:23] == single and dealt[23] == single[0]
    if not weighted:
        assert sorted(single) == list(range(23))
    assert _shares(23, 2, epoch=4, weights=weights) != shares  # a new order each epoch
    assert _shares(23, 2, epoch=3, weights=weights) == shares  # and only the epoch decides


def test_weighted_draw_keeps_class_frequencies_across_processes():
    codes = np.array([0] * 160 + [1] * 40)  # 20 % minority class
    weights = inverse_frequency_weights(codes)
    drawn = np.concatenate(
        [codes[s] for epoch in range(30) for s in _shares(200, 4, epoch, weights)]
    )
    assert drawn.mean() == pytest.approx(0.5, abs=0.02)
