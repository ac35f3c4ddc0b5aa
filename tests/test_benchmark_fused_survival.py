"""Tests of benchmarks/fused_survival.py: its C-index ratio against direct scikit-survival calls,
and a tiny end-to-end run so that the script never goes stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import concordance_index_censored

from nervus_lightning.data.demo import build_demo_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_survival.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("fused_survival", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_ratio_equals_scikit_survival_on_rows_with_ties(benchmark):
    rng = np.random.default_rng(3)
    n = 200
    true = np.round(rng.normal(size=n), 1)  # tied risks
    rows = pd.DataFrame(
        {
            "label_death": (rng.random(n) < 0.7).astype(int),
            "period_death": np.ceil(5 * rng.exponential(np.exp(-true))),  # many tied times
            "true_loghazard_death": true,
        }
    )
    risk = rows["true_loghazard_death"].to_numpy() + rng.normal(0, 0.5, n)
    scores = benchmark.ratio_to_truth(rows, risk)
    event = rows["label_death"].astype(bool)
    c_model = concordance_index_censored(event, rows["period_death"], risk)[0]
    c_true = concordance_index_censored(event, rows["period_death"], rows["true_loghazard_death"])[
        0
    ]
    assert scores["c_model"] == pytest.approx(c_model, abs=1e-12)
    assert scores["c_true"] == pytest.approx(c_true, abs=1e-12)
    assert scores["ratio"] == pytest.approx(c_model / c_true, abs=1e-12)
    assert scores["ratio"] < 1.0  # a noisy copy of the true risk orders the cases worse


@pytest.mark.slow  # builds the demo, trains through the whole recipe: about 1 min of CPU
def test_benchmark_runs_end_to_end(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("NERVUS_LIGHTNING_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fused_survival.csv"
    tiny = ["trainer.max_epochs=1", "data.image_size=8", "model.tabular.hidden=[8]"]
    benchmark.main(
        ["--inputs", "fused", "--seeds", "0", "--evaluate", "val", "test", "external"]
        + ["--csv", str(out), "--override", *tiny]
    )
    results = pd.read_csv(out)
    assert list(results["inputs"]) == ["fused"] * 3
    assert list(results["split"]) == ["val", "test", "external"]
    assert results["c_model"].between(0.0, 1.0).all()
    # The ceiling: Harrell C of the demo's true log-hazard on the same rows, by scikit-survival.
    demo = pd.read_csv(build_demo_dataset())
    for split in ("test", "external"):
        rows = demo[demo["split"] == split]
        expected = concordance_index_censored(
            rows["label_death"].astype(bool), rows["period_death"], rows["true_loghazard_death"]
        )[0]
        got = results[results["split"] == split]
        np.testing.assert_allclose(got["c_true"], expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["ratio"], got["c_model"] / expected, rtol=1e-12)
