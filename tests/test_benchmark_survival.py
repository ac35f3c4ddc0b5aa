"""Smoke test of benchmarks/survival.py (scores against direct library calls, the simulated
crossing-hazards data), and the tuned DeepSurv settings of the survival presets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config
from omegaconf import OmegaConf
from pycox.evaluation import EvalSurv
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from nervus_lightning.survival.metrics import ibs_time_grid
from nervus_lightning.survival.presets import PRESETS, preset_frame
from nervus_lightning.survival.reference import SurvivalReference

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "survival.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_survival", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_scores_cox_like_scikit_survival(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("NERVUS_LIGHTNING_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "survival.csv"
    benchmark.main(
        ["--datasets", "whas500", "--seeds", "1", "--quick", "--methods", "deepsurv", "coxph"]
        + ["--csv", str(out)]
    )
    results = pd.read_csv(out)
    assert sorted(results["method"]) == ["coxph", "deepsurv"]
    assert set(results["dataset"]) == {"whas500"} and set(results["split"]) == {"test"}
    assert results["c_index"].between(0.0, 1.0).all()

    # The Cox baseline: split seed 1's training rows, scored on its test rows, done by hand.
    frame = preset_frame("whas500", seed=1)
    inputs = [c for c in frame.columns if c.startswith("input_")]
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    scaler = StandardScaler().fit(train[inputs].to_numpy(float))
    y_train = np.array(
        list(zip(train["label_death"].astype(bool), train["period_death"], strict=True)),
        dtype=[("event", bool), ("time", float)],
    )
    cox = CoxPHSurvivalAnalysis(alpha=1e-4, ties="efron").fit(
        scaler.transform(train[inputs]), y_train
    )
    expected = concordance_index_censored(
        test["label_death"].astype(bool),
        test["period_death"],
        cox.predict(scaler.transform(test[inputs])),
    )[0]
    got = results.loc[results["method"] == "coxph"].iloc[0]
    assert got["c_index"] == pytest.approx(expected, abs=1e-6)  # the CSV keeps 6 decimals

    # Its IBS and Antolini C: scikit-survival's own Cox curves, scored by direct library calls.
    y_test = Surv.from_arrays(test["label_death"].astype(bool), test["period_death"])
    curves = cox.predict_survival_function(scaler.transform(test[inputs]))
    reference = SurvivalReference.fit(
        train["period_death"].to_numpy(), train["label_death"].to_numpy(), np.zeros(len(train))
    )
    grid = ibs_time_grid(reference, test["period_death"].to_numpy())
    assert test["period_death"].max() < train["period_death"].max()  # no capping needed here
    at_grid = np.stack([f(grid) for f in curves])
    ibs = integrated_brier_score(y_test, y_test, at_grid, grid)  # the test rows' own censoring
    assert got["ibs"] == pytest.approx(ibs, abs=1e-6)
    times = np.unique(train["period_death"])
    at_times = np.stack([f(np.minimum(times, f.domain[1])) for f in curves])
    evaluator = EvalSurv(
        pd.DataFrame(at_times.T, index=times),
        test["period_death"].to_numpy(),
        test["label_death"].to_numpy(float),
        censor_surv="km",
    )
    assert got["c_index_antolini"] == pytest.approx(evaluator.concordance_td("antolini"), abs=1e-6)


def test_defaults_recipe_trains_with_the_users_command(benchmark, tmp_path, monkeypatch):
    """--recipe defaults: DeepSurv gets only `data.csv=... task=survival model/extractor=none`
    (the survival recipe of a user's CSV), on the preset's CSV of the same split seed."""
    import nervus_lightning.workflows.train as recipe

    monkeypatch.setenv("NERVUS_LIGHTNING_CACHE", str(tmp_path / "cache"))
    seen = []
    real_train = recipe.train

    def spy(settings, run_dir, *args, **kwargs):
        seen.append(settings)
        return real_train(settings, run_dir, *args, **kwargs)

    monkeypatch.setattr(recipe, "train", spy)
    results = benchmark.run_benchmark(
        ["whas500"], [0], ["deepsurv"], evaluate="val", quick=True, recipe="defaults"
    )
    (settings,) = seen
    assert settings.data.csv.endswith("whas500_split0.csv") and settings.data.preset is None
    assert settings.data.batch_size == 8192 and settings.tabular["linear"] == "auto"
    assert (
        list(settings.tabular["hidden"]) == [32] and settings.trainer["max_epochs"] == 2
    )  # --quick
    assert list(results["recipe"]) == ["defaults"] and results["c_index"].between(0, 1).all()
    assert benchmark.DEFAULTS_CSV.name == "survival_defaults.csv"


def test_crossing_data_breaks_proportional_hazards(benchmark):
    frame = benchmark.crossing_frame(split_seed=0)
    assert len(frame) == benchmark.CROSSING_N
    assert set(frame["split"]) == {"train", "val", "test"}
    assert frame.equals(benchmark.crossing_frame(split_seed=0))
    # The rows are drawn once; only the split moves with the seed.
    other = benchmark.crossing_frame(split_seed=1)
    assert other.drop(columns="split").equals(frame.drop(columns="split"))
    assert not other["split"].equals(frame["split"])
    # The two groups' Kaplan-Meier curves cross: group 0 is worse early, group 1 late.
    event, time = frame["label_death"].astype(bool), frame["period_death"]
    group = frame["input_group"] == 1
    km = {g: kaplan_meier_estimator(event[group == g], time[group == g]) for g in (False, True)}

    def at(g, t):
        x, y = km[g]
        return y[np.searchsorted(x, t, side="right") - 1]

    assert at(False, 0.2) < at(True, 0.2) and at(False, 1.5) > at(True, 1.5)


def test_preset_recipe_is_the_presets_config(benchmark):
    preset = compose_config(["data=whas500"])
    recipe = compose_config(["data.csv=x.csv", *benchmark.PRESET_RECIPE])
    for key in ("model.tabular", "optimizer", "trainer.max_epochs", "data.batch_size", "task"):
        assert OmegaConf.select(recipe, key) == OmegaConf.select(preset, key), key


def test_summary_is_mean_and_sample_sd_over_seeds(benchmark):
    results = pd.DataFrame(
        {
            "dataset": ["a"] * 3 + ["b"],
            "method": ["coxph"] * 4,
            "seed": [0, 1, 2, 0],
            "c_index": [0.6, 0.7, 0.8, 0.5],
        }
    )
    summary = benchmark.summarize(results).set_index("dataset")
    assert summary.loc["a", "c_index_mean"] == pytest.approx(0.7)
    assert summary.loc["a", "c_index_sd"] == pytest.approx(np.std([0.6, 0.7, 0.8], ddof=1))
    assert np.isnan(summary.loc["b", "c_index_sd"])
    assert "0.700 ± 0.100" in benchmark.format_table(summary.reset_index(), "test")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_settings_merge_and_command_line_wins(preset):
    cfg = compose_config([f"data={preset}"])
    assert cfg.task.name == "survival" and cfg.model.extractor.name == "none"
    assert cfg.checkpoint.policy == "best"
    # The validation-chosen DeepSurv settings replace the group defaults (mlp.yaml, adam.yaml,
    # cpu.yaml) rather than being merged under them.
    assert list(cfg.model.tabular.hidden) == [32] and cfg.model.tabular.dropout == 0.3
    assert cfg.model.tabular.norm == "none" and cfg.data.batch_size == 4096
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.weight_decay == 1.0e-3
    assert cfg.optimizer.lr == 1.0e-2 and cfg.trainer.max_epochs == 150
    overridden = compose_config(
        [f"data={preset}", "optimizer=adam", "model.tabular.dropout=0.05", "trainer.max_epochs=3"]
    )
    assert overridden.optimizer.name == "adam"
    assert overridden.model.tabular.dropout == 0.05 and overridden.trainer.max_epochs == 3
