"""``sweep_summary.csv``: one row per job of a multirun, best ``val_loss`` first."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_objective_is_the_kept_models
from omegaconf import OmegaConf

from nervus_lightning.sweep import SweepSummary, summarize_sweep


def write_tiny_csv(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 2, n)
    split = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    pd.DataFrame(
        {
            "uniqID": [f"case{i:03d}" for i in range(n)],
            "input_a": signal + rng.normal(0, 0.5, n),
            "input_b": rng.normal(50, 10, n),
            "label_cls": np.where(signal == 1, "yes", "no"),
            "split": split,
        }
    ).to_csv(path, index=False)
    return path


def _job(sweep, name, overrides, summary=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))


def _summary(loss, auroc):
    return {
        "best_checkpoint": f"ckpt_{loss}.ckpt",
        "best_val_loss": loss,
        "metrics": {
            "train": {"label_x": {"auroc": 0.99}},
            "val": {"label_x": {"n": 10.0, "auroc": auroc, "reasons": {"ece": "why"}}},
            "test": {"label_x": {"n": 12.0, "auroc": auroc - 0.1, "ece": None}},
        },
    }


def test_fake_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["optimizer.lr=0.1", "model/extractor=none"], _summary(0.7, 0.6))
    _job(sweep, "1", ["optimizer.lr=0.01", "model/extractor=none"], _summary(0.3, 0.9))
    _job(sweep, "2", ["optimizer.lr=1.0", "model/extractor=none"])  # crashed
    _job(sweep, "10", ["optimizer.lr=0.001", "model/extractor=none"], _summary(0.5, 0.8))
    (sweep / "multirun.yaml").write_text("{}")

    table = summarize_sweep(sweep)
    assert table["job"].tolist() == ["1", "10", "0", "2"]
    assert table["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert table["best_val_loss"].tolist()[:3] == [0.3, 0.5, 0.7]
    assert pd.isna(table["best_val_loss"].iloc[3])
    assert table["optimizer.lr"].tolist() == ["0.01", "0.001", "0.1", "1.0"]
    assert table["val/label_x/auroc"].tolist()[:3] == [0.9, 0.8, 0.6]
    assert table["test/label_x/auroc"].tolist()[:3] == pytest.approx([0.8, 0.7, 0.5])
    assert table["best_checkpoint"].iloc[0] == "ckpt_0.3.ckpt"
    assert "no summary.json" in table["error"].iloc[3]
    assert not any(c.startswith("train/") or "reasons" in c for c in table.columns)
    assert list(table.columns[:4]) == ["job", "status", "optimizer.lr", "model/extractor"]

    # The callback writes the same table into the sweep folder.
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    written = pd.read_csv(sweep / "sweep_summary.csv", dtype={"job": str, "optimizer.lr": str})
    assert written["job"].tolist() == table["job"].tolist()
    assert written["best_val_loss"].tolist()[:3] == [0.3, 0.5, 0.7]


def test_empty_sweep_dir(tmp_path):
    assert summarize_sweep(tmp_path).empty
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert not (tmp_path / "sweep_summary.csv").exists()


def test_real_multirun(tmp_path):
    csv = write_tiny_csv(tmp_path / "tiny.csv")
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            "-m",
            f"data.csv={csv}",
            "model/extractor=none",
            "optimizer.lr=1e-3,1e-2",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "data.batch_size=16",
            "evaluation.n_bootstrap=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(sweep / "sweep_summary.csv", dtype={"job": str})
    assert len(table) == 2
    assert (table["status"] == "ok").all()
    assert sorted(table["optimizer.lr"]) == [0.001, 0.01]
    assert table["best_val_loss"].is_monotonic_increasing
    for _, row in table.iterrows():
        job = sweep / row["job"]
        summary = json.loads((job / "summary.json").read_text())
        # The row describes its own job: the lr it lists is the one that job trained with.
        job_config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert job_config.optimizer.lr == pytest.approx(row["optimizer.lr"])
        assert row["best_val_loss"] == pytest.approx(summary["best_val_loss"])
        # The objective is the lowest validation loss of the job's learning curve, or the
        # linear start's when the start was kept.
        assert_objective_is_the_kept_models(summary, pd.read_csv(job / "learning_curve.csv"))
        for split in ("val", "test"):
            assert row[f"{split}/label_cls/auroc"] == pytest.approx(
                summary["metrics"][split]["label_cls"]["auroc"]
            )
