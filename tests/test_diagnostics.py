"""The checks that say when a finished run failed silently
(:mod:`nervus_lightning.evaluation.diagnostics`): each fires on the failure it names and stays
quiet on a healthy run."""

from __future__ import annotations

import json

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


def test_a_cause_worse_than_aalen_johansen_on_validation():
    rows = [
        *HEALTHY_SURVIVAL,
        ("val", "label_death", "ipa_cause1", -0.30),
        ("val", "label_death", "ipa_cause2", 0.05),
        ("val", "label_death", "ipa_cause3", -0.005),  # a tie: no failure
        ("test", "label_death", "ipa_cause2", -0.5),
    ]
    (message,) = run_warnings(_metrics(rows), ["label_death"])
    assert "worse than the Aalen-Johansen incidence" in message and "(IPA cause 1 -0.30)" in message


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


# -- end to end: a data set that triggers each check, trained with the user's command ----------

QUIET = [
    "model/extractor=none",
    "evaluation.n_bootstrap=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def _train(csv, run, overrides):
    from conftest import compose_config

    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.workflows.train import train

    train(train_settings(compose_config([f"data.csv={csv}", *QUIET, *overrides])), run)
    summary = json.loads((run / "summary.json").read_text())
    report = (run / "evaluation" / "report.html").read_text(encoding="utf-8")
    return summary["warnings"], report


def _frame(n: int, split_sizes: tuple[int, int, int], rng) -> pd.DataFrame:
    splits = ["train"] * split_sizes[0] + ["val"] * split_sizes[1] + ["test"] * split_sizes[2]
    return pd.DataFrame({"uniqID": [f"p{i}" for i in range(n)], "split": splits})


def test_a_site_artefact_in_training_is_called_overfitted(tmp_path):
    """An input that gives the label away in the training rows only (a scanner mark of one
    site): training AUROC 1, validation near chance, and the run says so at the top of the
    report, in summary.json and in the log."""
    rng = np.random.default_rng(0)
    frame = _frame(300, (180, 60, 60), rng)
    y = rng.integers(0, 2, 300)
    for i in range(5):
        frame[f"input_{i}"] = rng.normal(size=300) + (0.3 * y if i == 0 else 0)
    train_rows = frame.split == "train"
    frame["input_mark"] = np.where(
        train_rows, y + 0.1 * rng.normal(size=300), rng.normal(0.5, 0.5, 300)
    )
    frame["label_cancer"] = np.where(y == 1, "yes", "no")
    frame.to_csv(tmp_path / "data.csv", index=False)
    warnings, report = _train(tmp_path / "data.csv", tmp_path / "run", ["task=classification"])
    assert any("overfitted: training AUROC 1.000" in w for w in warnings), warnings
    assert "Check before you use these results" in report and "overfitted" in report


def test_a_network_that_only_got_worse_is_called_diverged(tmp_path):
    """Survival on noise with a large learning rate and no early stopping: the kept checkpoint
    is the first epoch's and the validation loss only rose after it."""
    rng = np.random.default_rng(0)
    frame = _frame(150, (90, 30, 30), rng)
    for i in range(40):
        frame[f"input_{i}"] = rng.normal(size=150)
    time, censor = rng.exponential(5, 150), rng.exponential(8, 150)
    frame["label_death"] = (time <= censor).astype(int)
    frame["period_death"] = np.minimum(time, censor).round(3)
    frame.to_csv(tmp_path / "data.csv", index=False)
    overrides = [
        "task=survival",
        "model.tabular.linear=false",
        "model.ensemble=1",
        "model.tabular.hidden=[128]",
        "model.tabular.dropout=0",
        "optimizer.lr=0.03",
        "early_stopping.patience=null",
        "trainer.max_epochs=40",
    ]
    warnings, _ = _train(tmp_path / "data.csv", tmp_path / "run", overrides)
    assert any(w.startswith("diverged: the kept checkpoint is from epoch 0") for w in warnings)


def test_inputs_that_say_nothing_give_collapsed_predictions(tmp_path):
    """Constant inputs: every case gets the same prediction, below the reference R^2 of 0."""
    rng = np.random.default_rng(0)
    frame = _frame(150, (90, 30, 30), rng)
    frame["input_a"], frame["input_b"] = 1.0, 2.0
    frame["label_value"] = rng.normal(size=150)
    frame.to_csv(tmp_path / "data.csv", index=False)
    warnings, _ = _train(
        tmp_path / "data.csv", tmp_path / "run", ["task=regression", "trainer.max_epochs=5"]
    )
    assert any("collapsed: every validation case gets the same prediction" in w for w in warnings)


def test_divergence_names_the_linear_start_when_it_was_kept():
    """The run kept the model as it started: the warning must not call an epoch the kept one."""
    diverged = pd.DataFrame({"epoch": range(6), "val_loss": [3.5, 4.0, 9.0, 30.0, 60.0, 166.0]})
    (message,) = run_warnings(_metrics([]), [], learning_curve=diverged, linear_start_kept=True)
    assert message.startswith("diverged: the linear start, before training, was kept")
    assert "kept checkpoint is from epoch" not in message


def test_collapse_names_a_kept_linear_start_whose_every_weight_is_0():
    """A start whose penalty, chosen on held-out rows, zeroed every weight predicts the same for
    every case: the warning says so (the inputs showed no effect there) instead of blaming the
    learning rate; a start with weights, or one the network replaced, keeps the plain warning."""
    predictions = pd.DataFrame(
        {"split": ["train", "val", "val", "val"], "risk_label_death": [0.0, 0.0, 0.0, 0.0]}
    )
    zero = {"label_death": {"chosen_on": "val", "inputs": 3, "inputs_used": 0}}
    (message,) = run_warnings(
        _metrics([]), ["label_death"], predictions, linear_start_kept=True, linear_starts=zero
    )
    assert message.startswith("label 'label_death': collapsed: every validation case")
    assert "the penalty chosen on val sets every input's weight to 0" in message
    assert "optimizer.lr" not in message
    for kept, starts in (
        (False, zero),
        (True, {"label_death": {"chosen_on": "val", "inputs": 3, "inputs_used": 2}}),
        (True, None),
    ):
        (plain,) = run_warnings(
            _metrics([]), ["label_death"], predictions, linear_start_kept=kept, linear_starts=starts
        )
        assert "the model ignores its inputs" in plain and "optimizer.lr" in plain


def test_a_binary_label_with_one_class_in_validation():
    """All-positive validation rows: said as such, not as a Brier score 'worse than the
    prevalence' (whose reference p(1 - p) is then 0)."""
    rows = [
        ("val", "label_cancer", "brier", 0.036),
        ("val", "label_cancer", "prevalence", 1.0),
        ("val", "label_cancer", "auroc", np.nan),
    ]
    (message,) = run_warnings(_metrics(rows), ["label_cancer"])
    assert "validation rows hold one class only (every case positive)" in message
    assert "split=val" in message and "worse than the prevalence" not in message
    mixed = [("val", "label_cancer", "brier", 0.2), ("val", "label_cancer", "prevalence", 0.3)]
    assert run_warnings(_metrics(mixed), ["label_cancer"]) == []
