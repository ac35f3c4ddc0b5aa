"""Survival end to end: CSV checks, image-only and fused DeepSurv, several endpoints, metrics equal
to direct scikit-survival calls, predict from the checkpoint alone."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.util import Surv

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.survival.baseline import BreslowBaseline
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.tasks import build_task
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train


def _train(csv, run, overrides):
    cfg = compose_config([f"data.csv={csv}", "task=survival", *FAST, *overrides])
    return train(train_settings(cfg), run)


def _error(csv) -> str:
    with pytest.raises(NervusInputError) as info:
        NervusDataModule(csv, task="survival")
    return str(info.value)


@pytest.mark.parametrize(
    "problem,expected",
    [
        ({(3, "period_death"): -1.0}, "negative"),
        ({(3, "period_death"): np.nan}, "missing"),
        ({(3, "label_death"): 0.5}, "0 (censored) or 1"),  # 2 would be a cause code
    ],
)
def test_bad_survival_values(dataset, problem, expected):
    csv = dataset(task="survival", images=False)
    msg = _error(_edit_rows(csv, problem))
    assert expected in msg and "line 5" in msg


def _assert_survival_curves(pred, label, surv_cols):
    """Probabilities in [0, 1], non-increasing in time, and lower for a higher risk."""
    surv = pred[surv_cols].to_numpy()
    assert ((surv >= 0) & (surv <= 1)).all()
    assert (np.diff(surv, axis=1) <= 1e-12).all()
    by_risk = surv[np.argsort(pred[f"risk_{label}"].to_numpy(), kind="stable")]
    assert (np.diff(by_risk, axis=0) <= 1e-12).all()


def _edit_rows(csv, problem):
    df = pd.read_csv(csv)
    for (row, col), value in problem.items():
        df[col] = df[col].astype(float)
        df.loc[row, col] = value
    df.to_csv(csv, index=False)
    return csv


def test_endpoint_without_time_and_time_without_endpoint(dataset):
    csv = dataset(task="survival", images=False)
    df = pd.read_csv(csv)
    df.assign(label_rfs=df.label_death).to_csv(csv, index=False)
    assert "'label_rfs' has no time column" in _error(csv)
    df.assign(period_rfs=df.period_death).to_csv(csv, index=False)
    msg = _error(csv)
    assert "period_rfs" in msg and "no matching event label" in msg


def test_no_events_in_training(dataset):
    csv = dataset(task="survival", images=False)
    df = pd.read_csv(csv)
    df.loc[df.split == "train", "label_death"] = 0
    df.to_csv(csv, index=False)
    assert "no events" in _error(csv)


def test_no_events_in_validation(dataset):
    """All-censored validation rows make every validation loss 0: the run would pick its
    penalty, epochs and checkpoint blind, so it stops before training and names the rows."""
    csv = dataset(task="survival", images=False)
    df = pd.read_csv(csv)
    val = df.index[df.split == "val"]
    df.loc[val, "label_death"] = 0
    df.to_csv(csv, index=False)
    msg = _error(csv)
    assert "'label_death' has no event in the validation split" in msg
    assert f"lines {val[0] + 2}, {val[1] + 2}" in msg and "split=val" in msg
    # One event there is evidence: no error.
    df.loc[val[0], "label_death"] = 1
    df.to_csv(csv, index=False)
    NervusDataModule(csv, task="survival")


def test_small_batches_warn(dataset):
    csv = dataset(task="survival", images=False)
    df = pd.read_csv(csv)
    train = df.index[df.split == "train"]
    df.loc[train, "label_death"] = 0
    df.loc[train[:2], "label_death"] = 1
    df.to_csv(csv, index=False)
    labels = NervusDataModule(csv, task="survival").schema.labels
    train_rows = df[df.split == "train"]
    with pytest.warns(UserWarning, match="no event with probability"):
        build_task("survival", labels).check_batches(train_rows, 4)
    # Discrete-time models learn from censored cases too: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_task("survival", labels, model="pmf").check_batches(train_rows, 4)


@pytest.mark.parametrize("inputs", [["model/tabular=none"], []], ids=["image", "fused"])
def test_survival_end_to_end_and_predict_from_checkpoint(dataset, tmp_path, inputs):
    csv = dataset(task="survival", n=64, extra_splits={"external": 8})
    run = tmp_path / "run"
    _train(csv, run, ["trainer.max_epochs=2", *inputs])
    pred = pd.read_csv(run / "predictions.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    schema = json.loads((run / "schema.json").read_text())
    label = schema["labels"][0]
    times = label["eval_times"]
    surv_cols = [c for c in pred.columns if c.startswith("surv_label_death_t")]
    assert len(surv_cols) == len(times) == 3
    assert list(pred.uniqID) == list(pd.read_csv(csv).uniqID)
    assert np.isfinite(pred.risk_label_death).all()
    _assert_survival_curves(pred, "label_death", surv_cols)
    curve = pd.read_csv(run / "learning_curve.csv")
    assert list(curve.epoch) == [0, 1]
    assert np.isfinite(curve[["train_loss", "val_loss"]].to_numpy()).all()
    train_rows = pred[pred.split == "train"]
    event_times = train_rows.period_death[train_rows.label_death == 1]
    exact = np.percentile(event_times, [25, 50, 75])  # rounded: no patient's time
    np.testing.assert_allclose(times, [float(f"{t:.2g}") for t in exact])
    # Survival probabilities follow from the stored Breslow baseline fitted on training risks:
    # the full estimate at each stored time, each step holding >= 10 training events.
    reference = SurvivalReference.from_json(label)
    base = BreslowBaseline.fit(
        train_rows.risk_label_death, train_rows.period_death, train_rows.label_death
    )
    stored = reference.baseline.times
    assert stored.size >= 1
    np.testing.assert_allclose(reference.baseline.cumhaz, base.baseline_cumulative_hazard(stored))
    events = [(event_times <= t).sum() for t in stored]
    assert (np.diff(np.r_[0, events]) >= 10).all()
    np.testing.assert_allclose(
        pred[surv_cols].to_numpy(),
        reference.survival(pred.risk_label_death.to_numpy(), times),
        rtol=1e-5,
    )
    # Harrell's C equals scikit-survival called directly on the test rows.
    test = pred[pred.split == "test"]
    direct = concordance_index_censored(
        test.label_death == 1, test.period_death, test.risk_label_death
    )[0]
    assert metrics["test"]["label_death"]["c_index"] == pytest.approx(direct)
    assert {"c_index_uno", "td_auc_mean", "ibs", "logrank_p"} <= set(metrics["test"]["label_death"])
    # The index of prediction accuracy: against the training Kaplan-Meier curve.
    scores = metrics["test"]["label_death"]
    assert scores["ipa"] == pytest.approx(1 - scores["ibs"] / scores["ibs_null"])
    assert (
        "0.null_survival"
        in torch.load(
            json.loads((run / "summary.json").read_text())["best_checkpoint"], weights_only=True
        )["nervus_task_state"]
    )
    assert (run / "km_label_death_test.png").is_file()
    # Predict with the checkpoint alone: same risks and survival columns as at test time.
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    raw = torch.load(ckpt, weights_only=True)
    assert "0.baseline_cumhaz" in raw["nervus_task_state"]
    out = tmp_path / "pred"
    predict(ckpt, csv, out)
    again = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(again.risk_label_death, pred.risk_label_death, atol=1e-6)
    np.testing.assert_allclose(again[surv_cols].to_numpy(), pred[surv_cols].to_numpy(), atol=1e-6)
    # An external CSV alone is evaluated with the training aggregates kept in the checkpoint.
    external = pd.read_csv(csv)
    external = external[external.split == "external"].assign(
        imgpath=lambda d: [str(csv.parent / p) for p in d.imgpath]
    )
    ext_csv = tmp_path / "ext.csv"
    external.to_csv(ext_csv, index=False)
    predict(ckpt, ext_csv, tmp_path / "ext_out", evaluation={"n_bootstrap": 10})
    report = pd.read_csv(tmp_path / "ext_out" / "evaluation" / "metrics.csv")
    c_index = report[(report.metric == "c_index") & (report.group == "all")]
    assert c_index.value.iloc[0] == pytest.approx(metrics["external"]["label_death"]["c_index"])


def test_two_endpoints_and_td_auc_matches_sksurv(dataset, tmp_path):
    csv = dataset(task="survival", n=80, images=False)
    df = pd.read_csv(csv)
    rng = np.random.default_rng(1)
    df["label_rfs"] = (rng.random(len(df)) < 0.6).astype(int)
    df["periods_rfs"] = rng.exponential(10, len(df)) * (1 + df.input_a.clip(0, None))
    # The longest follow-up is a censored training case.
    df.loc[0, ["split", "label_rfs", "periods_rfs"]] = ["train", 0, 1000.0]
    df.to_csv(csv, index=False)
    run = tmp_path / "run"
    _train(
        csv,
        run,
        [
            "model/extractor=none",
            "trainer.max_epochs=2",
            "task.ties=breslow",
            "task.eval_times=[5.0,10.0]",
        ],
    )
    pred = pd.read_csv(run / "predictions.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"risk_label_death", "risk_label_rfs", "surv_label_rfs_t5", "surv_label_rfs_t10"} <= set(
        pred.columns
    )
    for label in ("label_death", "label_rfs"):
        _assert_survival_curves(pred, label, [f"surv_{label}_t5", f"surv_{label}_t10"])
    val = pred[pred.split == "val"]
    # survival_train = the evaluated rows: their own censoring curve weighs the AUC.
    y_val = Surv.from_arrays(val.label_rfs == 1, val.periods_rfs)
    auc, _ = cumulative_dynamic_auc(y_val, y_val, val.risk_label_rfs, [5.0, 10.0])
    got = metrics["val"]["label_rfs"]
    assert [got["td_auc_t5"], got["td_auc_t10"]] == pytest.approx(list(auc))
    curve = pd.read_csv(run / "learning_curve.csv")
    assert {"train_loss_label_death", "val_loss_label_rfs"} <= set(curve.columns)


def test_weighted_sampler_balances_events(dataset):
    csv = dataset(task="survival", n=200, images=False)
    df = pd.read_csv(csv)
    train = df.index[df.split == "train"]
    df.loc[train, "label_death"] = (np.arange(len(train)) % 5 == 0).astype(int)  # 20 % events
    df.to_csv(csv, index=False)
    dm = NervusDataModule(csv, task="survival", sampler="weighted", batch_size=50)
    loader = dm.train_dataloader()
    events = []
    for epoch in range(40):  # the draw is a function of (seed, epoch)
        loader.sampler.set_epoch(epoch)
        events += [b["target"][:, 0] for b in loader]
    events = torch.cat(events)
    assert events.mean().item() == pytest.approx(0.5, abs=0.03)
