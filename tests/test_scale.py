"""Evaluation of large splits: m-out-of-n bootstrap, IPCW subsample, optional train metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.evaluation.bootstrap import (
    _resample_blocks,
    bootstrap_distributions,
    percentile_interval,
    rescale_distribution,
)
from nervus_lightning.survival.concordance import concordance_index_censored
from nervus_lightning.survival.metrics import ipcw_subsample, survival_metrics
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.workflows.evaluate import check_evaluation_options, evaluate_run


def _survival_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    event_time = rng.exponential(np.exp(-0.7 * x))
    censor_time = rng.exponential(1.5, n)
    time = np.round(np.minimum(event_time, censor_time), 2) + 0.01
    return time, event_time <= censor_time, x + 0.3 * rng.normal(size=n)


def test_m_out_of_n_resamples_have_m_cases_and_keep_strata_shares() -> None:
    (block,) = list(_resample_blocks(1000, 3, 0, None, size=100))
    assert block.shape == (3, 100)
    strata = np.r_[np.zeros(800), np.ones(200)]
    (block,) = list(_resample_blocks(1000, 3, 0, strata, size=100))
    assert block.shape == (3, 100)
    assert (strata[block] == 1).sum(axis=1).tolist() == [20, 20, 20]
    # Without size (or size >= n) the resamples are the ordinary ones, unchanged.
    plain = next(_resample_blocks(50, 4, 3, None))
    assert np.array_equal(plain, next(_resample_blocks(50, 4, 3, None, size=80)))


def test_rescaled_m_out_of_n_interval_matches_the_full_bootstrap() -> None:
    time, event, risk = _survival_data(3000)

    def c_index(t, e, r):
        return {"c": concordance_index_censored(e, t, r)[0]}

    point = c_index(time, event, risk)["c"]
    full = bootstrap_distributions(c_index, time, event, risk, n_resamples=300, seed=1)["c"]
    small = bootstrap_distributions(c_index, time, event, risk, n_resamples=300, seed=1, size=300)[
        "c"
    ]
    lo_full, hi_full = percentile_interval(full)
    lo_raw, hi_raw = percentile_interval(small)
    lo, hi = percentile_interval(rescale_distribution(small, point, 300, 3000))
    # Unscaled, resamples of 300 give an interval about sqrt(10) = 3.2 times too wide.
    assert (hi_raw - lo_raw) / (hi_full - lo_full) > 2.4
    assert (hi - lo) / (hi_full - lo_full) == pytest.approx(1.0, abs=0.25)
    assert lo < point < hi
    assert abs((lo + hi) / 2 - (lo_full + hi_full) / 2) < 0.5 * (hi_full - lo_full)


def test_ipcw_metrics_on_the_seeded_subsample_and_harrell_on_all_rows() -> None:
    time, event, risk = _survival_data(2000, seed=2)
    reference = SurvivalReference.fit(time[:1000], event[:1000], risk[:1000])
    t, e, r = time[1000:], event[1000:], risk[1000:]
    got = survival_metrics(reference, t, e, r, max_rows_exact=400, seed=5)
    sub = ipcw_subsample(1000, 400, 5)
    assert sub.shape == (400,) and np.unique(sub).shape == (400,)
    on_sub = survival_metrics(reference, t[sub], e[sub], r[sub], max_rows_exact=None)
    exact = survival_metrics(reference, t, e, r, max_rows_exact=None)
    for key, value in got.items():
        if key in ("c_index", "logrank_p"):
            assert value == exact[key]
        else:
            assert value == on_sub[key], key
    assert got["c_index_uno"] != exact["c_index_uno"]


def _predictions(tmp_path, n_train: int = 600, n_test: int = 400):
    time, event, risk = _survival_data(n_train + n_test, seed=3)
    split = np.r_[["train"] * n_train, ["test"] * n_test]
    frame = pd.DataFrame(
        {
            "uniqID": [f"c{i}" for i in range(len(time))],
            "split": split,
            "label_death": event.astype(int),
            "period_death": time,
            "risk_label_death": risk,
        }
    )
    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    label = {"name": "label_death", "task": "survival", "period": "period_death"}
    (tmp_path / "schema.json").write_text(json.dumps({"labels": [label]}))
    return path, frame


def test_evaluate_run_notes_the_limits_and_can_leave_train_out(tmp_path) -> None:
    path, frame = _predictions(tmp_path)
    table = evaluate_run(
        path, tmp_path / "small", n_bootstrap=50, max_rows_exact=300, max_rows_bootstrap=200,
        train_metrics=False,
    )  # fmt: skip
    assert set(table["split"]) == {"test"}
    notes = pd.read_csv(tmp_path / "small" / "metrics_notes.csv")
    uno = notes[notes["metric"] == "c_index_uno"]["note"].iloc[0]
    assert "random subsample of 300 of the 400 cases (seed 0" in uno
    assert "resamples of 200 of the 400 cases" in uno
    harrell = notes[notes["metric"] == "c_index"]["note"].iloc[0]
    assert "subsample" not in harrell and "resamples of 200" in harrell
    test = frame[frame["split"] == "test"]
    c = table[(table["metric"] == "c_index")].iloc[0]
    expected = concordance_index_censored(
        test["label_death"], test["period_death"], test["risk_label_death"]
    )[0]
    assert c["value"] == pytest.approx(expected, abs=1e-12)
    assert c["ci_lower"] < c["value"] < c["ci_upper"]
    report = (tmp_path / "small" / "report.html").read_text()
    assert "m-out-of-n bootstrap" in report

    default = evaluate_run(path, tmp_path / "default", n_bootstrap=20)
    assert set(default["split"]) == {"train", "test"}
    assert (
        not pd.read_csv(tmp_path / "default" / "metrics_notes.csv")["note"]
        .str.contains("subsample")
        .any()
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_rows_exact": 0}, "evaluation.max_rows_exact"),
        ({"max_rows_bootstrap": 2.5}, "evaluation.max_rows_bootstrap"),
        ({"train_metrics": "no"}, "evaluation.train_metrics"),
    ],
)
def test_bad_limits_are_rejected_before_work(options, message) -> None:
    with pytest.raises(NervusInputError, match=message):
        check_evaluation_options(options)


def test_limits_come_from_the_config_and_are_checked_before_training() -> None:
    from conftest import compose_config

    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.workflows.train import evaluation_options

    options = evaluation_options(train_settings(compose_config(["task=survival"])))
    assert options["max_rows_exact"] == 100_000 and options["max_rows_bootstrap"] == 5_000
    assert options["train_metrics"] is True
    with pytest.raises(NervusInputError, match="evaluation.max_rows_bootstrap"):
        evaluation_options(train_settings(compose_config(["evaluation.max_rows_bootstrap=-1"])))
