"""The report says what was trained (model summary, chosen epoch marked on the learning curves)
and in which unit survival times are (``data.time_unit``, stored with the model)."""

from __future__ import annotations

import json
import re
import warnings
from unittest.mock import patch

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config

from nervus_lightning.callbacks import plot_learning_curve
from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.report_page import _curve_caption
from nervus_lightning.evaluation.survival_calibration import (
    plot_survival_calibration,
    survival_calibration_table,
)
from nervus_lightning.survival.plots import plot_km_risk_group_panels
from nervus_lightning.tasks.survival.evaluation import CURVE_NOTE
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train


def test_time_unit_is_checked_and_stored_in_the_schema(dataset):
    csv = dataset(task="survival", images=False)
    module = NervusDataModule(csv, task="survival", use_images=False, time_unit="days")
    assert module.schema.time_unit == "days"
    assert module.schema.to_dict()["time_unit"] == "days"
    assert NervusDataModule(csv, task="survival", use_images=False).schema.time_unit is None
    with pytest.raises(NervusInputError, match="data.time_unit"):
        NervusDataModule(csv, task="survival", use_images=False, time_unit="dyas")


def test_survival_figures_name_the_time_unit():
    rng = np.random.default_rng(0)
    time = rng.exponential(300, 200)
    event = rng.integers(0, 2, 200)
    groups = rng.integers(0, 2, 200)
    fig = plot_km_risk_group_panels({"test": (time, event, groups)}, time_unit="days")
    assert "Time (days)" in [ax.get_xlabel() for ax in fig.axes]
    fig = plot_km_risk_group_panels({"test": (time, event, groups)})
    assert "Time" in [ax.get_xlabel() for ax in fig.axes]
    table = survival_calibration_table(time, event, rng.uniform(size=200), 200.0)
    fig = plot_survival_calibration({"test": table}, 200.0, time_unit="days")
    assert fig.axes[0].get_xlabel() == "Predicted survival at t = 200 days"


def test_a_one_bin_calibration_figure_draws_without_a_pandas_warning():
    """A small split gives one bin with an observed value; matplotlib read a one-row Series
    with float(), which pandas deprecates (a FutureWarning printed in users' runs)."""
    table = pd.DataFrame(
        {"bin": [1], "n": [12], "events": [4], "predicted": [0.7], "observed": [0.65],
         "observed_lower": [0.4], "observed_upper": [0.85]}
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        fig = plot_survival_calibration({"test": table}, 100.0)
    assert fig.axes[0].get_title() == "test (1 bin of ~12 cases)"


def test_learning_curves_mark_the_chosen_epoch():
    curve = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [3, 2, 1], "val_loss": [2, 1, 1.5]})
    fig = plots.plot_learning_curves(curve, best_epoch=1)
    marked = [line for line in fig.axes[0].get_lines() if line.get_label() == "checkpoint chosen"]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [1, 1]
    assert fig.axes[0].get_lines()[0].get_marker() == "."


def test_a_long_learning_curve_is_drawn_without_a_marker_per_epoch(tmp_path):
    """Hundreds of epochs (the tabular survival cap is 600) as plain lines, in the report and in
    the run folder's learning_curve.png: a marker per epoch would thicken them into bands."""
    epochs = np.arange(600)
    curve = pd.DataFrame({"epoch": epochs, "train_loss": 5 - epochs / 600, "val_loss": 4.0})
    fig = plots.plot_learning_curves(curve, best_epoch=550)
    assert {line.get_marker() for line in fig.axes[0].get_lines()} == {"None"}
    lines = []
    with patch("matplotlib.axes.Axes.plot", side_effect=lambda *a, **k: lines.append(k)):
        plot_learning_curve(curve, tmp_path / "curve.png")
    assert [k["marker"] for k in lines] == [None, None]
    lines.clear()
    with patch("matplotlib.axes.Axes.plot", side_effect=lambda *a, **k: lines.append(k)):
        plot_learning_curve(curve.head(20), tmp_path / "short.png")
    assert [k["marker"] for k in lines] == ["o", "o"]


@pytest.mark.parametrize("notes", [[CURVE_NOTE], []])
def test_the_curve_caption_says_why_a_cox_loss_differs_between_splits(notes):
    """The labels' tasks bring their own sentence (survival's, as the survival section sets
    it; a survival run's page is checked above); without one the caption has none."""
    caption = _curve_caption({"best_epoch": 3}, None, notes)
    assert caption.count("compare each curve's shape") == len(notes)


def test_training_report_shows_the_model_and_the_time_unit(dataset, tmp_path):
    csv = dataset(task="survival", n=64)
    run = tmp_path / "run"
    cfg = compose_config(
        [f"data.csv={csv}", "task=survival", *FAST, "trainer.max_epochs=3", "data.time_unit=months"]
    )
    train(train_settings(cfg), run)
    schema = json.loads((run / "schema.json").read_text())
    assert schema["time_unit"] == "months"
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["schema"]["time_unit"] == "months"

    summary = json.loads((run / "model_summary.json").read_text())
    rows = dict(summary["rows"])
    assert summary["best_epoch"] == checkpoint["epoch"]
    curve = pd.read_csv(run / "learning_curve.csv")
    assert curve.loc[curve.val_loss.idxmin(), "epoch"] == checkpoint["epoch"]
    assert rows["epochs run"] == "3"
    assert rows["checkpoint chosen"].startswith(f"epoch {checkpoint['epoch']}, lowest val_loss")
    assert f"{curve.val_loss.min():.4g}" in rows["checkpoint chosen"]
    assert rows["image extractor"] == "small_cnn"
    assert rows["tabular input"].startswith("2 column(s): input_a, input_b")
    assert "mixer" in rows and "label_death" in rows["heads"]

    page = (run / "evaluation" / "report.html").read_text(encoding="utf-8")
    assert page.index("The model") < page.index("headline metrics")
    assert f"Dashed line: epoch {checkpoint['epoch']}" in page
    assert "With a Cox model the loss (negative partial log-likelihood per event) grows" in page
    assert "median time (months)" in page
    assert re.search(r"Calibration of label_death at t = [0-9.]+ months", page)
    assert re.search(r"td-AUC at t = [0-9.]+ months", page)

    # Predicting from the checkpoint alone: the same model summary (less the run's length) and
    # the unit stored with the model.
    predict(best, csv, tmp_path / "predicted", evaluation={"n_bootstrap": 0})
    again = json.loads((tmp_path / "predicted" / "model_summary.json").read_text())
    assert dict(again["rows"])["checkpoint chosen"] == rows["checkpoint chosen"]
    assert "epochs run" not in dict(again["rows"])
    page = (tmp_path / "predicted" / "evaluation" / "report.html").read_text(encoding="utf-8")
    assert "The model" in page and "median time (months)" in page
