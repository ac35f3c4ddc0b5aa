"""Point metrics and thresholds against direct scikit-learn / scipy calls on the same data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.preprocessing import label_binarize

from nervus_lightning.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    regression_metrics,
)
from nervus_lightning.evaluation.thresholds import choose_threshold

BINARY = ["benign", "malignant"]
MULTI = ["a_x", "b_y", "c"]


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    # Rounded scores give ties, which AUROC / AP must treat as scikit-learn does.
    score = np.round(np.clip(0.3 * y + 0.7 * rng.uniform(size=300), 0, 1), 2)
    return np.array(BINARY, dtype=object)[y], np.c_[1 - score, score]


@pytest.fixture
def multi_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 1.2 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return np.array(MULTI, dtype=object)[y], prob


def _ece_reference(outcome: np.ndarray, confidence: np.ndarray) -> float:
    observed, predicted = calibration_curve(outcome, confidence, n_bins=10, strategy="uniform")
    counts = np.histogram(confidence, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(observed - predicted)) / confidence.shape[0])


def test_binary_metrics_match_sklearn(binary_data):
    y, prob = binary_data
    y_pos = y == "malignant"
    score = prob[:, 1]
    threshold = 0.45
    m = classification_metrics(y, prob, BINARY, threshold=threshold)
    assert m["n"] == 300
    assert m["auroc"] == pytest.approx(roc_auc_score(y_pos, score))
    assert m["ap"] == pytest.approx(average_precision_score(y_pos, score))
    assert m["brier"] == pytest.approx(brier_score_loss(y_pos, score))
    pred = score >= threshold
    assert m["accuracy"] == pytest.approx(accuracy_score(y_pos, pred))
    tn, fp, fn, tp = confusion_matrix(y_pos, pred).ravel()
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["f1"] == pytest.approx(f1_score(y_pos, pred))
    assert m.reasons == {}


def test_binary_threshold_is_inclusive_and_argmax_without_threshold(binary_data):
    y, prob = binary_data
    score = prob[:, 1]
    at_tie = classification_metrics(y, prob, BINARY, threshold=float(score[0]))
    pred = score >= score[0]
    assert at_tie["accuracy"] == pytest.approx(np.mean(pred == (y == "malignant")))
    argmax = classification_metrics(y, prob, BINARY)
    expected = accuracy_score(y, np.array(BINARY, dtype=object)[np.argmax(prob, axis=1)])
    assert argmax["accuracy"] == pytest.approx(expected)


def test_positive_class_can_be_chosen(binary_data):
    y, prob = binary_data
    m = classification_metrics(y, prob, BINARY, positive_class="benign", threshold=0.5)
    y_pos = y == "benign"
    assert m["auroc"] == pytest.approx(roc_auc_score(y_pos, prob[:, 0]))
    assert m["ap"] == pytest.approx(average_precision_score(y_pos, prob[:, 0]))
    tn, fp, fn, tp = confusion_matrix(y_pos, prob[:, 0] >= 0.5).ravel()
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))


def test_binary_ece_matches_calibration_curve():
    rng = np.random.default_rng(2)
    score = rng.uniform(size=500)
    y = rng.uniform(size=500) < score**1.5
    m = classification_metrics(np.where(y, "malignant", "benign"), np.c_[1 - score, score], BINARY)
    assert m["ece"] == pytest.approx(_ece_reference(y, score))
    assert expected_calibration_error(y, score) == pytest.approx(_ece_reference(y, score))


def test_multiclass_metrics_match_sklearn(multi_data):
    y, prob = multi_data
    m = classification_metrics(y, prob, MULTI)
    assert m["auroc"] == pytest.approx(
        roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=MULTI)
    )
    onehot = label_binarize(y, classes=MULTI)
    assert m["ap"] == pytest.approx(average_precision_score(onehot, prob, average="macro"))
    for j, c in enumerate(MULTI):
        assert m[f"auroc[{c}]"] == pytest.approx(roc_auc_score(onehot[:, j], prob[:, j]))
    predicted = np.array(MULTI, dtype=object)[np.argmax(prob, axis=1)]
    assert m["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert m["brier"] == pytest.approx(brier_score_loss(y, prob, labels=MULTI))
    assert m["ece"] == pytest.approx(_ece_reference(predicted == y, prob.max(axis=1)))
    assert "sensitivity" not in m


def test_one_class_split_gives_none_with_reason(binary_data):
    y, prob = binary_data
    only_benign = y == "benign"
    m = classification_metrics(y[only_benign], prob[only_benign], BINARY, threshold=0.5)
    assert m["auroc"] is None and m["ap"] is None
    assert "one class" in m.reasons["auroc"]
    assert m["sensitivity"] is None and "no positive" in m.reasons["sensitivity"]
    assert m["specificity"] == pytest.approx(np.mean(prob[only_benign, 1] < 0.5))
    assert m["brier"] == pytest.approx(
        brier_score_loss(np.zeros(only_benign.sum()), prob[only_benign, 1])
    )


def test_multiclass_absent_class_gives_none(multi_data):
    y, prob = multi_data
    keep = y != "c"
    m = classification_metrics(y[keep], prob[keep], MULTI)
    assert m["auroc"] is None and "'c'" in m.reasons["auroc"]
    assert m["auroc[c]"] is None
    assert m["auroc[a_x]"] == pytest.approx(roc_auc_score(y[keep] == "a_x", prob[keep, 0]))
    assert m["accuracy"] is not None


def test_unknown_labels_are_left_out(binary_data):
    y, prob = binary_data
    y_missing = y.copy()
    y_missing[[0, 5]] = None
    y_missing[7] = ""
    y_missing[9] = np.nan
    m = classification_metrics(y_missing, prob, BINARY, threshold=0.5)
    keep = np.ones(len(y), dtype=bool)
    keep[[0, 5, 7, 9]] = False
    clean = classification_metrics(y[keep], prob[keep], BINARY, threshold=0.5)
    assert m["n"] == keep.sum()
    assert {k: v for k, v in m.items() if k != "n"} == {k: v for k, v in clean.items() if k != "n"}
    assert "4 case(s)" in m.reasons["n"]


def test_bad_inputs_raise(binary_data):
    y, prob = binary_data
    with pytest.raises(ValueError, match="not among the classes"):
        classification_metrics(np.where(y == "benign", "healthy", y), prob, BINARY)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y, prob[:, :1], BINARY)


def test_regression_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(3)
    y = rng.normal(60, 12, 200)
    pred = y + rng.normal(2, 6, 200)
    m = regression_metrics(y, pred)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)))
    assert m["r2"] == pytest.approx(r2_score(y, pred))
    assert m["pearson_r"] == pytest.approx(stats.pearsonr(y, pred).statistic)
    y_missing = y.copy()
    y_missing[:3] = np.nan
    assert regression_metrics(y_missing, pred)["mae"] == pytest.approx(
        mean_absolute_error(y[3:], pred[3:])
    )
    constant = regression_metrics(np.full(5, 2.0), np.arange(5.0))
    assert constant["r2"] is None and constant["pearson_r"] is None and constant["mae"] == 1.2


def _brute_force_youden(y: np.ndarray, score: np.ndarray) -> float:
    best, best_t = -np.inf, None
    for t in np.unique(score)[::-1]:  # high to low: ties keep the highest threshold
        tn, fp, fn, tp = confusion_matrix(y, score >= t).ravel()
        j = tp / (tp + fn) + tn / (tn + fp) - 1
        if j > best + 1e-12:
            best, best_t = j, t
    return float(best_t)


def test_youden_threshold_matches_brute_force(binary_data):
    y, prob = binary_data
    y_pos = (y == "malignant").astype(int)
    assert choose_threshold(y_pos, prob[:, 1]) == pytest.approx(
        _brute_force_youden(y_pos, prob[:, 1])
    )


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_sensitivity_threshold_is_highest_reaching_target(binary_data, target):
    y, prob = binary_data
    y_pos = y == "malignant"
    score = prob[:, 1]
    t = choose_threshold(y_pos, score, method="sensitivity", target_sensitivity=target)
    assert np.mean(score[y_pos] >= t) >= target
    higher = np.unique(score[score > t])
    assert all(np.mean(score[y_pos] >= h) < target for h in higher)
    fpr, tpr, thresholds = roc_curve(y_pos, score)
    assert t in thresholds


def test_threshold_errors():
    with pytest.raises(ValueError, match="both"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="unknown threshold method"):
        choose_threshold([0, 1], [0.2, 0.9], method="f1")
