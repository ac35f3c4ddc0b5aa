"""benchmarks/competing.py: its CSVs are valid competing-risk Nervus CSVs, its Wolbers C is the
library's, and its table pairs each run with the cause-specific Cox model of the same split."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nervus_lightning.data.schema import load_table
from nervus_lightning.survival import competing
from nervus_lightning.tasks import task_class

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "competing.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location("benchmark_competing", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, causes", [("cgvhd", 3), ("sim_competing_rare", 2)])
def test_csv_is_a_competing_risk_nervus_csv(bench, tmp_path, name, causes):
    frame = bench.write_csv(name, 1, tmp_path / "data.csv")
    _, schema = load_table(tmp_path / "data.csv", task=task_class("survival"), use_images=False)
    assert schema.labels[0].causes == causes
    # Stratified by cause: every cause has training events.
    train = frame[frame["split"] == "train"]
    assert set(train["label_event"]) == set(range(causes + 1))


def test_wolbers_c_is_the_librarys_and_the_baseline_beats_chance(bench, tmp_path):
    frame = bench.write_csv("sim_competing", 0, tmp_path / "data.csv")
    rng = np.random.default_rng(0)
    risk = frame["input_x0"].to_numpy() + rng.normal(size=len(frame))
    cause, time = frame["label_event"].to_numpy(), frame["period_event"].to_numpy()
    for c in (1, 2):
        expected = competing.cause_concordance(time, cause, risk, c)
        assert bench.wolbers_c(cause, time, risk, c) == pytest.approx(expected, abs=1e-12)
    # The simulated cause-specific effects are found on the test rows.
    scores = bench.cause_specific_cox(frame, 2)
    assert scores["c1"] > 0.65 and scores["c2"] > 0.65


def test_table_pairs_runs_by_seed(bench):
    runs = pd.DataFrame(
        [
            {"dataset": "d", "seed": s, "method": m, "c1": c, "ipa1": 0.1, "cal1_train": 1.0,
             "cal1_test": 1.1}
            for s, (cox, new) in enumerate([(0.60, 0.62), (0.70, 0.69)])
            for m, c in (("cox", cox), ("new", new))
        ]
    )  # fmt: skip
    text = bench.table(runs)
    assert "| d | 1 | nervus (new) | 0.655 ± 0.049 | +0.005 ± 0.021 | 0.100 ± 0.000 |" in text


def test_summarize_renames_methods_and_keeps_one_set_of_cox_rows(bench, tmp_path):
    rows = [
        {"dataset": "d", "seed": 0, "method": m, "c1": 0.6, "ipa1": 0.1, "cal1_train": 1.0,
         "cal1_test": 1.0}
        for m in ("cox", "new")
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "b.csv", index=False)
    runs = bench.combined([f"{tmp_path / 'a.csv'}", f"{tmp_path / 'b.csv'}:new=alpha_0.2"])
    assert runs["method"].tolist() == ["cox", "new", "alpha_0.2"]
