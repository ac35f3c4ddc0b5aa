"""The command line as users type it: errors, multirun, predict."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

FAST = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.batch_size=16"]


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_bad_csv_exits_nonzero_with_one_message(dataset, tmp_path):
    csv = dataset(images=False)
    df = pd.read_csv(csv)
    df.loc[0, "split"] = "tarin"
    df.to_csv(csv, index=False)
    out = run(["-m", "nervus_lightning", f"data.csv={csv}", "hydra.run.dir=run", *FAST], tmp_path)
    assert out.returncode == 2
    assert "nervus_lightning: error:" in out.stderr and "Did you mean 'train'" in out.stderr
    assert "Traceback" not in out.stderr
    run_dir = tmp_path / "run"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "predictions.csv").exists()


def test_missing_csv_and_bad_config_value(tmp_path):
    out = run(["-m", "nervus_lightning", "data.csv=nowhere.csv", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2 and "nowhere.csv" in out.stderr
    out = run(["-m", "nervus_lightning", "optimizer=adamx", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2 and "optimizer='adamx' is not one of" in out.stderr


def test_multirun_and_predict_cli(dataset, tmp_path):
    csv = dataset(images=False, extra_splits={"external": 5})
    out = run(
        [
            "-m",
            "nervus_lightning",
            "-m",
            f"data.csv={csv}",
            "model/extractor=none",
            "optimizer.lr=1e-3,1e-2",
            "hydra.sweep.dir=sweep",
            *FAST,
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert len(jobs) == 2
    # Each job trained with its own value (their objectives may tie: a kept linear start is
    # the same model whatever the learning rate).
    lrs = {
        yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] for j in jobs
    }
    assert lrs == {1e-3, 1e-2}
    for job in jobs:
        assert np.isfinite(json.loads((job / "summary.json").read_text())["best_val_loss"])
    ckpt = json.loads((jobs[0] / "summary.json").read_text())["best_checkpoint"]
    out = run(
        [
            "-m",
            "nervus_lightning.predict",
            f"ckpt={ckpt}",
            f"data.csv={csv}",
            "hydra.run.dir=pred",
            "device=cpu",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert list(pred.uniqID) == list(pd.read_csv(csv).uniqID)
    # The command line predicts what the training job predicted with the same checkpoint.
    trained = pd.read_csv(jobs[0] / "predictions.csv")
    np.testing.assert_allclose(pred.prob_label_cls_yes, trained.prob_label_cls_yes, atol=1e-6)
    external = pred[pred.split == "external"]
    assert metrics["external"]["label_cls"]["auroc"] == pytest.approx(
        roc_auc_score(external.label_cls == "yes", external.prob_label_cls_yes)
    )
    out = run(
        [
            "-m",
            "nervus_lightning.predict",
            "ckpt=missing.ckpt",
            f"data.csv={csv}",
            "hydra.run.dir=pred2",
        ],
        tmp_path,
    )
    assert out.returncode == 2 and "missing.ckpt" in out.stderr
