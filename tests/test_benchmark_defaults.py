"""benchmarks/defaults.py: its CSVs are valid Nervus CSVs, its scores are the libraries', its
table applies issue 19's targets, and one quick run end to end gives a table row."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from nervus_lightning.data.schema import load_table
from nervus_lightning.tasks import task_class

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "defaults.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_defaults", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, task, label",
    [
        ("gbsg2", "survival", "label_event"),
        ("wine", "classification", "label_class"),
        ("diabetes", "regression", "label_y"),
    ],
)
def test_csv_is_a_nervus_csv_the_project_reads(bench, tmp_path, name, task, label):
    csv = tmp_path / f"{name}.csv"
    frame = bench.write_nervus_csv(name, 3, csv)
    table, schema = load_table(csv, task=task_class(task), use_images=False)
    assert len(table) == len(frame) and frame["uniqID"].is_unique
    assert [s.name for s in schema.labels] == [label]
    inputs = [c for c in frame.columns if c.startswith("input_")]
    assert list(schema.input_columns) == inputs
    assert frame[inputs].notna().all().all()
    fractions = frame["split"].value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.6, abs=0.02)
    assert fractions["val"] == pytest.approx(0.2, abs=0.02)
    if task == "survival":
        assert set(frame["label_event"]) == {0, 1} and "period_event" in frame
        # gbsg2's tgrade (I, II, III) one-hot with the first level dropped
        assert {"input_tgrade_II", "input_tgrade_III"} <= set(inputs)
        assert "input_tgrade_I" not in inputs
    # another seed, another split; the same seed, the same split
    assert not bench.nervus_frame(name, bench.DATASETS[name].load(), 4)["split"].equals(
        frame["split"]
    )
    assert bench.nervus_frame(name, bench.DATASETS[name].load(), 3).equals(frame)


def test_missing_numbers_take_the_training_median(bench):
    features = pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, 9.0, 100.0, np.nan],
            "b": pd.Categorical(["x", "y", None, "x", "x", "y"]),
        }
    )
    is_train = np.array([True, True, True, True, False, False])
    encoded = bench.encode_inputs(features, is_train)
    # the median of the training values 1, 3, 9 (not their mean, nor the test row's 100)
    assert list(encoded["input_a"]) == [1.0, 3.0, 3.0, 9.0, 100.0, 3.0]
    assert list(encoded["input_a_missing"]) == [0, 1, 0, 0, 0, 1]
    assert list(encoded["input_b_y"]) == [0, 1, 0, 0, 0, 1]
    assert list(encoded["input_b_missing"]) == [0, 0, 1, 0, 0, 0]
    assert "input_b_x" not in encoded


def test_survival_baseline_scores_are_the_libraries(bench):
    frame = bench.nervus_frame("whas500", bench.DATASETS["whas500"].load(), 1)
    data = bench.split_arrays(frame, "survival")
    train, val, test = data["train"], data["val"], data["test"]
    assert np.allclose(train.x.mean(axis=0), 0) and np.allclose(train.x.std(axis=0)[:3], 1)
    scores = bench.fit_coxnet(data)
    # by hand: the path, the alpha with the best validation C, the test C
    model = CoxnetSurvivalAnalysis(l1_ratio=0.5, fit_baseline_model=True)
    model.fit(train.x, Surv.from_arrays(train.y.astype(bool), train.time))

    def c(rows, alpha):
        risk = model.predict(rows.x, alpha=alpha)
        return concordance_index_censored(rows.y.astype(bool), rows.time, risk)[0]

    alpha = max(model.alphas_, key=lambda a: (c(val, a), a))
    assert scores["penalty"] == pytest.approx(alpha)
    assert scores["c_index"] == pytest.approx(c(test, alpha), abs=1e-12)
    # the Kaplan-Meier curve as the "model": IPA exactly 0, IBS the library's
    grid = bench.ibs_grid(train, test)
    assert len(grid) > 10 and grid.min() >= test.time.min() and grid.max() < test.time.max()
    km_time, km_surv = kaplan_meier_estimator(train.y.astype(bool), train.time)
    steps = km_surv[np.searchsorted(km_time, grid, side="right") - 1]
    km = np.tile(steps, (len(test.y), 1))
    null = bench.ipa_scores(train, test, km, grid)
    assert null["ipa"] == pytest.approx(0.0, abs=1e-12)
    expected = integrated_brier_score(
        Surv.from_arrays(train.y.astype(bool), train.time),
        Surv.from_arrays(test.y.astype(bool), test.time),
        km,
        grid,
    )
    assert null["ibs"] == pytest.approx(expected, rel=1e-9)
    assert 0.0 < scores["ipa"] < 0.5  # a real model beats Kaplan-Meier on whas500


def test_ibs_grid_stays_inside_the_test_follow_up(bench):
    train = bench.Rows(np.empty(0), np.ones(100, int), np.arange(1.0, 101.0))
    test = bench.Rows(np.empty(0), np.ones(10, int), np.linspace(20.0, 50.0, 10))
    grid = bench.ibs_grid(train, test)
    assert grid.min() >= 20.0 and grid.max() < 50.0
    full = np.linspace(10.9, 90.1, 50)  # the training times' 10th and 90th percentiles
    np.testing.assert_allclose(grid, full[(full >= 20.0) & (full < 50.0)], rtol=1e-12)


def test_auroc_is_scikit_learns(bench):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    assert bench.auroc(y, p, [0, 1, 2]) == roc_auc_score(y, p, multi_class="ovr")
    binary = rng.dirichlet(np.ones(2), 60)
    assert bench.auroc(y % 2, binary, [0, 1]) == roc_auc_score(y % 2, binary[:, 1])


def _runs(nervus, linear, nervus_ipa=(0.1, 0.1, 0.1), name="whas500"):
    rows = []
    for seed, (n, lin, ipa) in enumerate(zip(nervus, linear, nervus_ipa, strict=True)):
        rows.append({"dataset": name, "seed": seed, "method": "nervus", "c_index": n})
        rows[-1].update(ipa=ipa, seconds=10.0)
        rows.append({"dataset": name, "seed": seed, "method": "coxnet", "c_index": lin})
        rows.append({"dataset": name, "seed": seed, "method": "coxph", "c_index": lin - 0.01})
        rows.append({"dataset": name, "seed": seed, "method": "rsf", "c_index": 0.5})
    return pd.DataFrame(rows)


def test_table_row_applies_the_targets(bench):
    described = bench.Described("survival", 500, 14, 215)
    row = bench.summarise("whas500", described, _runs([0.70, 0.72, 0.74], [0.71, 0.72, 0.73]))
    difference = np.array([-0.01, 0.0, 0.01])
    assert row["nervus − better linear"] == (
        f"{difference.mean():.3f} ± {difference.std(ddof=1):.3f} (coxnet)"
    )
    assert row["target"].startswith("yes") and row["nervus c_index"] == "0.720 ± 0.020"
    below = bench.summarise("whas500", described, _runs([0.70, 0.71, 0.72], [0.71, 0.72, 0.73]))
    assert below["target"].startswith("NO")
    worse_than_km = _runs([0.72] * 3, [0.71] * 3, nervus_ipa=(0.1, -0.2, 0.1))
    assert bench.summarise("whas500", described, worse_than_km)["target"].startswith("NO")
    # ... and so does an IPA below 0 against the full Kaplan-Meier curve alone
    full_km = _runs([0.72] * 3, [0.71] * 3)
    full_km.loc[full_km["method"] == "nervus", "ipa_km"] = [0.1, 0.05, -0.01]
    judged = bench.summarise("whas500", described, full_km)
    assert judged["target"].startswith("NO") and "IPA < 0 on 1 seed" in judged["target"]
    assert judged["nervus IPA, full KM"] == "0.047 ± 0.055"
    # simulated nonlinear: ahead, but by less than the spread over seeds, does not count
    noisy = _runs([0.72, 0.80, 0.70], [0.70, 0.70, 0.70], name="sim_nonlinear")
    assert bench.summarise("sim_nonlinear", described, noisy)["target"].startswith("NO")
    steady = _runs([0.75, 0.76, 0.77], [0.70, 0.70, 0.70], name="sim_nonlinear")
    assert bench.summarise("sim_nonlinear", described, steady)["target"].startswith("yes")
    table = bench.markdown_table([row, below])
    assert table.count("\n") == 3 and "| whas500 | 500 | 14 | 215 |" in table


@pytest.mark.slow
def test_quick_run_writes_the_table(bench, tmp_path):
    out = tmp_path / "defaults.md"
    assert bench.main(["--quick", "--datasets", "veterans_lung_cancer", "--out", str(out)]) == 0
    runs = pd.read_csv(tmp_path / "defaults_runs.csv")
    assert sorted(runs["method"]) == ["coxnet", "coxph", "nervus", "rsf"]
    nervus = runs[runs["method"] == "nervus"].iloc[0]
    assert 0.0 <= nervus["c_index"] <= 1.0 and nervus["library_check"] <= 1e-6
    assert nervus["ipa"] == pytest.approx(1 - nervus["ibs"] / nervus["ibs_null"])
    # The same run scored as the baselines are (their grid, the full Kaplan-Meier curve).
    assert np.isfinite(nervus["ipa_km"]) and -1.0 < nervus["ipa_km"] < 1.0
    assert nervus["epochs_run"] == 2 and nervus["seconds"] > 0
    text = out.read_text()
    assert "| veterans_lung_cancer | 137 | 8 | 128 |" in text


def test_linear_start_choice_prints_one_row_per_data_set(monkeypatch, capsys):
    """benchmarks/linear_start_choice.py on one seed of veterans_lung_cancer: every rule's test
    C-index and its paired difference to Coxnet, in one markdown row."""
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location(
        "linear_start_choice", BENCHMARK.parent / "linear_start_choice.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--seeds", "1", "--datasets", "veterans_lung_cancer"]) == 0
    # scale_up narrows the library's scale search for its own starts only
    assert module.penalty_module.SCALE_RANGE == (1e-2, 1e3)
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| veterans_lung_cancer")]
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert len(cells) == len(module.RULES) + len(module.BASELINES)
    for cell in cells:
        assert 0.5 < float(cell.split()[0]) < 1.0


def test_overrides_follow_the_users_command(bench, tmp_path):
    """``--quick`` and ``--override`` add Hydra overrides after the user's command, which alone
    sets no epoch count."""
    csv, run = tmp_path / "a.csv", tmp_path / "run"
    command = bench.nervus_command(csv, "survival", run)
    assert command[3:6] == [f"data.csv={csv}", "task=survival", "model/extractor=none"]
    assert not any(arg.startswith("trainer.max_epochs") for arg in command)
    extra = ["trainer.max_epochs=600", "early_stopping.patience=5"]
    assert bench.nervus_command(csv, "survival", run, extra)[-2:] == extra


def test_start_held_out_prints_each_design_and_the_librarys(monkeypatch, capsys):
    """benchmarks/start_held_out.py on one seed of diabetes and of wine: the start's test metric
    under each held-out design, in one markdown row per data set."""
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location(
        "start_held_out", BENCHMARK.parent / "start_held_out.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--seeds", "1", "--datasets", "diabetes", "wine"]) == 0
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][2:]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("| diabetes", "| wine"))
    }
    assert rows["diabetes"][-1] == "cv+val"
    assert rows["wine"][-1] == "val; cv+val on 0 of 1 seeds"  # 10 or more of each class in val
    for cell in rows["diabetes"][:-1]:
        assert 0.2 < float(cell.split()[0]) < 0.7  # R² of a linear fit of diabetes
    for cell in rows["wine"][:-1]:
        auroc, loss = float(cell.split()[0]), float(cell.split()[2])
        assert auroc > 0.95 and 0 < loss < 0.5


def test_unseen_sets_run_only_when_asked_and_installed(bench, monkeypatch, capsys):
    """The sets shipped in lifelines and statsmodels (no default was chosen on them) are left
    out of the plain command, added by ``--unseen``, and a missing package is named with the
    command that installs it."""
    plain = bench.choose_datasets(None, large=False, unseen=False)
    assert "whas500" in plain and "flchain" not in plain
    assert not {"rossi", "fair", "star98"} & set(plain)
    every = bench.choose_datasets(None, large=False, unseen=True)
    assert {"rossi", "lung", "fair", "anes96", "star98"} <= set(every)
    assert bench.choose_datasets(["rossi"], large=False, unseen=False) == ["rossi"]
    monkeypatch.setattr(bench, "installed", lambda: set())
    with pytest.raises(SystemExit) as stop:
        bench.main(["--datasets", "rossi", "star98", "whas500"])
    assert stop.value.code == 2
    assert "pip install lifelines statsmodels" in capsys.readouterr().err
