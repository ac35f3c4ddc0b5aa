"""The checks that say when a finished run failed silently
(:mod:`nervus_lightning.evaluation.diagnostics`): each fires on the failure it names and stays
quiet on a healthy run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nervus_lightning.evaluation.diagnostics import run_warnings


def _metrics(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    columns = ["split", "label", "metric", "value"]
    return pd.DataFrame(rows, columns=columns).assign(group="all")


HEALTHY_SURVIVAL = [
    ("train", "label_death", "c_index", 0.78),
    ("val", "label_death", "c_index", 0.74),
    ("val", "label_death", "ipa", 0.12),
    ("val", "label_death", "ibs", 0.15),
    ("val", "label_death", "ibs_null", 0.17),
]


def test_a_healthy_run_gets_no_warning():
    curve = pd.DataFrame({"epoch": range(6), "val_loss": [3.0, 2.8, 2.7, 2.65, 2.66, 2.7]})
    predictions = pd.DataFrame({"split": ["val"] * 3, "risk_label_death": [0.1, -0.2, 0.4]})
    assert run_warnings(_metrics(HEALTHY_SURVIVAL), ["label_death"], predictions, curve) == []


def test_overfitted_survival_model_is_named_with_its_numbers():
    rows = [("train", "label_death", "c_index", 1.0), ("val", "label_death", "c_index", 0.65)]
    (message,) = run_warnings(_metrics(rows), ["label_death"])
    assert "overfitted" in message and "1.000" in message and "0.650" in message


def test_survival_worse_than_kaplan_meier_on_validation():
    rows = [
        ("val", "label_death", "ipa", -1.8),
        ("val", "label_death", "ibs", 0.31),
        ("val", "label_death", "ibs_null", 0.11),
    ]
    (message,) = run_warnings(_metrics(rows), ["label_death"])
    assert "worse than Kaplan-Meier" in message and "-1.80" in message


def test_test_rows_never_trigger_a_warning():
    rows = [("test", "label_death", "ipa", -1.0), ("test", "label_death", "c_index", 0.5)]
    assert run_warnings(_metrics(rows), ["label_death"]) == []


def test_classifier_worse_than_the_prevalence_and_regression_below_zero_r2():
    rows = [
        ("val", "label_cancer", "brier", 0.30),
        ("val", "label_cancer", "prevalence", 0.2),  # p(1 - p) = 0.16
        ("val", "label_value", "r2", -0.4),
    ]
    messages = run_warnings(_metrics(rows), ["label_cancer", "label_value"])
    assert len(messages) == 2
    assert "prevalence" in messages[0] and "0.160" in messages[0]
    assert "R^2 -0.400" in messages[1]


def test_collapsed_predictions():
    predictions = pd.DataFrame(
        {
            "split": ["train", "val", "val", "val"],
            "prob_label_cancer_no": [0.2, 0.7, 0.7, 0.7],
            "prob_label_cancer_yes": [0.8, 0.3, 0.3, 0.3],
        }
    )
    (message,) = run_warnings(_metrics([]), ["label_cancer"], predictions)
    assert "collapsed" in message
    predictions.loc[3, "prob_label_cancer_yes"] = 0.31
    assert run_warnings(_metrics([]), ["label_cancer"], predictions) == []


def test_divergence_after_an_early_best_epoch():
    diverged = pd.DataFrame({"epoch": range(6), "val_loss": [3.5, 4.0, 9.0, 30.0, 60.0, 166.0]})
    (message,) = run_warnings(_metrics([]), [], learning_curve=diverged)
    assert "epoch 0" in message and "166" in message
    recovered = diverged.assign(val_loss=[3.5, 4.0, 3.4, 3.3, 3.3, 3.3])
    assert run_warnings(_metrics([]), [], learning_curve=recovered) == []
    noisy = diverged.assign(val_loss=[0.020, 0.021, 0.022, 0.021, 0.022, 0.023])
    assert run_warnings(_metrics([]), [], learning_curve=noisy) == []
    assert np.isfinite(diverged.val_loss).all()
