"""End-to-end evaluation report on synthetic predictions: metrics.csv, figures, report.html."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, roc_auc_score

from nervus_lightning.evaluation.report import evaluate_predictions
from nervus_lightning.evaluation.thresholds import choose_threshold

MULTI = ["benign", "malignant_type_a", "other"]
BINARY_METRICS = {
    "n",
    "auroc",
    "ap",
    "accuracy",
    "brier",
    "ece",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "threshold",
    "prevalence",
    "tp",
    "fp",
    "fn",
    "tn",
}
MULTI_METRICS = {"n", "auroc", "ap", "accuracy", "brier", "ece"} | {f"auroc[{c}]" for c in MULTI}
REGRESSION_METRICS = {"n", "mae", "rmse", "r2", "pearson_r"}


def _synthetic(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    split = rng.choice(["train", "val", "test", "external_site_b"], n, p=[0.4, 0.25, 0.25, 0.1])
    y_bin = rng.integers(0, 2, n)
    score = np.clip(0.35 * y_bin + 0.65 * rng.uniform(size=n), 0, 1)
    y_bin[split == "external_site_b"] = 0  # an external site with negatives only
    y_mc = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y_mc]
    prob_mc = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_reg = rng.normal(50, 10, n)
    frame = pd.DataFrame(
        {
            "uniqID": [f"case_{i}" for i in range(n)],
            "split": split,
            "group": rng.choice(["F", "M"], n),
            "label_bin": np.array(["no", "yes"], dtype=object)[y_bin],
            "pred_label_bin": np.where(score >= 0.5, "yes", "no"),
            "prob_label_bin_no": 1 - score,
            "prob_label_bin_yes": score,
            "label_mc": np.array(MULTI, dtype=object)[y_mc],
            "pred_label_mc": np.array(MULTI)[prob_mc.argmax(axis=1)],
            **{f"prob_label_mc_{c}": prob_mc[:, j] for j, c in enumerate(MULTI)},
            "label_reg": y_reg,
            "pred_label_reg": y_reg + rng.normal(0, 5, n),
        }
    )
    frame.loc[5, "label_bin"] = np.nan
    schema = {
        "labels": [
            {"name": "label_bin", "task": "classification", "classes": ["no", "yes"]},
            {"name": "label_mc", "task": "classification", "classes": MULTI},
            {"name": "label_reg", "task": "regression"},
        ],
        "group": "group",
    }
    return frame, schema


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    frame, schema = _synthetic()
    curves = pd.DataFrame(
        {
            "epoch": range(4),
            "train_loss": [1.0, 0.7, 0.5, 0.4],
            "val_loss": [1.0, 0.8, 0.7, 0.7],
            "val_auroc": [0.6, 0.7, 0.75, 0.8],
        }
    )
    metrics = evaluate_predictions(
        frame,
        schema,
        out,
        n_bootstrap=200,
        seed=1,
        config_summary={"model": {"extractor": "resnet18"}, "lr": 0.001},
        learning_curve=curves,
    )
    return out, frame, metrics


def test_metrics_csv_has_one_row_per_split_group_label_metric(report):
    out, frame, metrics = report
    on_disk = pd.read_csv(out / "metrics.csv")
    assert list(on_disk.columns) == [
        "split",
        "group",
        "label",
        "metric",
        "value",
        "ci_lower",
        "ci_upper",
        "ci_method",
    ]
    assert len(on_disk) == len(metrics)
    assert not on_disk.duplicated(["split", "group", "label", "metric"]).any()
    expected = {
        "label_bin": BINARY_METRICS,
        "label_mc": MULTI_METRICS,
        "label_reg": REGRESSION_METRICS,
    }
    for (split, group, label), rows in on_disk.groupby(["split", "group", "label"]):
        assert set(rows["metric"]) == expected[label], (split, group, label)
    cells = set(zip(on_disk["split"], on_disk["group"], strict=True))
    assert cells == {
        (s, g) for s in ["train", "val", "test", "external_site_b"] for g in ["all", "F", "M"]
    }


def _value(metrics: pd.DataFrame, split: str, group: str, label: str, metric: str) -> pd.Series:
    row = metrics[
        (metrics.split == split)
        & (metrics.group == group)
        & (metrics.label == label)
        & (metrics.metric == metric)
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_metric_values_match_sklearn_on_each_subset(report):
    _, frame, metrics = report
    test_f = frame[(frame.split == "test") & (frame.group == "F")]
    prob = test_f[[f"prob_label_mc_{c}" for c in MULTI]].to_numpy()
    row = _value(metrics, "test", "F", "label_mc", "auroc")
    assert row.value == pytest.approx(
        roc_auc_score(test_f.label_mc, prob, multi_class="ovr", labels=MULTI)
    )
    assert row.ci_lower < row.value < row.ci_upper
    test_m = frame[(frame.split == "test") & (frame.group == "M")]
    row = _value(metrics, "test", "M", "label_reg", "mae")
    assert row.value == pytest.approx(mean_absolute_error(test_m.label_reg, test_m.pred_label_reg))
    assert row.ci_lower < row.value < row.ci_upper
    known = frame[frame.label_bin.notna() & (frame.split == "test")]
    assert _value(metrics, "test", "all", "label_bin", "n").value == len(known)


def test_threshold_from_val_is_applied_to_test(report):
    _, frame, metrics = report
    val = frame[(frame.split == "val") & frame.label_bin.notna()]
    threshold = choose_threshold(val.label_bin == "yes", val.prob_label_bin_yes)
    for split in ("train", "val", "test", "external_site_b"):
        assert _value(metrics, split, "all", "label_bin", "threshold").value == threshold
    test = frame[(frame.split == "test") & frame.label_bin.notna()]
    positives = test[test.label_bin == "yes"]
    assert _value(metrics, "test", "all", "label_bin", "sensitivity").value == pytest.approx(
        np.mean(positives.prob_label_bin_yes >= threshold)
    )


def test_one_class_split_has_no_auroc_and_says_why(report):
    out, _, metrics = report
    row = _value(metrics, "external_site_b", "all", "label_bin", "auroc")
    assert np.isnan(row.value) and np.isnan(row.ci_lower)
    notes = pd.read_csv(out / "metrics_notes.csv")
    note = notes[
        (notes.split == "external_site_b")
        & (notes.group == "all")
        & (notes.label == "label_bin")
        & (notes.metric == "auroc")
    ]
    assert "one class" in note.note.iloc[0]
    assert not np.isnan(_value(metrics, "external_site_b", "all", "label_bin", "specificity").value)


def test_report_html_is_self_contained(report):
    out, _, _ = report
    page = (out / "report.html").read_text(encoding="utf-8")
    pngs = list((out / "figures").rglob("*.png"))
    # Per classification label: ROC and PR with the splits overlaid, ROC by group, reliability,
    # (multi-class) confusion matrices; regression: predicted vs true, Bland-Altman, predicted vs
    # true by group; the learning curves.
    assert len(pngs) == 4 + 5 + 3 + 1
    assert {p.name for p in (out / "figures" / "label_mc").iterdir()} == {
        "roc.png",
        "pr.png",
        "roc_by_group.png",
        "reliability.png",
        "confusion.png",
    }
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    for text in (
        "Learning curves",
        "model.extractor",
        "resnet18",
        "class balance",
        "chosen on 'val'",
        "label_reg",
    ):
        assert text in html.unescape(page), text
    # A demo-sized report stays small enough to mail around.
    assert (out / "report.html").stat().st_size < 1.5e6


def test_report_opens_on_results_and_folds_the_rest(report):
    out, _, _ = report
    page = (out / "report.html").read_text(encoding="utf-8")
    headline = page.index("Table 1. label_bin: headline metrics")
    assert headline < page.index("<img") < page.index('id="data"') < page.index('id="full-tables"')
    assert page.index('id="full-tables"') < page.index('id="configuration"')
    # Configuration and the full split x group tables are folded.
    config = page[page.index('id="configuration"') :]
    assert "<details>" in config and config.index("<details>") < config.index("model.extractor")
    full = page[page.index('id="full-tables"') : page.index('id="configuration"')]
    assert full.count("<details>") == 3
    # Headline table: test and external first, val last and marked; no train row.
    table = page[headline : page.index("</table>", headline)]
    rows = re.findall(r'<th scope="row" class="key">([^<]+)', table)
    assert rows == ["test", "external_site_b", "val"]
    assert 'class="dev"' in table and "<sup>†</sup>" in table
    # Figures show val, test and external only: train stays in the tables.
    captions = re.findall(r"<figcaption>(Figure .*?)</figcaption>", page, flags=re.S)
    assert captions and not any("train" in c for c in captions)
    assert "(val, test, external_site_b)" in page


def test_train_figures_on_request(tmp_path):
    frame, schema = _synthetic(200)
    evaluate_predictions(frame, schema, tmp_path, n_bootstrap=0, train_figures=True)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "(train, val, test, external_site_b)" in page


def test_report_escapes_user_text(tmp_path):
    frame, schema = _synthetic(120)
    frame["group"] = np.where(frame["group"] == "F", "<b>F</b>", "M & co")
    evaluate_predictions(
        frame,
        schema,
        tmp_path,
        n_bootstrap=0,
        config_summary={"note": "<script>alert(1)</script>"},
    )
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<b>F</b>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;F&lt;/b&gt;" in page and "M &amp; co" in page


def _threshold_case(with_val: bool) -> tuple[pd.DataFrame, dict]:
    """Scores whose best cut-off is about 0.6 on val/train and 0.2 on test."""
    rng = np.random.default_rng(3)
    parts = []
    for split, low, high in (("train", 0.3, 0.6), ("val", 0.3, 0.6), ("test", 0.0, 0.2)):
        if split == "val" and not with_val:
            continue
        y = np.r_[np.zeros(40, int), np.ones(40, int)]
        score = np.r_[rng.uniform(low, high, 40), rng.uniform(high, high + 0.3, 40)]
        parts.append(
            pd.DataFrame(
                {
                    "uniqID": [f"{split}{i}" for i in range(80)],
                    "split": split,
                    "label_x": y,
                    "prob_label_x_0": 1 - score,
                    "prob_label_x_1": score,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    schema = {
        "labels": [{"name": "label_x", "task": "classification", "classes": ["0", "1"]}],
        "group": None,
    }
    return frame, schema


@pytest.mark.parametrize("with_val", [True, False])
def test_threshold_is_never_chosen_on_test(tmp_path, with_val):
    frame, schema = _threshold_case(with_val)
    frame.loc[0, "label_x"] = np.nan  # CSV round trip turns the labels into floats
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    frame = pd.read_csv(tmp_path / "predictions.csv")
    metrics = evaluate_predictions(frame, schema, tmp_path / "out", n_bootstrap=0)
    chosen_on = "val" if with_val else "train"
    fit = frame[(frame.split == chosen_on) & frame.label_x.notna()]
    threshold = choose_threshold(fit.label_x == 1, fit.prob_label_x_1)
    assert _value(metrics, "test", "all", "label_x", "threshold").value == threshold
    # Chosen on test, sensitivity would be 1; with the val/train threshold no positive reaches it.
    assert _value(metrics, "test", "all", "label_x", "sensitivity").value == 0.0
    assert _value(metrics, "test", "all", "label_x", "auroc").value == 1.0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert ("chosen on 'train'" in html.unescape(page)) == (not with_val)
    # n_bootstrap=0: no bootstrap intervals; the closed-form ones of proportions and the AUROC
    # remain (sensitivity 0 of n: Wilson interval from 0).
    with_ci = metrics[metrics["ci_lower"].notna()]
    assert set(with_ci["ci_method"]) == {"wilson", "newcombe"}
    row = _value(metrics, "test", "all", "label_x", "sensitivity")
    assert row.ci_lower == 0.0 and row.ci_upper > 0.0


def test_missing_columns_are_named(tmp_path):
    frame, schema = _synthetic(60)
    with pytest.raises(ValueError, match="prob_label_mc_other"):
        evaluate_predictions(frame.drop(columns="prob_label_mc_other"), schema, tmp_path)


def test_survival_label_metrics_km_and_calibration(tmp_path):
    from sksurv.metrics import concordance_index_censored
    from sksurv.nonparametric import kaplan_meier_estimator

    from nervus_lightning.survival.reference import SurvivalReference

    rng = np.random.default_rng(5)
    n = 240
    split = np.repeat(["train", "val", "test"], [120, 60, 60])
    x = rng.normal(size=n)
    true_time = rng.exponential(1 / np.exp(x))
    censor = rng.exponential(1.5, n)
    frame = pd.DataFrame(
        {
            "uniqID": range(n),
            "split": split,
            "label_e": (true_time <= censor).astype(int),
            "period_e": np.round(np.minimum(true_time, censor), 3),
            "risk_label_e": x + rng.normal(0, 0.5, n),
        }
    )
    schema = {
        "labels": [{"name": "label_e", "task": "survival", "period": "period_e"}],
        "group": None,
    }
    metrics = evaluate_predictions(frame, schema, tmp_path, n_bootstrap=30)
    test = frame[frame.split == "test"]
    row = _value(metrics, "test", "all", "label_e", "c_index")
    assert row.value == pytest.approx(
        concordance_index_censored(test.label_e.astype(bool), test.period_e, test.risk_label_e)[0]
    )
    assert row.ci_lower < row.value < row.ci_upper
    assert np.isnan(_value(metrics, "test", "all", "label_e", "logrank_p").ci_lower)
    assert {"c_index_uno", "td_auc_mean", "ibs", "events"} <= set(metrics.metric)

    train = frame[frame.split == "train"]
    # The training aggregates: rounded evaluation times, the baseline in steps of >= 10 events.
    baseline = SurvivalReference.fit(train.period_e, train.label_e, train.risk_label_e)
    calibration = pd.read_csv(tmp_path / "survival_calibration_label_e.csv")
    test_bins = calibration[calibration.split == "test"]
    assert test_bins.n.sum() == len(test) and len(test_bins) == 6
    exact = np.percentile(train.period_e[train.label_e == 1], [25, 50, 75])
    t = float(np.median([float(f"{v:.2g}") for v in exact]))
    predicted = baseline.survival(test.risk_label_e, [t])[:, 0]
    order = np.argsort(predicted, kind="stable")
    first = order[:10]  # lowest predicted survival = bin 1
    assert test_bins.predicted.iloc[0] == pytest.approx(predicted[first].mean())
    km_time, km_surv = kaplan_meier_estimator(
        test.label_e.to_numpy(bool)[first], test.period_e.to_numpy()[first]
    )
    expected = km_surv[km_time <= t][-1] if (km_time <= t).any() else 1.0
    assert test_bins.observed.iloc[0] == pytest.approx(expected)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    # Kaplan-Meier panels of val and test in one figure, calibration with both overlaid.
    assert page.count("data:image/png;base64,") == 2
    assert "one panel per split (val, test)" in page
