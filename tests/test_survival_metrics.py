"""Breslow baseline, survival metrics and plots, each checked against scikit-survival."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sksurv.compare import compare_survival
from sksurv.datasets import load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from nervus_lightning.survival.baseline import BreslowBaseline
from nervus_lightning.survival.metrics import (
    assign_risk_groups,
    default_eval_times,
    format_time,
    ibs_time_grid,
    risk_group_cutpoints,
    survival_metrics,
    td_auc_key,
    uno_truncation_time,
)
from nervus_lightning.survival.plots import plot_km_risk_groups, plot_td_auc
from nervus_lightning.survival.reference import SurvivalReference

COLUMNS = ["age", "bmi", "hr", "sysbp", "diasbp"]


@pytest.fixture(scope="module")
def cox():
    """whas500 split 60/40 (longest follow-up in train), Cox model fitted on train."""
    features, outcome = load_whas500()
    x = features[COLUMNS].to_numpy(dtype=float)
    # Not standardised on purpose: the linear predictor is far from 0, so a baseline that
    # centred the risks differently from sksurv would show up.
    time = np.ascontiguousarray(outcome["lenfol"], dtype=float)
    event = np.ascontiguousarray(outcome["fstat"], dtype=bool)
    order = np.random.default_rng(0).permutation(time.shape[0])
    longest = int(np.argmax(time))
    order = np.r_[longest, order[order != longest]]
    train, test = order[:300], order[300:]
    model = CoxPHSurvivalAnalysis(ties="efron").fit(x[train], outcome[train])
    risk = x @ model.coef_
    return {
        "model": model,
        "x": x,
        "time": time,
        "event": event,
        "y": outcome,
        "risk": risk,
        "train": train,
        "test": test,
    }


# --- Breslow baseline -------------------------------------------------------------------------


def test_baseline_matches_sksurv(cox):
    model, x, time, train = cox["model"], cox["x"], cox["time"], cox["train"]
    baseline = BreslowBaseline.fit(cox["risk"][train], time[train], cox["event"][train])
    assert abs(cox["risk"][train].mean()) > 1.0  # uncentred linear predictor

    first, last = model.unique_times_[0], model.unique_times_[-1]
    grid = np.unique(np.r_[model.unique_times_, np.linspace(first, last, 300)])
    subjects = np.r_[cox["test"][:40], train[:10]]
    expected_surv = np.array([f(grid) for f in model.predict_survival_function(x[subjects])])
    expected_chf = np.array(
        [f(grid) for f in model.predict_cumulative_hazard_function(x[subjects])]
    )
    risk = cox["risk"][subjects]
    np.testing.assert_allclose(baseline.survival(risk, grid), expected_surv, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        baseline.cumulative_hazard(risk, grid), expected_chf, rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(
        baseline.baseline_cumulative_hazard(grid), model.cum_baseline_hazard_(grid), rtol=1e-6
    )


def test_baseline_step_function_edges():
    risk = np.array([0.0, 0.5, -0.5, 1.0])
    time = np.array([2.0, 3.0, 3.0, 5.0])
    event = np.array([1, 1, 0, 0])
    baseline = BreslowBaseline.fit(risk, time, event)
    total = np.exp(risk).sum()
    expected_h2 = 1.0 / total
    expected_h3 = expected_h2 + 1.0 / np.exp(risk[1:]).sum()
    h = baseline.baseline_cumulative_hazard([0.0, 1.999, 2.0, 2.5, 3.0, 4.0, 100.0])
    np.testing.assert_allclose(
        h, [0.0, 0.0, expected_h2, expected_h2, expected_h3, expected_h3, expected_h3]
    )
    np.testing.assert_array_equal(baseline.times, [2.0, 3.0])


def test_baseline_huge_risk_no_nan_and_tensor_round_trip(cox, tmp_path):
    train = cox["train"]
    baseline = BreslowBaseline.fit(
        torch.from_numpy(cox["risk"][train]), cox["time"][train], cox["event"][train]
    )
    surv = baseline.survival(np.array([1000.0, -1000.0, 0.0]), [0.0, 100.0, 5000.0])
    assert np.isfinite(surv).all()
    np.testing.assert_array_equal(surv[:, 0], 1.0)  # before the first event time
    assert surv[0, 1] == 0.0 and surv[1, 1] == 1.0

    path = tmp_path / "baseline.pt"
    torch.save({"baseline": baseline.to_tensors()}, path)
    restored = BreslowBaseline.from_tensors(torch.load(path, weights_only=True)["baseline"])
    np.testing.assert_array_equal(restored.times, baseline.times)
    np.testing.assert_array_equal(restored.cumhaz, baseline.cumhaz)


# --- helpers ---------------------------------------------------------------------------------


def test_format_time():
    assert format_time(365) == "365"
    assert format_time(365.0) == "365"
    assert format_time(2.5) == "2.5"
    assert format_time(np.float64(730.25)) == "730.25"
    assert format_time(1 / 3) == "0.3333"
    assert td_auc_key(365.0) == "td_auc_t365"


def test_default_eval_times_and_risk_groups(cox):
    time, event, train = cox["time"], cox["event"], cox["train"]
    # Interpolated percentiles, rounded to 2 significant digits: never one patient's time.
    exact = np.percentile(time[train][event[train]], [25, 50, 75])
    got = default_eval_times(time[train], event[train])
    np.testing.assert_allclose(got, [float(f"{t:.2g}") for t in exact])
    np.testing.assert_allclose(got, exact, rtol=0.05)

    # The median risk rounded to 4 significant digits (an odd count's median is one patient's).
    cut = risk_group_cutpoints(cox["risk"][train])
    np.testing.assert_allclose(cut, [np.median(cox["risk"][train])], rtol=5e-4)
    assert not np.isin(cut, cox["risk"][train]).any()
    np.testing.assert_array_equal(
        assign_risk_groups([cut[0] - 1, cut[0], cut[0] + 1], cut), [0, 0, 1]
    )
    cut3 = risk_group_cutpoints(np.arange(9.0), n_groups=3)
    np.testing.assert_allclose(cut3, np.quantile(np.arange(9.0), [1 / 3, 2 / 3]), rtol=5e-4)
    np.testing.assert_array_equal(assign_risk_groups([0.0, 4.0, 8.0], cut3), [0, 1, 2])


# --- survival_metrics ------------------------------------------------------------------------


def _reference(cox, eval_times=None):
    train = cox["train"]
    return SurvivalReference.fit(
        cox["time"][train], cox["event"][train], cox["risk"][train], eval_times=eval_times
    )


def _metrics(cox, subjects, eval_times, reasons=None):
    """Metrics from the training aggregates only (the training rows are not passed)."""
    time, event, risk = cox["time"], cox["event"], cox["risk"]
    return survival_metrics(
        _reference(cox, eval_times),
        time[subjects],
        event[subjects],
        risk[subjects],
        reasons=reasons,
    )


def test_metrics_equal_direct_sksurv_calls(cox):
    """scikit-survival called with ``survival_train`` = the evaluated rows themselves (the
    censoring weights are the evaluated split's own Kaplan-Meier curve), with the stored tau,
    evaluation times, IBS grid and the survival the stored baseline gives."""
    train, test = cox["train"], cox["test"]
    y, time, event, risk, model = cox["y"], cox["time"], cox["event"], cox["risk"], cox["model"]
    eval_times = default_eval_times(time[train], event[train])
    reasons: dict[str, str] = {}
    got = _metrics(cox, test, eval_times, reasons)
    assert reasons == {}
    assert list(got) == [
        "c_index",
        "c_index_uno",
        *[td_auc_key(t) for t in eval_times],
        "td_auc_mean",
        "ibs",
        "logrank_p",
    ]

    assert got["c_index"] == pytest.approx(
        concordance_index_censored(event[test], time[test], risk[test])[0], rel=1e-12
    )
    reference = _reference(cox, eval_times)
    tau = uno_truncation_time(reference, time[test])
    assert tau == float(f"{np.percentile(time[train], 90):.2g}")
    assert got["c_index_uno"] == pytest.approx(
        concordance_index_ipcw(y[test], y[test], risk[test], tau=tau)[0], rel=1e-12
    )
    auc, mean_auc = cumulative_dynamic_auc(y[test], y[test], risk[test], eval_times)
    for t, value in zip(eval_times, auc, strict=True):
        assert got[td_auc_key(t)] == pytest.approx(value, rel=1e-12)
    assert got["td_auc_mean"] == pytest.approx(mean_auc, rel=1e-12)

    grid = ibs_time_grid(reference, time[test])
    assert grid.shape[0] == 50
    assert grid.min() >= time[test].min() and grid.max() < time[test].max()
    surv = reference.survival(risk[test], grid)
    assert got["ibs"] == pytest.approx(
        integrated_brier_score(y[test], y[test], surv, grid), rel=1e-9
    )
    # The stored baseline is scikit-survival's Breslow curve at each stored time.
    kept = reference.baseline.times
    sksurv_surv = np.array([f(kept) for f in model.predict_survival_function(cox["x"][test])])
    np.testing.assert_allclose(reference.survival(risk[test], kept), sksurv_surv, rtol=1e-9)

    groups = risk[test] > np.median(risk[train])
    assert got["logrank_p"] == pytest.approx(compare_survival(y[test], groups)[1], rel=1e-12)


def test_eval_time_outside_followup_is_dropped_with_reason(cox):
    test = cox["test"]
    y, risk = cox["y"], cox["risk"]
    inside = [100.0, 500.0]
    reasons: dict[str, str] = {}
    got = _metrics(cox, test, [*inside, 1e5, -1.0], reasons)
    assert got[td_auc_key(1e5)] is None and got[td_auc_key(-1.0)] is None
    assert "outside" in reasons[td_auc_key(1e5)] and "outside" in reasons[td_auc_key(-1.0)]
    auc, mean_auc = cumulative_dynamic_auc(y[test], y[test], risk[test], inside)
    assert [got[td_auc_key(t)] for t in inside] == pytest.approx(list(auc), rel=1e-12)
    assert got["td_auc_mean"] == pytest.approx(mean_auc, rel=1e-12)


def test_external_set_with_longer_followup_than_train(cox):
    """The metrics censor after the last time a metric looks at, which leaves every reported
    value unchanged (scikit-survival with ``survival_train`` = the evaluated rows)."""
    time, event, risk, y = cox["time"], cox["event"], cox["risk"], cox["y"]
    short = np.flatnonzero(time < 1500)
    train = short[: len(short) // 2]
    external = np.r_[short[len(short) // 2 :], np.flatnonzero(time >= 1500)]
    assert (event[external] & (time[external] > time[train].max())).any()
    cox_short = {**cox, "train": train}
    eval_times = default_eval_times(time[train], event[train])

    got = _metrics(cox_short, external, eval_times)
    assert all(value is not None for value in got.values())
    horizon = eval_times.max()
    censored = Surv.from_arrays(
        event=event[external] & (time[external] <= horizon),
        time=np.minimum(time[external], _reference(cox_short).max_time),
    )
    auc, mean_auc = cumulative_dynamic_auc(y[external], censored, risk[external], eval_times)
    assert [got[td_auc_key(t)] for t in eval_times] == pytest.approx(list(auc), rel=1e-12)
    # Harrell's C needs no censoring model and is computed on the untouched data.
    assert got["c_index"] == pytest.approx(
        concordance_index_censored(event[external], time[external], risk[external])[0]
    )


def test_no_event_split_gives_none_with_reasons(cox):
    test = cox["test"]
    no_event = test[~cox["event"][test]]
    reasons: dict[str, str] = {}
    got = _metrics(cox, no_event, [100.0, 500.0], reasons)
    assert set(got) == set(reasons)
    assert all(value is None for value in got.values())
    assert all("no event" in why for why in reasons.values())


def test_single_risk_group(cox):
    test, risk = cox["test"], cox["risk"]
    low_risk = test[risk[test] <= np.median(risk[cox["train"]])]
    reasons: dict[str, str] = {}
    got = _metrics(cox, low_risk, [300.0], reasons)
    assert got["logrank_p"] is None and "one risk group" in reasons["logrank_p"]
    assert set(reasons) == {"logrank_p"}


def test_eval_time_before_first_event(cox):
    test, time, event = cox["test"], cox["time"], cox["event"]
    late = test[~event[test] | (time[test] > 600)]  # whas500: first censoring at day 368
    assert time[late].min() < 400.0 < time[late][event[late]].min()
    reasons: dict[str, str] = {}
    got = _metrics(cox, late, [400.0, 900.0], reasons)
    assert got[td_auc_key(400.0)] is None
    assert reasons[td_auc_key(400.0)] == "no event up to time 400"
    y, risk = cox["y"], cox["risk"]
    auc, mean_auc = cumulative_dynamic_auc(y[late], y[late], risk[late], [900.0])
    assert got[td_auc_key(900.0)] == pytest.approx(auc[0], rel=1e-12)
    assert got["td_auc_mean"] == pytest.approx(mean_auc, rel=1e-12)
    assert set(reasons) == {key for key, value in got.items() if value is None}


# --- plots -----------------------------------------------------------------------------------


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def test_plots_write_valid_png(cox, tmp_path):
    test = cox["test"]
    time, event, risk = cox["time"][test], cox["event"][test], cox["risk"][test]
    cut = risk_group_cutpoints(risk, n_groups=3)
    groups = assign_risk_groups(risk, cut)
    km = plot_km_risk_groups(time, event, groups, tmp_path / "km" / "km.png", title="whas500")
    _assert_png(km)
    single = plot_km_risk_groups(
        time, event, np.zeros_like(groups), tmp_path / "one.png", group_names=["all"]
    )
    _assert_png(single)
    auc = plot_td_auc([100.0, 300.0, 700.0], [0.7, 0.75, 0.8], 0.76, tmp_path / "auc.png")
    _assert_png(auc)
    with pytest.raises(ValueError, match="group names"):
        plot_km_risk_groups(time, event, groups, tmp_path / "x.png", group_names=["a"])
