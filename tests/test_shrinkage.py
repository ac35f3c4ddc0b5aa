"""Cox log hazards shrunk by their calibration slope on the validation rows
(nervus_lightning.survival.shrinkage): the slope is scikit-survival's, the rules hold, and an
overfitted run gets better-calibrated survival curves with the same ranks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import DataSchema, LabelSpec
from nervus_lightning.module import SHRINKAGE_KEY
from nervus_lightning.outputs import model_summary
from nervus_lightning.survival.shrinkage import (
    MIN_SLOPE_EVENTS,
    SLOPE_FLOOR,
    calibration_slope,
    shrink_factor,
)
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train


def _sample(n: int, spread: float, seed: int = 0):
    """Times from a Cox model whose true log hazard is ``risk / spread``: the slope is about
    1 / spread."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk / spread))
    censor = rng.exponential(2.0, n)
    return risk, np.minimum(time, censor).round(3), (time <= censor).astype(int)


def _partial_log_likelihood(risk, time, event) -> float:
    """Cox partial log-likelihood, Breslow's ties (a direct sum over events)."""
    risk, time, event = (np.asarray(a, np.float64) for a in (risk, time, event))
    return float(
        sum(risk[i] - np.log(np.exp(risk[time >= time[i]]).sum()) for i in np.flatnonzero(event))
    )


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_slope_is_scikit_survivals_cox_coefficient(ties):
    risk, time, event = _sample(300, spread=2.5)
    ours = calibration_slope(risk, time, event, ties)
    theirs = CoxPHSurvivalAnalysis(ties=ties).fit(risk[:, None], Surv.from_arrays(event == 1, time))
    assert ours == pytest.approx(float(theirs.coef_[0]), abs=1e-4)
    assert 0.25 < ours < 0.6  # about 1 / 2.5


def test_factor_rules():
    risk, time, event = _sample(300, spread=2.5)
    shrunk = shrink_factor(risk, time, event, "efron")
    assert shrunk.factor == pytest.approx(shrunk.slope) and shrunk.factor < 1
    # A model that is not too spread (true slope 2) is never stretched.
    assert shrink_factor(*_sample(300, spread=0.5), "efron").factor == 1.0
    # Too few validation events: no slope, nothing changed.
    few = event.copy()
    few[np.flatnonzero(few)[MIN_SLOPE_EVENTS - 1 :]] = 0
    kept = shrink_factor(risk, time, few, "efron")
    assert kept.slope is None and kept.factor == 1.0 and "fewer than" in kept.describe()
    # A model that ranks backwards on validation keeps its ranks, at the floor.
    assert shrink_factor(-risk, time, event, "efron").factor == SLOPE_FLOOR


def test_an_overfitted_run_is_shrunk_with_its_ranks_kept(tmp_path):
    """40 noise inputs and 4 that matter, a wide network trained without early stopping or
    penalty: its log hazards are too spread on validation. With task.shrink (the default) they
    are multiplied by the validation slope: the same ranks (C-index to the digit), risks equal
    to the factor times the unshrunk run's, a better validation IBS, and the checkpoint alone
    predicts the shrunk risks."""
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, 44))
    time = rng.exponential(np.exp(-(x[:, :4] @ np.array([0.8, -0.6, 0.5, 0.4]))))
    censor = rng.exponential(2 * np.median(time), n)
    frame = pd.DataFrame({"uniqID": [f"p{i}" for i in range(n)]})
    frame["split"] = np.repeat(["train", "val", "test"], [240, 80, 80])
    for i in range(x.shape[1]):
        frame[f"input_{i}"] = x[:, i]
    frame["label_death"] = (time <= censor).astype(int)
    frame["period_death"] = np.minimum(time, censor).round(4)
    csv = tmp_path / "data.csv"
    frame.to_csv(csv, index=False)
    common = [
        f"data.csv={csv}",
        "task=survival",
        "model/extractor=none",
        "model.tabular.linear=false",
        "model.ensemble=1",
        "model.tabular.hidden=[128]",
        "model.tabular.dropout=0",
        "optimizer.lr=0.01",
        "early_stopping.patience=null",
        "trainer.max_epochs=60",
        "evaluation.n_bootstrap=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    runs = {}
    for shrink in (True, False):
        run = tmp_path / f"shrink_{shrink}"
        train(train_settings(compose_config([*common, f"task.shrink={str(shrink).lower()}"])), run)
        runs[shrink] = run
    model = json.loads((runs[True] / "model_summary.json").read_text())
    factor = model["shrinkage"]["label_death"]["factor"]
    assert 0 < factor < 0.9, model["shrinkage"]
    assert "calibration of label_death" in dict(model["rows"])
    assert "shrinkage" not in json.loads((runs[False] / "model_summary.json").read_text())
    shrunk, plain = (pd.read_csv(runs[s] / "predictions.csv") for s in (True, False))
    np.testing.assert_allclose(
        shrunk.risk_label_death, factor * plain.risk_label_death, rtol=1e-4, atol=1e-5
    )
    test = shrunk.split == "test"
    c = [
        concordance_index_censored(
            p.label_death[test] == 1, p.period_death[test], p.risk_label_death[test]
        )[0]
        for p in (shrunk, plain)
    ]
    assert c[0] == pytest.approx(c[1], abs=1e-9)
    # The slope is the maximum of the validation partial likelihood along the factor.
    val = shrunk.split == "val"
    likelihood = [
        _partial_log_likelihood(p.risk_label_death[val], p.period_death[val], p.label_death[val])
        for p in (shrunk, plain)
    ]
    assert likelihood[0] > likelihood[1]
    ckpt = json.loads((runs[True] / "summary.json").read_text())["best_checkpoint"]
    assert torch.load(ckpt, weights_only=True)[SHRINKAGE_KEY]["label_death"]["factor"] == factor
    # last.ckpt resumes training: its weights stay as trained, never shrunk.
    last = torch.load(runs[True] / "checkpoints" / "last.ckpt", weights_only=True)
    assert SHRINKAGE_KEY not in last
    same = torch.load(runs[False] / "checkpoints" / "last.ckpt", weights_only=True)
    for name, weight in last["state_dict"].items():
        assert torch.equal(weight, same["state_dict"][name]), name
    predict(ckpt, csv, tmp_path / "pred")
    again = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    np.testing.assert_allclose(again.risk_label_death, shrunk.risk_label_death, atol=1e-6)
    assert "calibration of label_death" in dict(
        json.loads((tmp_path / "pred" / "model_summary.json").read_text())["rows"]
    )


def test_the_calibration_row_tells_the_slope_from_the_kept_starts_factor():
    """A kept linear start scaled on held-out rows and a calibration slope on the validation rows
    estimate one thing differently (risk sets with or without the training rows), so the model
    table says which is which; with a network kept, or a start not scaled, it does not."""
    schema = DataSchema(
        labels=[LabelSpec(name="label_death", task="survival", period="period_death")],
        input_columns=["input_a"],
        input_mean=[0.0],
        input_std=[1.0],
    )
    start = {"penalty": 0.1, "chosen_on": "val", "tried": 5, "strongest": 1, "weakest": 0.01}

    def row(scale: float, kept: bool) -> str:
        module = SimpleNamespace(
            schema=schema,
            hparams={},
            linear_choices={"label_death": {**start, "scale": scale}},
            shrinkage={"label_death": {"slope": 1.28, "factor": 1.0, "val_events": 26}},
        )
        summary = model_summary(
            module,
            epochs_run=None,
            best_epoch=None,
            monitor="val_loss",
            mode="min",
            best_score=None,
            checkpoint=None,
            linear_start=kept,
        )
        return dict(summary["rows"])["calibration of label_death"]

    said = row(1.19, kept=True)
    assert said.startswith("not shrunk: calibration slope on val 1.28 (not below 1)")
    assert "the kept start's factor, 1.19, came from the partial likelihood" in said
    assert "factor" not in row(1.19, kept=False) and "factor" not in row(1.0, kept=True)
