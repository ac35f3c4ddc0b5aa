"""``python -m nervus_lightning.evaluate`` and ``evaluate_run`` on a real (tiny) training run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, compose_config
from omegaconf import OmegaConf
from sklearn.metrics import recall_score, roc_auc_score

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.evaluation.report import METRIC_COLUMNS
from nervus_lightning.workflows.evaluate import evaluate_run
from nervus_lightning.workflows.train import train


def write_tiny_csv(path, n=48, seed=0):
    """Tabular only; a high ``input_a`` goes with ``yes``."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 2, n)
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    frame = pd.DataFrame(
        {
            "uniqID": [f"case{i:03d}" for i in range(n)],
            "input_a": signal + rng.normal(0, 0.5, n),
            "input_b": rng.normal(50, 10, n),
            "label_cls": np.where(signal == 1, "yes", "no"),
            "split": split,
        }
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    csv = write_tiny_csv(root / "tiny.csv")
    cfg = compose_config([f"data.csv={csv}", *FAST, "model/extractor=none"])
    run = root / "run"
    train(train_settings(cfg), run)
    # What the Hydra command line leaves in a run folder, for the report's configuration table.
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return run


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "nervus_lightning.evaluate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_report_next_to_predictions(run_dir, tmp_path):
    result = _cli(
        f"predictions={run_dir / 'predictions.csv'}",
        "evaluation.n_bootstrap=50",
        "evaluation.train_figures=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = run_dir / "evaluation"
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert set(metrics["split"]) == {"train", "val", "test"}
    page = (out / "report.html").read_text()
    assert "Learning curves" in page and "optimizer.lr" in page and "n_bootstrap" in page
    # Results first, configuration folded at the end; train drawn on request.
    assert page.index("headline metrics") < page.index("<details>") < page.index("optimizer.lr")
    assert "(train, val, test)" in page
    # Nothing of Hydra's in the working directory.
    assert list(tmp_path.iterdir()) == []

    predictions = pd.read_csv(run_dir / "predictions.csv")
    for split, rows in predictions.groupby("split"):
        expected = roc_auc_score(rows["label_cls"] == "yes", rows["prob_label_cls_yes"])
        overall = metrics[metrics["group"] == "all"]
        row = overall[(overall["split"] == split) & (overall["metric"] == "auroc")]
        assert row["value"].item() == pytest.approx(expected)
        assert np.isfinite(row[["ci_lower", "ci_upper"]].to_numpy()).all()


def test_evaluate_run_options_reach_the_report(run_dir, tmp_path):
    out = tmp_path / "sens"
    metrics = evaluate_run(
        run_dir / "predictions.csv",
        out,
        n_bootstrap=0,
        threshold="sensitivity",
        target_sensitivity=1.0,
        proportion_ci="exact",
    )
    page = (out / "report.html").read_text()
    assert "(val, test)" in page and "train_figures=true draws it" in page  # train not drawn
    # n_bootstrap=0: no bootstrap intervals, only the closed-form ones (proportions: as asked).
    with_ci = metrics[metrics["ci_lower"].notna()]
    assert set(with_ci["ci_method"]) == {"exact", "newcombe"}
    assert "Clopper-Pearson exact for" in page and "No bootstrap intervals" in page
    predictions = pd.read_csv(run_dir / "predictions.csv")
    thresholds = metrics.query("metric == 'threshold' and group == 'all'").set_index("split")
    threshold = thresholds.loc["val", "value"]
    # Chosen on val, applied unchanged to the other splits.
    assert (thresholds["value"] == threshold).all()
    for split, rows in predictions.groupby("split"):
        y_true = rows["label_cls"] == "yes"
        y_pred = rows["prob_label_cls_yes"] >= threshold
        sensitivity = metrics.query(
            "split == @split and group == 'all' and metric == 'sensitivity'"
        )["value"].item()
        assert sensitivity == pytest.approx(recall_score(y_true, y_pred))
        if split == "val":
            assert sensitivity == 1.0


def test_missing_predictions_file_exits_2(tmp_path):
    result = _cli(f"predictions={tmp_path / 'nope.csv'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "predictions file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_schema_is_a_user_error(run_dir, tmp_path):
    copy = tmp_path / "predictions.csv"
    copy.write_text((run_dir / "predictions.csv").read_text())
    with pytest.raises(NervusInputError, match="schema.json not found"):
        evaluate_run(copy)


def test_predictions_without_schema_columns_is_a_user_error(run_dir, tmp_path):
    predictions = pd.read_csv(run_dir / "predictions.csv").drop(columns="prob_label_cls_yes")
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    (tmp_path / "schema.json").write_text((run_dir / "schema.json").read_text())
    with pytest.raises(NervusInputError, match="prob_label_cls_yes"):
        evaluate_run(tmp_path / "predictions.csv", n_bootstrap=0)


def test_predictions_without_true_labels_is_a_user_error(run_dir, tmp_path):
    predictions = pd.read_csv(run_dir / "predictions.csv").drop(columns="label_cls")
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    (tmp_path / "schema.json").write_text((run_dir / "schema.json").read_text())
    with pytest.raises(NervusInputError, match="nothing to evaluate"):
        evaluate_run(tmp_path / "predictions.csv", n_bootstrap=0)


def test_invalid_threshold_option_is_a_user_error(run_dir, tmp_path):
    with pytest.raises(NervusInputError, match="evaluation.threshold"):
        evaluate_run(run_dir / "predictions.csv", tmp_path, threshold="f1")
    assert json.loads((run_dir / "schema.json").read_text())["labels"]
