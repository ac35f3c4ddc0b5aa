"""Closed-form intervals: proportions against scipy's binomtest, the AUROC's Hanley-McNeil
variance against Hanley and McNeil's published example, Newcombe's score interval against its
defining equation, and what the report shows at the boundary (91 of 91)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_auc_score

from nervus_lightning.evaluation.intervals import (
    auroc_interval,
    hanley_mcneil_variance,
    proportion_interval,
)
from nervus_lightning.evaluation.report import evaluate_predictions

CASES = [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (0, 91), (91, 91), (45, 91), (7, 250)]


@pytest.mark.parametrize("method", ["wilson", "exact"])
@pytest.mark.parametrize("ci", [0.95, 0.9])
@pytest.mark.parametrize(("k", "n"), CASES)
def test_proportion_interval_is_scipy_binomtest(k, n, ci, method):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=ci, method=method)
    got = proportion_interval(k, n, ci, method)
    assert got.lower == pytest.approx(expected.low, abs=1e-12)
    assert got.upper == pytest.approx(expected.high, abs=1e-12)
    assert got.method == method
    assert got.upper > got.lower  # never zero width, not even at k = 0 or k = n


def test_proportion_without_cases_is_empty_with_a_reason():
    got = proportion_interval(0, 0)
    assert got.lower is None and got.upper is None and got.reason


# Hanley & McNeil (Radiology 1982; 143:29-36), Table 1: ratings 1 (definitely normal) to 5
# (definitely abnormal) of 109 CT images, 58 normal and 51 abnormal. They report an area of
# 0.893 with a standard error of 0.032.
HM_NORMAL = [33, 6, 6, 11, 2]
HM_ABNORMAL = [3, 2, 2, 11, 33]


def _hanley_mcneil_data() -> tuple[np.ndarray, np.ndarray]:
    ratings = np.arange(1, 6)
    y = np.r_[np.zeros(sum(HM_NORMAL)), np.ones(sum(HM_ABNORMAL))]
    score = np.r_[np.repeat(ratings, HM_NORMAL), np.repeat(ratings, HM_ABNORMAL)]
    return y, score


def test_hanley_mcneil_standard_error_is_the_published_one():
    y, score = _hanley_mcneil_data()
    auc = roc_auc_score(y, score)
    assert round(auc, 3) == 0.893
    se = np.sqrt(hanley_mcneil_variance(auc, 51, 58))
    assert round(se, 3) == 0.032


def _score_equation_roots(auc: float, m: int, n: int, ci: float) -> tuple[float, float]:
    """The interval by brute force: the range of theta on a fine grid that satisfies Newcombe's
    score inequality (auc - theta)^2 <= z^2 V(theta), V with N* = (m + n) / 2 - 1 written out
    from the formula (not the module's function)."""
    z = stats.norm.ppf((1 + ci) / 2)
    theta = np.linspace(0.0, 1.0, 2_000_001)
    n_star = (m + n) / 2 - 1
    q1 = theta / (2 - theta)
    q2 = 2 * theta**2 / (1 + theta)
    variance = (theta * (1 - theta) + n_star * (q1 - theta**2) + n_star * (q2 - theta**2)) / (m * n)
    inside = theta[(auc - theta) ** 2 <= z**2 * variance]
    return inside.min(), inside.max()


@pytest.mark.parametrize(
    ("auc", "m", "n"), [(0.893, 51, 58), (1.0, 91, 40), (0.0, 12, 30), (0.5, 20, 20), (0.97, 5, 9)]
)
def test_newcombe_interval_solves_its_score_equation(auc, m, n):
    got = auroc_interval(auc, m, n, 0.95)
    lower, upper = _score_equation_roots(auc, m, n, 0.95)
    assert got.lower == pytest.approx(lower, abs=1e-6)
    assert got.upper == pytest.approx(upper, abs=1e-6)
    assert got.lower <= auc <= got.upper


def test_newcombe_interval_stays_open_at_the_boundary_and_is_symmetric():
    top = auroc_interval(1.0, 91, 40)
    assert top.upper == 1.0 and 0.9 < top.lower < 0.99
    bottom = auroc_interval(0.0, 40, 91)
    assert bottom.lower == 0.0 and bottom.upper == pytest.approx(1 - top.lower, abs=1e-12)
    assert auroc_interval(0.7, 0, 10).lower is None


def test_newcombe_interval_covers_about_95_percent():
    # Binormal model with unit variances and a mean difference of 1.8: AUC = Phi(1.8 / sqrt 2).
    rng = np.random.default_rng(0)
    true_auc = stats.norm.cdf(1.8 / np.sqrt(2))
    hits = 0
    reps = 400
    for _ in range(reps):
        pos, neg = rng.normal(1.8, 1, 30), rng.normal(0, 1, 40)
        auc = roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[pos, neg])
        interval = auroc_interval(auc, 30, 40)
        hits += interval.lower <= true_auc <= interval.upper
    assert 0.91 <= hits / reps <= 0.99


def _separated_case() -> tuple[pd.DataFrame, dict]:
    """91 positives and 60 negatives on test, perfectly separated (a 91/91 sensitivity)."""
    rng = np.random.default_rng(5)
    parts = []
    # The threshold chosen on val lies between 0.4 and 0.5; on test every case is beyond it.
    for split, n_pos, n_neg, low, high in (("val", 30, 30, 0.4, 0.5), ("test", 91, 60, 0.3, 0.7)):
        y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
        score = np.r_[rng.uniform(0.0, low, n_neg), rng.uniform(high, 1.0, n_pos)]
        parts.append(
            pd.DataFrame(
                {
                    "uniqID": [f"{split}{i}" for i in range(len(y))],
                    "split": split,
                    "label_x": y,
                    "prob_label_x_0": 1 - score,
                    "prob_label_x_1": score,
                }
            )
        )
    schema = {
        "labels": [{"name": "label_x", "task": "classification", "classes": ["0", "1"]}],
        "group": None,
    }
    return pd.concat(parts, ignore_index=True), schema


def _row(metrics: pd.DataFrame, metric: str) -> pd.Series:
    rows = metrics[(metrics.split == "test") & (metrics.group == "all")]
    return rows[rows.metric == metric].iloc[0]


@pytest.mark.parametrize("method", ["wilson", "exact"])
def test_report_intervals_do_not_collapse_at_91_of_91(tmp_path, method):
    frame, schema = _separated_case()
    metrics = evaluate_predictions(frame, schema, tmp_path, n_bootstrap=200, proportion_ci=method)
    sensitivity = _row(metrics, "sensitivity")
    assert sensitivity.value == 1.0 and sensitivity.ci_method == method
    expected = stats.binomtest(91, 91).proportion_ci(method=method)
    assert sensitivity.ci_lower == pytest.approx(expected.low)
    assert sensitivity.ci_upper == 1.0
    accuracy = _row(metrics, "accuracy")
    expected = stats.binomtest(151, 151).proportion_ci(method=method)
    assert accuracy.ci_lower == pytest.approx(expected.low) and accuracy.ci_method == method
    auroc = _row(metrics, "auroc")
    assert auroc.value == 1.0 and auroc.ci_method == "newcombe"
    assert auroc.ci_lower == pytest.approx(auroc_interval(1.0, 91, 60).lower)
    assert auroc.ci_lower < 0.99
    assert _row(metrics, "brier").ci_method == "bootstrap"
    # AP is 1 in every resample: a zero-width bootstrap interval is dropped, and the note says so.
    assert np.isnan(_row(metrics, "ap").ci_lower)
    notes = pd.read_csv(tmp_path / "metrics_notes.csv")
    assert "no width" in notes[(notes.split == "test") & (notes.metric == "ap")].note.iloc[0]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "1.000 – 1.000" not in page.split("Full metric tables")[0]


def test_two_by_two_counts_and_prevalence_are_sklearn_confusion_matrix(tmp_path):
    frame, schema = _separated_case()
    frame.loc[frame.index[-5:], "prob_label_x_1"] = 0.05  # five test positives missed
    frame["prob_label_x_0"] = 1 - frame["prob_label_x_1"]
    metrics = evaluate_predictions(frame, schema, tmp_path, n_bootstrap=0)
    threshold = _row(metrics, "threshold").value
    test = frame[frame.split == "test"]
    tn, fp, fn, tp = confusion_matrix(test.label_x, test.prob_label_x_1 >= threshold).ravel()
    assert (tp, fp, fn, tn) == (86, 0, 5, 60)
    for name, count in {"tp": tp, "fp": fp, "fn": fn, "tn": tn}.items():
        assert _row(metrics, name).value == count
    assert _row(metrics, "prevalence").value == pytest.approx(91 / 151)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    headline = page.split("headline metrics")[1].split("</table>")[0]
    columns = [c.split("</th>")[0] for c in headline.split("<th>")[1:]]
    assert columns[:3] == ["n", "prevalence", "TP / FP / FN / TN"]
    assert "86\u00a0/\u00a00\u00a0/\u00a05\u00a0/\u00a060" in headline


def test_evaluation_without_intervals_warns_nothing(tmp_path):
    """With no bootstrap a regression label has no interval at all, so every ci_method cell is
    empty; reading them as missing must not raise pandas' FutureWarning (every
    evaluation.n_bootstrap=0 run of a regression or survival model printed it)."""
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, 90)
    frame = pd.DataFrame(
        {
            "uniqID": [f"c{i}" for i in range(90)],
            "split": np.repeat(["train", "val", "test"], 30),
            "label_y": y,
            "pred_label_y": y + rng.normal(0, 5, 90),
        }
    )
    schema = {"labels": [{"name": "label_y", "task": "regression"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        metrics = evaluate_predictions(frame, schema, tmp_path, n_bootstrap=0)
    assert metrics["ci_method"].isna().all() and metrics["ci_method"].dtype == float
