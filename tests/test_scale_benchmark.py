"""Smoke test of benchmarks/scale.py on a few thousand rows, so that it never goes stale."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_csv_follows_the_documented_formula(tmp_path) -> None:
    path = tmp_path / "s.csv"
    _load().write_survival_csv(path, 4000)
    frame = pd.read_csv(path)
    assert len(frame) == 4000 and frame["uniqID"].is_unique
    assert set(frame["split"]) == {"train", "val", "test"}
    assert 0.3 < frame["label_death"].mean() < 0.7
    assert (frame["period_death"] >= 0).all()
    # x_0 raises the hazard: higher x_0, earlier events.
    events = frame[frame["label_death"] == 1]
    assert events["input_x0"].corr(events["period_death"], method="spearman") < -0.2


@pytest.mark.slow
def test_scale_benchmark_runs_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "3000", "--images", "50",
         "--override", "evaluation.n_bootstrap=20"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predictions.csv rows / metrics.csv written | 3,000 / True" in done.stdout
    assert re.search(r"peak RSS during training epoch \| [\d,]+ MiB", done.stdout)
    assert "header check of 50 PNGs" in done.stdout
