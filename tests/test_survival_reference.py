"""Survival checkpoints and schema.json hold training aggregates only (rounded times, curves
whose every step holds at least k patients, no censoring curve), and every metric computed from
them equals scikit-survival called with ``survival_train`` = the evaluated rows themselves (the
IPCW weights are the evaluated split's own censoring Kaplan-Meier curve) and the stored times,
on real data with tied times (whas500, gbsg2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config
from sksurv.compare import compare_survival
from sksurv.datasets import load_gbsg2, load_whas500
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import CensoringDistributionEstimator, kaplan_meier_estimator
from sksurv.util import Surv
from test_privacy import find_patient_values

from nervus_lightning.cli.train import train_settings
from nervus_lightning.survival import ipcw
from nervus_lightning.survival.baseline import BreslowBaseline
from nervus_lightning.survival.metrics import (
    format_time,
    null_ibs,
    prediction_accuracy,
    survival_metrics,
    td_auc_key,
)
from nervus_lightning.survival.presets import write_preset_csv
from nervus_lightning.survival.reference import (
    SurvivalReference,
    aggregate_grid,
    round_to_step,
    time_step,
)
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train

TOL = 1e-6
DATASETS = {"whas500": (load_whas500, "fstat", "lenfol"), "gbsg2": (load_gbsg2, "cens", "time")}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def data(request):
    """Real outcomes (many tied days) with a risk that predicts them; 60 % train, longest
    follow-up in train so that scikit-survival accepts the other rows as a test set."""
    loader, event_field, time_field = DATASETS[request.param]
    _, outcome = loader()
    time = np.asarray(outcome[time_field], dtype=float)
    event = np.asarray(outcome[event_field], dtype=bool)
    rng = np.random.default_rng(0)
    risk = -np.log(time) + rng.normal(0, 1.0, time.shape[0])
    risk[::7] = np.round(risk[::7])  # some tied risks
    order = rng.permutation(time.shape[0])
    longest = int(np.argmax(time))
    order = np.r_[longest, order[order != longest]]
    n_train = int(0.6 * time.shape[0])
    assert np.unique(time[order[:n_train]]).shape[0] < n_train  # tied times
    return {
        "name": request.param,
        "time": time,
        "event": event,
        "risk": risk,
        "train": order[:n_train],
        "test": order[n_train:],
    }


# --- scikit-survival, called directly -----------------------------------------------------------


def _censor_after(time, event, horizon, cap):
    beyond = time > horizon
    return np.where(beyond, np.minimum(time, cap), time), event & ~beyond


def sksurv_metrics(reference: SurvivalReference, time, event, risk, eval_times=None):
    """The survival metrics computed by scikit-survival with ``survival_train`` = the evaluated
    rows ``(time, event)`` themselves, and the stored aggregates: tau, evaluation times, IBS
    grid, largest training time, risk cut-points and the stored baseline's survival (same
    administrative censoring)."""
    eval_times = np.asarray(reference.eval_times if eval_times is None else eval_times, float)
    y_self = Surv.from_arrays(event=event, time=time)
    top = reference.max_time
    out: dict[str, float | None] = {}
    out["c_index"] = concordance_index_censored(event, time, risk)[0]
    tau = min(reference.follow_up_p90, time.max())
    out["c_index_uno"] = None
    if tau < top and (event & (time < tau)).any():
        out["c_index_uno"] = concordance_index_ipcw(y_self, y_self, risk, tau=tau)[0]
    inside = (eval_times >= time.min()) & (eval_times < time.max()) & (eval_times < top)
    valid = inside & np.array([(event & (time <= t)).any() for t in eval_times])
    for t in eval_times:
        out[td_auc_key(t)] = None
    out["td_auc_mean"] = None
    if valid.any():
        times = np.unique(eval_times[valid])
        t_c, e_c = _censor_after(time, event, times.max(), top)
        auc, mean = cumulative_dynamic_auc(y_self, Surv.from_arrays(e_c, t_c), risk, times)
        for t, value in zip(times, np.atleast_1d(auc), strict=True):
            out[td_auc_key(t)] = value
        out["td_auc_mean"] = mean
    grid = np.unique(np.linspace(reference.follow_up_p10, reference.follow_up_p90, 50))
    grid = grid[(grid >= time.min()) & (grid < time.max()) & (grid < top)]
    out["ibs"] = None
    if grid.shape[0] >= 2:
        t_c, e_c = _censor_after(time, event, grid.max(), top)
        out["ibs"] = integrated_brier_score(
            y_self, Surv.from_arrays(e_c, t_c), reference.survival(risk, grid), grid
        )
    groups = np.searchsorted(reference.risk_cutpoints, risk, side="left")
    out["logrank_p"] = None
    if np.unique(groups).shape[0] > 1:
        out["logrank_p"] = compare_survival(Surv.from_arrays(event, time), groups)[1]
    return out


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, abs=TOL, rel=0), key


# --- the censoring curve and the IPCW statistics ------------------------------------------------


def test_censoring_curve_equals_sksurv_estimator(data):
    train = data["train"]
    time, event = data["time"][train], data["event"][train]
    curve = ipcw.CensoringCurve.fit(time, event)
    sksurv_curve = CensoringDistributionEstimator().fit(Surv.from_arrays(event, time))
    queries = np.r_[np.unique(time), np.unique(time) + 0.5, data["time"][data["test"]], -1.0]
    queries = queries[queries <= time.max()]
    np.testing.assert_allclose(curve(queries), sksurv_curve.predict_proba(queries), atol=1e-12)
    assert curve.times.shape[0] < np.unique(time[~event]).shape[0] + 1  # only where it drops
    after = [time.max() + 1]
    if sksurv_curve.predict_proba([time.max()])[0] > 0:  # undefined after the last time
        with pytest.raises(ValueError):
            sksurv_curve.predict_proba(after)
        with pytest.raises(ValueError, match="undefined after the largest time"):
            curve(after)
    else:  # reached 0 at the last time (censored): 0 after it
        assert curve(after)[0] == sksurv_curve.predict_proba(after)[0] == 0.0


def test_censoring_curve_edges():
    # Last time censored alone: G reaches 0 there and stays 0 after it, as in scikit-survival.
    time = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    event = np.array([1, 0, 1, 1, 0], dtype=bool)
    curve = ipcw.CensoringCurve.fit(time, event)
    expected = CensoringDistributionEstimator().fit(Surv.from_arrays(event, time))
    queries = [0.0, 1.0, 2.0, 2.5, 5.0, 7.0]
    np.testing.assert_allclose(curve(queries), expected.predict_proba(queries))
    # No censoring at all: G = 1 everywhere up to the largest time.
    no_censoring = ipcw.CensoringCurve.fit(time, np.ones(5, dtype=bool))
    np.testing.assert_array_equal(no_censoring([0.0, 3.0, 5.0]), 1.0)


def test_ipcw_statistics_equal_sksurv_with_training_rows(data):
    train, test = data["train"], data["test"]
    time, event, risk = data["time"], data["event"], data["risk"]
    y_train = Surv.from_arrays(event[train], time[train])
    y_test = Surv.from_arrays(event[test], time[test])
    curve = ipcw.CensoringCurve.fit(time[train], event[train])
    args = (time[test], event[test], risk[test])

    for tau in np.percentile(time[train], [30, 60, 90]):
        expected = concordance_index_ipcw(y_train, y_test, risk[test], tau=tau)[0]
        assert ipcw.uno_concordance(*args, curve, tau) == pytest.approx(expected, abs=1e-9)

    event_times = time[train][event[train]]
    for times in (np.percentile(event_times, [25, 50, 75]), [np.median(event_times)]):
        auc, mean = cumulative_dynamic_auc(y_train, y_test, risk[test], times)
        got_auc, got_mean = ipcw.cumulative_dynamic_auc(*args, times, curve)
        np.testing.assert_allclose(got_auc, auc, atol=1e-9)
        assert got_mean == pytest.approx(mean, abs=1e-9)

    grid = np.linspace(*np.percentile(time[train], [10, 90]), 30)
    surv = BreslowBaseline.fit(risk[train], time[train], event[train]).survival(risk[test], grid)
    expected = integrated_brier_score(y_train, y_test, surv, grid)
    got = ipcw.integrated_brier_score(time[test], event[test], surv, grid, curve)
    assert got == pytest.approx(expected, abs=1e-9)

    # Times outside [min, max) of the evaluated set: both refuse.
    for bad in ([time[test].max()], [time[test].min() - 1.0]):
        with pytest.raises(ValueError):
            cumulative_dynamic_auc(y_train, y_test, risk[test], bad)
        with pytest.raises(ValueError, match="within the follow-up"):
            ipcw.cumulative_dynamic_auc(*args, bad, curve)


def test_uno_without_comparable_pair_raises():
    curve = ipcw.CensoringCurve.fit([1.0, 2.0, 3.0], [1, 0, 1])
    with pytest.raises(NoComparablePairException):
        ipcw.uno_concordance([1.0, 2.0], [0, 0], [0.1, 0.2], curve, tau=2.5)


# --- survival_metrics from the aggregates = before --------------------------------------------


def _scenarios(data) -> Iterator[tuple[str, np.ndarray, np.ndarray, Any]]:
    """(name, training rows, evaluated rows, evaluation times) covering the edge cases."""
    time, event, train, test = data["time"], data["event"], data["train"], data["test"]
    yield "test split", train, test, None
    yield "times outside follow-up", train, test, [time.max() * 2, -1.0, float(np.median(time))]
    # External follow-up longer than training: sksurv alone would raise; we censor after.
    short = np.flatnonzero(time < np.percentile(time, 70))
    longer = np.flatnonzero(time >= np.percentile(time, 70))
    external = np.r_[short[1::2], longer]
    assert (event[longer] & (time[longer] > time[short[::2]].max())).any()
    yield "external with longer follow-up", short[::2], external, None
    late = test[~event[test] | (time[test] > np.percentile(time[test], 60))]
    yield "no early event", train, late, None


def test_survival_metrics_from_aggregates_equal_sksurv_on_the_evaluated_rows(data):
    time, event, risk = data["time"], data["event"], data["risk"]
    for name, fit_rows, evaluated, eval_times in _scenarios(data):
        reference = SurvivalReference.fit(
            time[fit_rows], event[fit_rows], risk[fit_rows], eval_times=eval_times
        )
        got = survival_metrics(reference, time[evaluated], event[evaluated], risk[evaluated])
        expected = sksurv_metrics(reference, time[evaluated], event[evaluated], risk[evaluated])
        assert list(got) == list(expected), name
        _assert_same(got, expected)
        assert sum(value is not None for value in got.values()) >= 3, name


def _steps_hold_k(reference: SurvivalReference, time, event, k: int) -> None:
    """Each stored step of the baseline holds >= k events; >= k followed after the last."""
    kept = reference.baseline.times
    counts = np.diff(np.r_[0, [(event & (time <= t)).sum() for t in kept]])
    assert (counts >= k).all(), counts
    if kept.size:
        assert (time > kept[-1]).sum() >= k


def test_reference_stores_rounded_times_and_steps_of_k_patients(data, tmp_path):
    train, test = data["train"], data["test"]
    time, event, risk = data["time"], data["event"], data["risk"]
    reference = SurvivalReference.fit(time[train], event[train], risk[train])
    full = BreslowBaseline.fit(risk[train], time[train], event[train])
    step = time_step(time[train].max())
    assert reference.time_step == step and reference.min_patients_per_step == 10

    # Percentiles interpolated, then rounded to 2 significant digits; the maximum rounded up.
    p10, p90 = np.percentile(time[train], [10, 90])
    assert (reference.follow_up_p10, reference.follow_up_p90) == (
        float(f"{p10:.2g}"),
        float(f"{p90:.2g}"),
    )
    np.testing.assert_array_equal(
        reference.ibs_grid(),
        np.unique(np.linspace(reference.follow_up_p10, reference.follow_up_p90, 50)),
    )
    event_times = time[train][event[train]]
    e10, e90 = np.percentile(event_times, [10, 90])
    np.testing.assert_array_equal(
        reference.td_auc_plot_grid(),
        np.linspace(float(f"{e10:.2g}"), float(f"{e90:.2g}"), 20),
    )
    assert time[train].max() <= reference.max_time < time[train].max() + step
    assert reference.max_time / step == pytest.approx(round(reference.max_time / step))
    np.testing.assert_allclose(
        reference.eval_times,
        [float(f"{t:.2g}") for t in np.percentile(event_times, [25, 50, 75])],
    )

    # The baseline: at each stored time exactly Breslow's estimate; each step k events or more.
    kept = reference.baseline.times
    assert 5 <= kept.shape[0] < np.unique(event_times).shape[0] / 5
    np.testing.assert_allclose(reference.baseline.cumhaz, full.baseline_cumulative_hazard(kept))
    _steps_hold_k(reference, time[train], event[train], 10)
    # The evaluation times are stored times when their steps hold k events.
    assert np.isin(reference.eval_times, kept).all()
    np.testing.assert_allclose(
        reference.survival(risk[test], reference.eval_times),
        full.survival(risk[test], reference.eval_times),
        rtol=1e-12,
    )
    # A larger k: fewer, coarser steps, each still backed by k events.
    coarse = SurvivalReference.fit(time[train], event[train], risk[train], min_patients_per_step=40)
    assert coarse.baseline.times.shape[0] < kept.shape[0]
    _steps_hold_k(coarse, time[train], event[train], 40)

    torch.save(reference.to_tensors(), tmp_path / "ref.pt")
    from_tensors = SurvivalReference.from_tensors(
        torch.load(tmp_path / "ref.pt", weights_only=True)
    )
    from_json = SurvivalReference.from_json(json.loads(json.dumps(reference.to_json())))
    expected = survival_metrics(reference, time[test], event[test], risk[test])
    for restored in (from_tensors, from_json):
        assert survival_metrics(restored, time[test], event[test], risk[test]) == expected
        np.testing.assert_array_equal(restored.ibs_grid(), reference.ibs_grid())
        np.testing.assert_array_equal(restored.td_auc_plot_grid(), reference.td_auc_plot_grid())
        np.testing.assert_array_equal(restored.null_survival, reference.null_survival)
        assert restored.null_cif is None
        assert restored.time_step == step and restored.min_patients_per_step == 10


def test_time_step_and_aggregate_grid():
    assert [time_step(m) for m in (60.0, 100.0, 8.3, 2358.0, 0.4)] == [1.0, 1.0, 0.1, 25.0, 0.005]
    np.testing.assert_array_equal(round_to_step([0.30000001, 2.25, 7.01], 0.1), [0.3, 2.2, 7.0])
    np.testing.assert_array_equal(round_to_step([7.01, 7.0], 0.1, up=True), [7.1, 7.0])
    # 30 events at 1..30, 15 censored after them at 31..45.
    time = np.arange(1.0, 46.0)
    event = time <= 30
    candidates = np.arange(0.5, 46.0, 1.0)  # not patients' times
    kept = aggregate_grid(time, event, candidates, k=10)
    np.testing.assert_array_equal(kept, [10.5, 20.5, 30.5])
    # Only 9 followed after 36: the walk stops there, whatever the events.
    assert aggregate_grid(time, np.ones(45, bool), candidates, k=10).max() < 36
    # An anchor is kept first; candidates around it leave k events on each side.
    np.testing.assert_array_equal(
        aggregate_grid(time, event, candidates, k=10, anchors=[15.5]), [15.5, 25.5]
    )
    assert aggregate_grid(time, event, candidates, k=31).size == 0


def test_an_older_reference_with_a_censoring_curve_still_loads(data):
    """Checkpoints and schema.json files written before the censoring curve was dropped hold
    ``censoring_times`` / ``censoring_survival`` (JSON: ``censoring``) and no time step: they
    load, the curve is ignored and the metrics use the evaluated rows' own."""
    train, test = data["train"], data["test"]
    time, event, risk = data["time"], data["event"], data["risk"]
    reference = SurvivalReference.fit(time[train], event[train], risk[train])
    old_curve = ipcw.CensoringCurve.fit(time[train], event[train])
    tensors = reference.to_tensors()
    for name in ("time_step", "min_patients_per_step"):
        del tensors[name]
    tensors["censoring_times"] = torch.from_numpy(old_curve.times)
    tensors["censoring_survival"] = torch.from_numpy(old_curve.survival)
    old_json = reference.to_json()
    old_json["censoring"] = {"times": old_curve.times.tolist(), "survival": []}
    for name in ("time_step", "min_patients_per_step"):
        del old_json["time_summary"][name]
    expected = survival_metrics(reference, time[test], event[test], risk[test])
    for old in (SurvivalReference.from_tensors(tensors), SurvivalReference.from_json(old_json)):
        assert old.time_step is None and old.min_patients_per_step is None
        assert survival_metrics(old, time[test], event[test], risk[test]) == expected
        assert "censoring_times" not in old.to_tensors() and "censoring" not in old.to_json()


# --- reading the stored curve between its kept times ---------------------------------------------


def test_linear_reading_of_a_stored_baseline():
    """A stored curve is read linearly between its times, from 0 at time 0, flat after the last;
    a fitted Breslow baseline stays a step function; the flag survives the tensor round trip."""
    stored = BreslowBaseline(np.array([2.0, 4.0]), np.array([1.0, 3.0]), linear=True)
    at = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 10.0]
    np.testing.assert_allclose(stored.baseline_cumulative_hazard(at), [0, 0, 0.5, 1, 2, 3, 3])
    step = BreslowBaseline(stored.times, stored.cumhaz)
    np.testing.assert_allclose(step.baseline_cumulative_hazard(at), [0, 0, 0, 1, 1, 3, 3])
    assert BreslowBaseline.from_tensors(stored.to_tensors()).linear
    assert not BreslowBaseline.from_tensors(step.to_tensors()).linear
    fitted = BreslowBaseline.fit([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1, 1, 0])
    assert not fitted.linear
    np.testing.assert_allclose(
        fitted.baseline_cumulative_hazard([0.5, 1.5, 2.5]), [0, 1 / 3, 5 / 6]
    )


def test_few_events_curve_follows_the_true_survival_between_kept_times():
    """Exponential survival (true H0(t) = t / 5, one input with log hazard ratio 0.7), 90
    training patients with about 30 events, so k = 10 keeps two or three times: the predicted
    survival between them is far closer to the truth than the step reading of the same stored
    values (which holds survival at 1 for everyone before the first kept time)."""
    rng = np.random.default_rng(0)
    n = 90
    x = rng.standard_normal(n)
    risk = 0.7 * x
    true_time = rng.exponential(5.0 * np.exp(-risk))
    censor = rng.exponential(2.5, n)
    time, event = np.minimum(true_time, censor), true_time <= censor
    assert 25 <= event.sum() <= 40
    reference = SurvivalReference.fit(time, event, risk)
    assert reference.baseline.linear and reference.baseline.times.shape[0] <= 4
    grid = np.linspace(0.05, np.percentile(time, 80), 200)
    truth = np.exp(-np.outer(np.exp(risk), grid / 5.0))
    step = BreslowBaseline(reference.baseline.times, reference.baseline.cumhaz)
    linear_error = np.abs(reference.survival(risk, grid) - truth).mean()
    step_error = np.abs(step.survival(risk, grid) - truth).mean()
    assert linear_error < 0.5 * step_error
    # Both readings agree with the full Breslow estimate at the kept times.
    full = BreslowBaseline.fit(risk, time, event)
    kept = reference.baseline.times
    np.testing.assert_allclose(
        reference.baseline.baseline_cumulative_hazard(kept), full.baseline_cumulative_hazard(kept)
    )


def test_a_reference_stored_before_the_linear_reading_keeps_its_steps(data):
    """A checkpoint or schema.json written before the flag existed reads its baseline (and so
    its predictions) in steps, as it did; a new one keeps the flag through both stores."""
    time, event, risk = data["time"], data["event"], data["risk"]
    train, test = data["train"], data["test"]
    reference = SurvivalReference.fit(time[train], event[train], risk[train])
    for again in (
        SurvivalReference.from_tensors(reference.to_tensors()),
        SurvivalReference.from_json(json.loads(json.dumps(reference.to_json()))),
    ):
        assert again.baseline.linear
        grid = reference.ibs_grid()
        np.testing.assert_array_equal(
            again.survival(risk[test], grid), reference.survival(risk[test], grid)
        )
    tensors = reference.to_tensors()
    del tensors["baseline_linear"]
    old_json = reference.to_json()
    del old_json["time_summary"]["baseline_linear"]
    step = BreslowBaseline(reference.baseline.times, reference.baseline.cumhaz)
    grid = reference.ibs_grid()
    for old in (SurvivalReference.from_tensors(tensors), SurvivalReference.from_json(old_json)):
        assert not old.baseline.linear
        np.testing.assert_array_equal(
            old.survival(risk[test], grid), step.survival(risk[test], grid)
        )


# --- the null model and the index of prediction accuracy ----------------------------------------


def test_null_model_ibs_and_ipa_against_scikit_survival(data):
    """The stored null model is the training Kaplan-Meier curve on the IBS grid, known at the
    baseline's kept times (steps of at least k events) and read between them as the baseline is
    (its cumulative hazard -log S linear from 0 at time 0, flat after the last); its IBS on an
    evaluated set is scikit-survival's integrated_brier_score of that curve given to everyone
    (``survival_train`` = the evaluated rows), and ipa = 1 - ibs / ibs_null. A reference stored
    without it gives None and a reason."""
    time, event, risk = data["time"], data["event"], data["risk"]
    train, test = data["train"], data["test"]
    reference = SurvivalReference.fit(time[train], event[train], risk[train])
    grid = reference.ibs_grid()
    # The training Kaplan-Meier curve at the baseline's stored times (each step >= k events),
    # its cumulative hazard read linearly between them, as the baseline's.
    stored = reference.baseline.times
    assert reference.baseline.linear
    km_time, km_surv = kaplan_meier_estimator(event[train], time[train])
    at = np.searchsorted(km_time, stored, side="right") - 1
    km_stored = np.where(at >= 0, km_surv[np.maximum(at, 0)], 1.0)
    km_cumhaz = np.interp(grid, np.r_[0.0, stored], np.r_[0.0, -np.log(km_stored)])
    expected_curve = np.exp(-km_cumhaz)
    np.testing.assert_allclose(reference.null_survival, expected_curve, rtol=1e-12)
    on_stored = np.isin(grid, stored)
    assert on_stored.any()
    np.testing.assert_allclose(reference.null_survival[on_stored], km_stored[np.isin(stored, grid)])
    inside = grid[(grid >= time[test].min()) & (grid < time[test].max())]
    kept = np.isin(grid, inside)
    # survival_train = the evaluated rows: their own censoring curve.
    y_test = Surv.from_arrays(event[test], time[test])
    curves = np.tile(expected_curve[kept], (test.shape[0], 1))
    expected = integrated_brier_score(y_test, y_test, curves, grid[kept])
    got, why = null_ibs(reference, time[test], event[test])
    assert why is None and got == pytest.approx(expected, rel=1e-9)
    ibs = survival_metrics(reference, time[test], event[test], risk[test])["ibs"]
    assert prediction_accuracy(ibs, got) == pytest.approx(1 - ibs / expected, rel=1e-9)
    assert prediction_accuracy(None, got) is None and prediction_accuracy(ibs, 0.0) is None
    # An older checkpoint's reference, stored without the null model.
    tensors = reference.to_tensors()
    del tensors["null_survival"]
    old = SurvivalReference.from_tensors(tensors)
    assert old.null_survival is None
    value, why = null_ibs(old, time[test], event[test])
    assert value is None and "without the training null model" in why


# --- no patient-level data in what a run writes ------------------------------------------------


def test_reference_holds_no_patient_value(data):
    """The scan of tests/test_privacy.py on a reference fitted on times with two decimals (as
    real data have; whas500 and gbsg2 count whole days, where a grid of whole days cannot help
    meeting patients' days). The detector that stood here before looked for half of the
    distinct event times or 90 % of the distinct times in one array, so the censoring curve
    (only the censored patients' times, all of them) and the pycox cut points (20 times) went
    through it; any 10 of them now count."""
    rng = np.random.default_rng(1)
    train = data["train"]
    time = data["time"][train] + rng.integers(1, 100, train.shape[0]) / 100
    event, risk = data["event"][train], data["risk"][train]
    patients = {"training times": time, "training risks": risk}
    reference = SurvivalReference.fit(time, event, risk)
    assert find_patient_values(reference.to_tensors(), patients) == []
    assert find_patient_values(reference.to_json(), patients) == []
    # What was stored before: the censoring curve's times, i.e. every censored patient's time.
    old_curve = ipcw.CensoringCurve.fit(time, event)
    assert find_patient_values({"censoring_times": torch.from_numpy(old_curve.times)}, patients)


@pytest.mark.slow  # about 10-15 s: training, predict and two evaluation reports
def test_run_stores_aggregates_only_and_scores_as_before(tmp_path):
    """whas500 end to end: a tiny DeepSurv, an external set with longer follow-up than training;
    checkpoint and schema.json hold no censoring curve; metrics, survival columns and the
    external evaluation from schema.json alone equal scikit-survival with ``survival_train`` =
    the evaluated rows and the stored aggregates."""
    frame = pd.read_csv(write_preset_csv("whas500", tmp_path / "whas500.csv"))
    frame.loc[(frame.split == "train") & (frame.period_death > 1800), "split"] = "external"
    frame.loc[(frame.split == "test") & (frame.index % 3 == 0), "split"] = "external"
    csv = tmp_path / "data.csv"
    frame.to_csv(csv, index=False)
    run = tmp_path / "run"
    cfg = compose_config(
        [f"data.csv={csv}", "task=survival", *FAST, "model/extractor=none", "data.batch_size=512"]
        + ["trainer.max_epochs=3", "evaluation.n_bootstrap=0"]
    )
    train(train_settings(cfg), run)

    pred = pd.read_csv(run / "predictions.csv")
    rows = pred[pred.split == "train"]
    train_time = rows.period_death.to_numpy(float)
    train_event = rows.label_death.to_numpy(float)
    external = pred[pred.split == "external"]
    assert (external.label_death.astype(bool) & (external.period_death > train_time.max())).any()

    # No censoring curve in the checkpoint or schema.json (the scan: tests/test_privacy.py).
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    raw = torch.load(ckpt, weights_only=True)
    assert "hyper_parameters" in raw and "0.baseline_cumhaz" in raw["nervus_task_state"]
    assert not any("censoring" in key for key in raw["nervus_task_state"])
    schema = json.loads((run / "schema.json").read_text())
    assert not {"train_time", "train_event", "censoring"} & set(schema["labels"][0])

    # Prediction columns and metrics: the stored aggregates, scikit-survival's values.
    label = schema["labels"][0]
    reference = SurvivalReference.from_json(label)
    eval_times = np.asarray(label["eval_times"])
    exact = np.percentile(train_time[train_event > 0], [25, 50, 75])
    np.testing.assert_allclose(eval_times, [float(f"{t:.2g}") for t in exact])
    surv_cols = [f"surv_label_death_t{format_time(t)}" for t in eval_times]
    np.testing.assert_allclose(
        pred[surv_cols].to_numpy(), reference.survival(pred.risk_label_death, eval_times), atol=TOL
    )
    metrics = json.loads((run / "metrics.json").read_text())
    expected = {}
    for split in ("val", "test", "external"):
        part = pred[pred.split == split]
        expected[split] = sksurv_metrics(
            reference,
            part.period_death.to_numpy(float),
            part.label_death.to_numpy(bool),
            part.risk_label_death.to_numpy(float),
        )
        got = {k: metrics[split]["label_death"][k] for k in expected[split]}
        _assert_same(got, expected[split])
    assert all(value is not None for value in expected["external"].values())

    # An external CSV alone, evaluated from the checkpoint / schema.json without training rows.
    ext_csv = tmp_path / "external.csv"
    frame[frame.split == "external"].to_csv(ext_csv, index=False)
    out = tmp_path / "ext"
    predict(ckpt, ext_csv, out, evaluation={"n_bootstrap": 0})  # runs evaluate_run
    assert "train" not in set(pd.read_csv(out / "predictions.csv").split)
    report = pd.read_csv(out / "evaluation" / "metrics.csv")
    values = report[(report.split == "external") & (report.group == "all")]
    got = dict(zip(values.metric, values.value, strict=True))
    for key, value in expected["external"].items():
        assert got[key] == pytest.approx(value, abs=TOL), key
