"""Survival checkpoints and schema.json hold training aggregates only, and every metric computed
from them equals scikit-survival called with the full training rows (the code path before the
aggregates), on real data with tied times (whas500, gbsg2)."""

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

from nervus_lightning.predict import predict
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
    default_eval_times,
    risk_group_cutpoints,
)
from nervus_lightning.train import train

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


# --- today's code path: scikit-survival with the full training arrays -------------------------


def _censor_after(time, event, horizon, cap):
    beyond = time > horizon
    return np.where(beyond, np.minimum(time, cap), time), event & ~beyond


def sksurv_metrics(train_time, train_event, train_risk, time, event, risk, eval_times, cutpoints):
    """The survival metrics as computed before the aggregates (scikit-survival called directly
    with the training rows; same time choices and administrative censoring)."""
    eval_times = np.asarray(eval_times, dtype=float)
    y_train = Surv.from_arrays(event=train_event, time=train_time)
    baseline = BreslowBaseline.fit(train_risk, train_time, train_event)
    top = train_time.max()
    out: dict[str, float | None] = {}
    out["c_index"] = concordance_index_censored(event, time, risk)[0]
    tau = min(np.percentile(train_time, 90), time.max())
    out["c_index_uno"] = None
    if tau < top and (event & (time < tau)).any():
        y = Surv.from_arrays(event=event, time=time)
        out["c_index_uno"] = concordance_index_ipcw(y_train, y, risk, tau=tau)[0]
    inside = (eval_times >= time.min()) & (eval_times < time.max()) & (eval_times < top)
    valid = inside & np.array([(event & (time <= t)).any() for t in eval_times])
    for t in eval_times:
        out[td_auc_key(t)] = None
    out["td_auc_mean"] = None
    if valid.any():
        times = np.unique(eval_times[valid])
        t_c, e_c = _censor_after(time, event, times.max(), top)
        auc, mean = cumulative_dynamic_auc(y_train, Surv.from_arrays(e_c, t_c), risk, times)
        for t, value in zip(times, np.atleast_1d(auc), strict=True):
            out[td_auc_key(t)] = value
        out["td_auc_mean"] = mean
    low, high = np.percentile(train_time, [10, 90])
    grid = np.unique(np.linspace(low, high, 50))
    grid = grid[(grid >= time.min()) & (grid < time.max()) & (grid < top)]
    out["ibs"] = None
    if grid.shape[0] >= 2:
        t_c, e_c = _censor_after(time, event, grid.max(), top)
        out["ibs"] = integrated_brier_score(
            y_train, Surv.from_arrays(e_c, t_c), baseline.survival(risk, grid), grid
        )
    groups = np.searchsorted(cutpoints, risk, side="left")
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
        with pytest.raises(ValueError, match="undefined after the largest training time"):
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


def test_survival_metrics_from_aggregates_equal_sksurv_with_training_rows(data):
    time, event, risk = data["time"], data["event"], data["risk"]
    for name, fit_rows, evaluated, eval_times in _scenarios(data):
        reference = SurvivalReference.fit(
            time[fit_rows], event[fit_rows], risk[fit_rows], eval_times=eval_times
        )
        got = survival_metrics(reference, time[evaluated], event[evaluated], risk[evaluated])
        times = (
            default_eval_times(time[fit_rows], event[fit_rows])
            if eval_times is None
            else eval_times
        )
        expected = sksurv_metrics(
            time[fit_rows],
            event[fit_rows],
            risk[fit_rows],
            time[evaluated],
            event[evaluated],
            risk[evaluated],
            times,
            risk_group_cutpoints(risk[fit_rows]),
        )
        assert list(got) == list(expected), name
        _assert_same(got, expected)
        assert sum(value is not None for value in got.values()) >= 3, name


def test_reference_storage_round_trips_and_grid_is_exact(data, tmp_path):
    train, test = data["train"], data["test"]
    time, event, risk = data["time"], data["event"], data["risk"]
    reference = SurvivalReference.fit(time[train], event[train], risk[train])
    full = BreslowBaseline.fit(risk[train], time[train], event[train])
    # The grids the metrics and the td-AUC figure used when they read the training rows.
    np.testing.assert_array_equal(
        reference.ibs_grid(), np.unique(np.linspace(*np.percentile(time[train], [10, 90]), 50))
    )
    event_times = time[train][event[train]]
    np.testing.assert_array_equal(
        reference.td_auc_plot_grid(), np.linspace(*np.percentile(event_times, [10, 90]), 20)
    )
    assert reference.max_time == time[train].max()
    needed = np.r_[reference.eval_times, np.median(reference.eval_times), reference.ibs_grid()]
    assert np.isin(needed, reference.baseline.times).all()
    np.testing.assert_allclose(
        reference.survival(risk[test], needed), full.survival(risk[test], needed), rtol=1e-12
    )

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


# --- the null model and the index of prediction accuracy ----------------------------------------


def test_null_model_ibs_and_ipa_against_scikit_survival(data):
    """The stored null model is the training Kaplan-Meier curve on the IBS grid; its IBS on an
    evaluated set is scikit-survival's integrated_brier_score of that curve given to everyone,
    and ipa = 1 - ibs / ibs_null. A reference stored without it gives None and a reason."""
    time, event, risk = data["time"], data["event"], data["risk"]
    train, test = data["train"], data["test"]
    reference = SurvivalReference.fit(time[train], event[train], risk[train])
    grid = reference.ibs_grid()
    km_time, km_surv = kaplan_meier_estimator(event[train], time[train])
    at = np.searchsorted(km_time, grid, side="right") - 1
    expected_curve = np.where(at >= 0, km_surv[np.maximum(at, 0)], 1.0)
    np.testing.assert_allclose(reference.null_survival, expected_curve, rtol=1e-12)
    inside = grid[(grid >= time[test].min()) & (grid < time[test].max())]
    kept = np.isin(grid, inside)
    y_train = Surv.from_arrays(event[train], time[train])
    y_test = Surv.from_arrays(event[test], time[test])
    curves = np.tile(expected_curve[kept], (test.shape[0], 1))
    expected = integrated_brier_score(y_train, y_test, curves, grid[kept])
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


def _numeric_arrays(obj: Any, where: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor, and every list of numbers, anywhere inside ``obj``."""
    if isinstance(obj, torch.Tensor):
        yield where, obj.detach().double().reshape(-1).numpy()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numeric_arrays(value, f"{where}/{key}")
    elif isinstance(obj, list | tuple):
        numbers = [v for v in obj if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(obj):
            yield where, np.asarray(numbers, dtype=float)
        else:
            for k, value in enumerate(obj):
                yield from _numeric_arrays(value, f"{where}[{k}]")
    elif hasattr(obj, "items"):  # OmegaConf / AttributeDict hyper-parameters
        yield from _numeric_arrays(dict(obj.items()), where)


def find_patient_vectors(obj: Any, train_time: np.ndarray, train_event: np.ndarray) -> list[str]:
    """Places in ``obj`` holding the training times or events (as given, sorted, unique) or the
    distinct event times: an array that contains half of the distinct event times, 90 % of the
    distinct times, or equals the event vector."""
    distinct_times = np.unique(train_time)
    event_times = np.unique(train_time[train_event != 0])
    found = []
    for where, values in _numeric_arrays(obj):
        if np.isin(event_times, values).mean() >= 0.5:
            found.append(f"{where}: distinct event times")
        elif np.isin(distinct_times, values).mean() >= 0.9:
            found.append(f"{where}: training times")
        elif values.shape == train_event.shape and np.array_equal(values, train_event):
            found.append(f"{where}: event vector")
    return found


def test_detector_finds_the_training_vectors(data):
    time, event = data["time"][data["train"]], data["event"][data["train"]].astype(float)
    for leak in (time, np.sort(time), np.unique(time), np.unique(time[event > 0]), event):
        assert find_patient_vectors({"a": [{"b": torch.tensor(leak)}]}, time, event)
        assert find_patient_vectors({"a": leak.tolist()}, time, event)
    reference = SurvivalReference.fit(time, event, data["risk"][data["train"]])
    assert find_patient_vectors(reference.to_tensors(), time, event) == []
    assert find_patient_vectors(reference.to_json(), time, event) == []


@pytest.mark.slow  # about 10-15 s: training, predict and two evaluation reports
def test_run_stores_aggregates_only_and_scores_as_before(tmp_path):
    """whas500 end to end: a tiny DeepSurv, an external set with longer follow-up than training;
    checkpoint and schema.json hold no training vector; metrics, survival columns and the
    external evaluation from schema.json alone equal scikit-survival with the training rows."""
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
    train(cfg, run)

    pred = pd.read_csv(run / "predictions.csv")
    rows = pred[pred.split == "train"]
    train_time = rows.period_death.to_numpy(float)
    train_event = rows.label_death.to_numpy(float)
    train_risk = rows.risk_label_death.to_numpy(float)
    external = pred[pred.split == "external"]
    assert (external.label_death.astype(bool) & (external.period_death > train_time.max())).any()

    # No patient-level training data anywhere in the checkpoint or schema.json.
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    raw = torch.load(ckpt, weights_only=True)
    assert "hyper_parameters" in raw and "0.censoring_survival" in raw["nervus_task_state"]
    assert find_patient_vectors(raw, train_time, train_event) == []
    schema = json.loads((run / "schema.json").read_text())
    assert find_patient_vectors(schema, train_time, train_event) == []
    assert not {"train_time", "train_event"} & set(schema["labels"][0])

    # Prediction columns and metrics: the same numbers as with the full training rows.
    label = schema["labels"][0]
    eval_times = np.asarray(label["eval_times"])
    np.testing.assert_allclose(eval_times, np.percentile(train_time[train_event > 0], [25, 50, 75]))
    full = BreslowBaseline.fit(train_risk, train_time, train_event)
    surv_cols = [f"surv_label_death_t{format_time(t)}" for t in eval_times]
    np.testing.assert_allclose(
        pred[surv_cols].to_numpy(), full.survival(pred.risk_label_death, eval_times), atol=TOL
    )
    metrics = json.loads((run / "metrics.json").read_text())
    cutpoints = risk_group_cutpoints(train_risk)
    np.testing.assert_allclose(label["risk_cutpoints"], cutpoints, atol=TOL)
    expected = {}
    for split in ("val", "test", "external"):
        part = pred[pred.split == split]
        expected[split] = sksurv_metrics(
            train_time,
            train_event != 0,
            train_risk,
            part.period_death.to_numpy(float),
            part.label_death.to_numpy(bool),
            part.risk_label_death.to_numpy(float),
            eval_times,
            cutpoints,
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
