"""Discrete-time survival models (task.model=logistic_hazard | pmf | deephit): losses, curves and
metrics equal pycox's; end to end through the command line; predict from the checkpoint alone."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, assert_loss_sees_the_global_batch, compose_config
from pycox.evaluation import EvalSurv
from pycox.models import PMF, DeepHitSingle, LogisticHazard
from pycox.models.data import pair_rank_mat
from pycox.models.loss import DeepHitSingleLoss, nll_logistic_hazard, nll_pmf
from pycox.models.utils import make_subgrid
from pycox.preprocessing.label_transforms import LabTransDiscreteTime
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import LabelSpec, NervusInputError
from nervus_lightning.survival import discrete
from nervus_lightning.survival.metrics import format_time, ibs_time_grid
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.tasks.survival import SurvivalTask
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train

SIMULATIONS = Path(__file__).resolve().parents[1] / "benchmarks" / "simulations.py"

PYCOX_CLASSES = {"logistic_hazard": LogisticHazard, "pmf": PMF, "deephit": DeepHitSingle}


def _survival_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(10, n), 2) + 0.01
    event = (rng.random(n) < 0.7).astype(np.float64)
    return time, event


def _identity_net(m: int) -> torch.nn.Linear:
    net = torch.nn.Linear(m, m, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(m))
    return net


def _task(model: str, num_durations: int = 6) -> SurvivalTask:
    spec = LabelSpec(name="label_death", task="survival", period="period_death")
    return SurvivalTask([spec], model=model, num_durations=num_durations, alpha=0.3, sigma=0.5)


@pytest.mark.parametrize("model", discrete.DISCRETE_MODELS)
def test_loss_equals_pycox_on_the_same_batch(model):
    time, event = _survival_data()
    task = _task(model)
    task.fit_before_training(pd.DataFrame({"period_death": time, "label_death": event}))
    # The grid is pycox's own label transform of the model class, fitted on the same split,
    # its cut points rounded to the time step (1 here: times up to about 60), the last one up:
    # none is a patient's time.
    labtrans = PYCOX_CLASSES[model].label_transform(6, scheme="quantiles")
    labtrans.fit(time.astype(np.float32).astype(np.float64), event)
    pycox_cuts = labtrans.cuts.astype(np.float64)
    rounded = np.r_[np.round(pycox_cuts[:-1]), np.ceil(pycox_cuts[-1])]
    np.testing.assert_array_equal(task.cuts[0], rounded)
    assert not np.isin(task.cuts[0][1:], time).any()
    assert task.head_size(0) == labtrans.out_features == 6
    labtrans = LabTransDiscreteTime(task.cuts[0])  # pycox's transform on the stored grid

    batch_time = np.r_[time[:20], np.nan, 1e6]  # unknown time (left out), beyond the grid
    batch_event = np.r_[event[:20], 1.0, 1.0]
    phi = torch.randn(len(batch_time), 6, generator=torch.Generator().manual_seed(1))
    batch = {
        "target": torch.tensor(batch_event, dtype=torch.float32)[:, None],
        "time": torch.tensor(batch_time, dtype=torch.float32)[:, None],
    }
    got = task.loss(phi, batch, 0)

    known = ~np.isnan(batch_time)
    # A time beyond the last cut is censored there (pycox's transform).
    idx_b, ev_b = labtrans.transform(batch_time[known].astype(np.float32), batch_event[known])
    assert idx_b[-1] == 5 and ev_b[-1] == 0
    phi_k = phi[torch.from_numpy(known)]
    idx_t, ev_t = torch.from_numpy(idx_b), torch.from_numpy(ev_b)
    if model == "logistic_hazard":
        expected = nll_logistic_hazard(phi_k, idx_t, ev_t)
    elif model == "pmf":
        expected = nll_pmf(phi_k, idx_t, ev_t)
    else:
        rank = torch.from_numpy(pair_rank_mat(idx_b, ev_b))
        expected = DeepHitSingleLoss(0.3, 0.5)(phi_k, idx_t, ev_t, rank)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("model", discrete.DISCRETE_MODELS)
def test_curves_equal_pycox_monotone_and_in_unit_interval(model):
    m = 7
    cuts = np.array([0.0, 1.0, 2.5, 4.0, 7.0, 9.0, 12.0])
    phi = torch.randn(50, m, generator=torch.Generator().manual_seed(2)) * 4
    phi[0] = 40.0  # extreme outputs stay finite and in [0, 1]
    phi[1] = -40.0
    surv = discrete.grid_survival(model, phi).numpy().astype(np.float64)
    pycox_model = PYCOX_CLASSES[model](_identity_net(m), duration_index=cuts)
    expected = pycox_model.predict_surv(phi.numpy())
    np.testing.assert_allclose(surv, expected, atol=2e-6)
    assert ((surv >= 0) & (surv <= 1)).all()
    assert (np.diff(surv, axis=1) <= 0).all()
    # Between cuts: pycox's interpolation with constant density (linear survival).
    sub = pycox_model.interpolate(10, scheme="const_pdf").predict_surv_df(phi.numpy())
    inner = discrete.interpolate_survival(surv, cuts, sub.index.to_numpy())
    np.testing.assert_allclose(inner, sub.to_numpy().T, atol=2e-6)
    beyond = discrete.interpolate_survival(surv, cuts, [12.0, 30.0])
    np.testing.assert_array_equal(beyond[:, 0], beyond[:, 1])
    # Risk = 1 - RMST / grid length, the RMST integrating the interpolated curve.
    fine = np.linspace(0, 12, 120001)
    rmst = np.trapezoid(discrete.interpolate_survival(surv, cuts, fine), fine, axis=1)
    np.testing.assert_allclose(discrete.risk_score(surv, cuts), 1 - rmst / 12, atol=1e-7)


@pytest.mark.parametrize("model", discrete.DISCRETE_MODELS)
def test_start_is_the_kaplan_meier_curve_and_the_likelihood_maximum(model):
    time, event = _survival_data(200, seed=3)
    cuts = discrete.fit_grid(time, event, 8)
    phi = discrete.start_logits(model, cuts, time, event)
    surv = discrete.grid_survival(model, torch.from_numpy(phi)[None].float())[0].numpy()
    # scikit-survival's Kaplan-Meier curve of the discretised times (pycox's transform: events
    # moved to the next cut, censorings to the previous one), read at the cuts.
    idx, events = discrete.discretize(cuts, time, event)
    km_time, km_surv = kaplan_meier_estimator(events != 0, cuts[idx])
    expected = np.r_[1.0, km_surv][np.searchsorted(km_time, cuts, side="right")]
    np.testing.assert_allclose(surv, expected, atol=2 * discrete.HAZARD_FLOOR)
    # ... close to the Kaplan-Meier curve of the times themselves,
    raw_time, raw_surv = kaplan_meier_estimator(event != 0, time)
    raw = np.r_[1.0, raw_surv][np.searchsorted(raw_time, cuts, side="right")]
    np.testing.assert_allclose(surv, raw, atol=0.05)
    # ... and the maximum of pycox's likelihood for a head without inputs (zero gradient).
    logits = torch.tensor(np.tile(phi, (len(time), 1)), requires_grad=True)
    nll = nll_logistic_hazard if model == "logistic_hazard" else nll_pmf
    nll(logits, torch.from_numpy(idx), torch.from_numpy(events).double()).backward()
    np.testing.assert_allclose(logits.grad.sum(0).numpy(), 0.0, atol=2 * discrete.HAZARD_FLOOR)


def test_model_table_line_names_the_loss_and_the_start():
    assert discrete.describe_model("deephit", 20, None, None, 0.1) == (
        "DeepHit on 20 time cuts; loss: 0.2 × likelihood + 0.8 × rank loss (sigma 0.1) "
        "(task.alpha unset); started at the training Kaplan-Meier curve"
    )
    assert discrete.describe_model("deephit", 20, 3, 0.5, 0.1).startswith(
        "DeepHit with 3 competing causes on 20 time cuts; loss: 0.5 × likelihood"
    )
    assert discrete.describe_model("logistic_hazard", 8, None, None, 0.1) == (
        "logistic hazard on 8 time cuts; started at the training Kaplan-Meier curve"
    )


def _crossing_hazards(n: int, seed: int) -> pd.DataFrame:
    spec = importlib.util.spec_from_file_location("simulations", SIMULATIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.crossing_hazards(n, seed)


def test_logistic_hazard_defaults_start_no_worse_than_kaplan_meier(tmp_path):
    """Issue 19: with the user's defaults (``task.model=logistic_hazard`` and nothing else) a
    head that started at zero (hazard 1/2 in every interval) was still far below the data after
    the default 150 full-batch steps: test Brier scores worse than Kaplan-Meier's. Started at
    the training Kaplan-Meier curve, a few epochs leave it at least as good as that curve."""
    csv = tmp_path / "crossing.csv"
    _crossing_hazards(600, seed=1).to_csv(csv, index=False)
    cfg = compose_config(
        [
            f"data.csv={csv}",
            "task=survival",
            "model/extractor=none",
            "task.model=logistic_hazard",
            "model.ensemble=1",
            "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false",
            "evaluation.n_bootstrap=20",
        ]
    )
    train(train_settings(cfg), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("train", "val"):
        got = metrics[split]["label_death"]
        assert got["ipa"] > -0.01, (split, got["ibs"], got["ibs_null"])
    # The first epoch's loss is the Kaplan-Meier curve's (about 2.2 here), not a flat 1/2
    # hazard's (about 5).
    curve = pd.read_csv(tmp_path / "run" / "learning_curve.csv")
    assert curve.val_loss.iloc[0] < 3.0


@pytest.fixture
def pycox_ibs(monkeypatch):
    """pycox 0.3.0's integrated Brier score calls scipy.integrate.simps (removed in SciPy 1.14):
    give it simps' successor so that the direct call runs."""
    import scipy.integrate

    monkeypatch.setattr(scipy.integrate, "simps", scipy.integrate.simpson, raising=False)


def test_pycox_metrics_equal_a_direct_evalsurv_call(pycox_ibs):
    rng = np.random.default_rng(3)
    time, event = _survival_data(80, seed=3)
    cuts = np.array([0.0, 2.0, 5.0, 9.0, 14.0, 25.0])
    surv = np.sort(rng.random((80, 6)), axis=1)[:, ::-1]
    grid = np.linspace(2, 15, 10)
    got = discrete.pycox_metrics(surv, cuts, time, event, grid)
    ev = EvalSurv(pd.DataFrame(surv.T, index=cuts), time, event, censor_surv="km")
    assert got["c_index_antolini"] == pytest.approx(ev.concordance_td("antolini"), rel=1e-12)
    assert got["ibs_pycox"] == pytest.approx(ev.integrated_brier_score(grid), rel=1e-12)
    reasons: dict[str, str] = {}
    none = discrete.pycox_metrics(surv, cuts, time, 0 * event, grid, reasons)
    assert none == {"c_index_antolini": None, "ibs_pycox": None} and set(reasons) == set(none)


def test_bad_options_and_too_fine_grid():
    with pytest.raises(NervusInputError, match="task.model"):
        _task("weibull")
    with pytest.raises(NervusInputError, match="task.num_durations"):
        _task("pmf", num_durations=1)
    time, event = _survival_data(10)
    task = _task("pmf", num_durations=30)
    frame = pd.DataFrame({"period_death": time, "label_death": event})
    with pytest.raises(NervusInputError, match=r"label_death.*num_durations=30.*lower"):
        task.fit_before_training(frame)


def test_grid_with_tied_times_still_has_num_durations_cuts():
    rng = np.random.default_rng(4)
    time = rng.integers(1, 15, 80).astype(np.float64)  # heavy ties: pycox's cuts coincide
    event = (rng.random(80) < 0.7).astype(np.float64)
    with pytest.warns(UserWarning, match="cuts are not unique"):
        assert len(LabTransDiscreteTime(10, scheme="quantiles").fit(time, event).cuts) < 10
    cuts = discrete.fit_grid(time, event, 10)
    assert len(cuts) == 10 and cuts[0] == 0 and cuts[-1] == time.max()
    # They are pycox's cut points of some finer Kaplan-Meier level grid (whole numbers here,
    # so rounding them to the time step, 0.2, changes nothing).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = [
            LabTransDiscreteTime(n, scheme="quantiles").fit(time, event).cuts
            for n in range(10, 200)
        ]
    assert any(len(c) == 10 and np.array_equal(c, cuts) for c in candidates)


@pytest.mark.parametrize("model", discrete.DISCRETE_MODELS)
def test_a_batch_without_an_event_inside_the_grid_is_discretised_as_pycox_does(model):
    # pycox 0.3.0's transform fails on such a batch (e.g. a validation batch, all censored).
    cuts = np.array([0.0, 2.0, 5.0, 9.0])
    time, event = np.array([1.0, 3.0, 12.0]), np.array([0.0, 0.0, 1.0])  # event beyond the grid
    # pycox's transform treats each case alone: beside an event inside the grid it runs.
    expected = LabTransDiscreteTime(cuts).transform(np.append(time, 4.0), np.append(event, 1.0))
    idx, events = discrete.discretize(cuts, time, event)
    assert idx.tolist() == expected[0][:-1].tolist() == [0, 1, 3]  # censored: previous cut
    assert events.tolist() == expected[1][:-1].tolist() == [0, 0, 0]
    task = _task(model)
    task.cuts[0] = cuts
    batch = {"target": torch.tensor(event)[:, None], "time": torch.tensor(time)[:, None]}
    assert torch.isfinite(task.loss(torch.zeros(3, 4), batch, 0))


def _check_run(run, csv, label="label_death"):
    """Curves monotone in [0, 1]; metrics equal scikit-survival and pycox on the same arrays."""
    pred = pd.read_csv(run / "predictions.csv")
    schema = json.loads((run / "schema.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    spec = next(s for s in schema["labels"] if s["name"] == label)
    cuts = np.asarray(spec["grid"])
    grid_cols = [discrete.grid_column(label, k) for k in range(len(cuts))]
    surv = pred[grid_cols].to_numpy()
    assert ((surv >= 0) & (surv <= 1)).all() and (np.diff(surv, axis=1) <= 0).all()
    eval_cols = [f"surv_{label}_t{format_time(t)}" for t in spec["eval_times"]]
    at_eval = pred[eval_cols].to_numpy()
    np.testing.assert_allclose(
        at_eval, discrete.interpolate_survival(surv, cuts, spec["eval_times"]), atol=1e-9
    )
    assert (np.diff(at_eval, axis=1) <= 0).all()
    np.testing.assert_allclose(pred[f"risk_{label}"], discrete.risk_score(surv, cuts), atol=1e-9)
    # The grid comes from the training rows only.
    train_rows = pred[pred.split == "train"]
    period = spec["period"]
    fitted = discrete.fit_grid(train_rows[period], train_rows[label], len(cuts))
    np.testing.assert_allclose(cuts, fitted, rtol=1e-6)
    test = pred[pred.split == "test"]
    got = metrics["test"][label]
    assert got["c_index"] == pytest.approx(
        concordance_index_censored(test[label] == 1, test[period], test[f"risk_{label}"])[0]
    )
    # pycox evaluates discrete models on their curves interpolated 10 points per interval.
    times = np.asarray(make_subgrid(cuts, 10), dtype=np.float64)
    curves = discrete.interpolate_survival(test[grid_cols].to_numpy(), cuts, times)
    ev = EvalSurv(
        pd.DataFrame(curves.T, index=times),
        test[period].to_numpy(),
        test[label].to_numpy(),
        censor_surv="km",
    )
    assert got["c_index_antolini"] == pytest.approx(ev.concordance_td("antolini"))
    reference = SurvivalReference.from_json(spec)
    ibs_grid = ibs_time_grid(reference, test[period].to_numpy())
    assert got["ibs_pycox"] == pytest.approx(ev.integrated_brier_score(ibs_grid))
    # scikit-survival's ibs and the calibration read the model's own curves, not a Breslow fit.
    own = discrete.interpolate_survival(test[grid_cols].to_numpy(), cuts, ibs_grid)
    # survival_train = the evaluated rows: censoring weights from their own Kaplan-Meier curve.
    test_y = Surv.from_arrays(test[label] == 1, test[period])
    assert got["ibs"] == pytest.approx(
        integrated_brier_score(test_y, test_y, own, ibs_grid), rel=1e-9
    )
    calibration = pd.read_csv(run / "evaluation" / f"survival_calibration_{label}.csv")
    bins = calibration[(calibration.split == "test") & (calibration.group == "all")]
    t = float(np.median(spec["eval_times"]))
    at_t = discrete.interpolate_survival(test[grid_cols].to_numpy(), cuts, [t])[:, 0]
    assert np.average(bins.predicted, weights=bins.n) == pytest.approx(at_t.mean())
    return pred


@pytest.mark.slow
def test_logistic_hazard_through_the_command_line_and_predict_alone(dataset, tmp_path, pycox_ibs):
    csv = dataset(task="survival", n=64, images=False)
    args = [
        f"data.csv={csv}",
        "task=survival",
        "task.model=logistic_hazard",
        "task.num_durations=8",
        *[a for a in FAST if not a.startswith("trainer.max_epochs")],
        "model/extractor=none",
        "trainer.max_epochs=2",
        "hydra.run.dir=run",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "nervus_lightning", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    pred = _check_run(run, csv)
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    state = torch.load(ckpt, weights_only=True)["nervus_task_state"]
    assert state["grid.0"].shape == (8,)
    predict(ckpt, csv, tmp_path / "pred")
    again = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    surv_cols = [c for c in pred.columns if c.startswith("surv_label_death")]
    assert len(surv_cols) == 8 + 3
    np.testing.assert_allclose(again[surv_cols], pred[surv_cols], atol=1e-6)
    np.testing.assert_allclose(again.risk_label_death, pred.risk_label_death, atol=1e-6)


@pytest.mark.parametrize("model", ["pmf", "deephit"])
def test_tabular_end_to_end(dataset, tmp_path, model, pycox_ibs):
    csv = dataset(task="survival", n=64, images=False)
    overrides = [f"task.model={model}", "task.num_durations=8", "model/extractor=none"]
    cfg = compose_config([f"data.csv={csv}", "task=survival", *FAST, *overrides])
    train(train_settings(cfg), tmp_path / "run")
    _check_run(tmp_path / "run", csv)


def test_two_endpoints_and_fused_image_table(dataset, tmp_path, pycox_ibs):
    csv = dataset(task="survival", n=64)
    df = pd.read_csv(csv)
    rng = np.random.default_rng(1)
    df["label_rfs"] = (rng.random(len(df)) < 0.6).astype(int)
    df["period_rfs"] = np.round(rng.exponential(10, len(df)), 2) + 0.01
    df.to_csv(csv, index=False)
    overrides = ["task.model=logistic_hazard", "task.num_durations=6", "model/extractor=resnet18"]
    cfg = compose_config([f"data.csv={csv}", "task=survival", *FAST, *overrides])
    train(train_settings(cfg), tmp_path / "run")
    for label in ("label_death", "label_rfs"):
        _check_run(tmp_path / "run", csv, label)
    schema = json.loads((tmp_path / "run" / "schema.json").read_text())
    assert [s["survival_model"] for s in schema["labels"]] == ["logistic_hazard"] * 2
    curve = pd.read_csv(tmp_path / "run" / "learning_curve.csv")
    assert {"train_loss_label_death", "val_loss_label_rfs"} <= set(curve.columns)


def test_event_that_is_not_0_or_1_is_a_clear_error(dataset, tmp_path):
    csv = dataset(task="survival", n=32, images=False)
    df = pd.read_csv(csv)
    df["label_death"] = df["label_death"].astype(float)
    df.loc[3, "label_death"] = 0.5  # neither 0/1 nor a cause code 1..K
    df.to_csv(csv, index=False)
    cfg = compose_config(
        [f"data.csv={csv}", "task=survival", "task.model=deephit", *FAST, "model/extractor=none"]
    )
    with pytest.raises(NervusInputError, match=r"'label_death' must be 0 \(censored\) or 1"):
        train(train_settings(cfg), tmp_path / "run")


@pytest.mark.slow
def test_deephit_rank_loss_sees_the_global_batch_with_several_processes():
    time, event = _survival_data(16, seed=5)
    task = _task("deephit")
    task.fit_before_training(pd.DataFrame({"period_death": time, "label_death": event}))
    phi = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    time_, event_ = torch.tensor(time).float()[:, None], torch.tensor(event).float()[:, None]
    assert_loss_sees_the_global_batch(task, phi, time_, event_, port=29531)
