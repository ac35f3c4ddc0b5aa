"""Point metrics for classification and regression predictions.

This module owns the definition of every classification and regression number the project
prints. The functions are pure (numpy arrays in, a :class:`MetricValues` out), cheap, and never
raise because a split is degenerate: a metric that is undefined on the data (AUROC with one class
present, PPV with no predicted positives, ...) is ``None`` and its reason is in
``result.reasons[name]``.

Definitions (``n`` cases, ``k`` classes, ``p`` predicted probabilities):

- ``auroc``: binary, ``roc_auc_score`` of the positive class (the last sorted class unless
  ``positive_class`` is given); multi-class, the macro average of the one-vs-rest AUROCs
  (``roc_auc_score(multi_class="ovr", average="macro")``). ``auroc[c]`` is the one-vs-rest AUROC of
  class ``c`` (multi-class only).
- ``ap``: average precision (step-wise area under the precision-recall curve, no interpolation);
  multi-class, the macro average of the one-vs-rest APs.
- ``accuracy``: share of cases whose predicted class is the true class. Binary: predicted
  positive iff ``p_pos >= threshold`` when a threshold is given, else the arg-max class.
  Multi-class: arg-max.
- ``brier``: binary, ``mean((p_pos - y)^2)`` (``brier_score_loss``, range 0..1); multi-class, the
  original Brier score ``mean_i sum_c (p_ic - y_ic)^2`` (range 0..2; ``brier_score_loss`` with
  ``labels``).
- ``ece``: expected calibration error with 10 equal-width bins on [0, 1] (bins as in
  ``sklearn.calibration.calibration_curve(strategy="uniform")``):
  ``sum_b n_b / n * |observed_b - mean_predicted_b|``. Binary: on the positive-class probability
  (observed = event rate in the bin); multi-class: top-label (confidence = max probability,
  observed = accuracy of the arg-max class in the bin).
- Binary only, at the operating point (predicted positive iff ``p_pos >= threshold``, the
  ``roc_curve`` convention; arg-max when no threshold is given): ``sensitivity`` TP/(TP+FN),
  ``specificity`` TN/(TN+FP), ``ppv`` TP/(TP+FP), ``npv`` TN/(TN+FN), ``f1`` 2TP/(2TP+FP+FN).
- Regression: ``mae``, ``rmse``, ``r2`` (coefficient of determination, ``r2_score``) and
  ``pearson_r`` (``scipy.stats.pearsonr``).
- ``n``: number of cases the metrics were computed on (cases with an unknown true value are left
  out and counted in ``reasons["n"]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

ECE_BINS = 10


class MetricValues(dict):
    """Metric name -> value (``float``, or ``None`` where undefined), plus ``reasons``.

    A plain ``dict`` (so ``json.dump`` works on it) that also carries ``reasons``: metric name ->
    why the value is ``None`` (or a remark worth printing next to it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}

    def set(self, name: str, value: float | None, reason: str | None = None) -> None:
        if value is not None and not np.isfinite(value):
            value, reason = None, reason or "not a finite number"
        self[name] = None if value is None else float(value)
        if reason:
            self.reasons[name] = reason


def is_missing_label(values: Sequence | np.ndarray) -> np.ndarray:
    """True where a true label is unknown (``None``, NaN, ``pd.NA`` or an empty string)."""
    arr = np.asarray(values, dtype=object)
    return np.array(
        [
            (isinstance(v, str) and not v.strip()) or (not isinstance(v, str) and bool(pd.isna(v)))
            for v in arr
        ],
        dtype=bool,
    ).reshape(arr.shape[0])


def expected_calibration_error(
    correct: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of ``confidence`` against the 0/1 outcomes ``correct`` (equal-width bins)."""
    correct = np.asarray(correct, dtype=float)
    confidence = np.asarray(confidence, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Same bin assignment as sklearn's calibration_curve, so the two agree to the last digit.
    bins = np.searchsorted(edges[1:-1], confidence)
    sum_conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    sum_true = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.abs(sum_true - sum_conf).sum() / confidence.shape[0])


def binary_confusion(y_pos: np.ndarray, pred_pos: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, TN, FN) counts for boolean arrays of truth and prediction."""
    y_pos = np.asarray(y_pos, dtype=bool)
    pred_pos = np.asarray(pred_pos, dtype=bool)
    tp = int(np.sum(y_pos & pred_pos))
    fp = int(np.sum(~y_pos & pred_pos))
    tn = int(np.sum(~y_pos & ~pred_pos))
    fn = int(np.sum(y_pos & ~pred_pos))
    return tp, fp, tn, fn


def _ratio(num: float, den: float, name: str, why: str, out: MetricValues) -> None:
    out.set(name, num / den if den > 0 else None, None if den > 0 else why)


def operating_point_metrics(
    y_pos: np.ndarray, pred_pos: np.ndarray, out: MetricValues | None = None
) -> MetricValues:
    """Sensitivity, specificity, PPV, NPV and F1 from boolean truth and prediction."""
    out = MetricValues() if out is None else out
    tp, fp, tn, fn = binary_confusion(y_pos, pred_pos)
    _ratio(tp, tp + fn, "sensitivity", "no positive cases", out)
    _ratio(tn, tn + fp, "specificity", "no negative cases", out)
    _ratio(tp, tp + fp, "ppv", "no case predicted positive", out)
    _ratio(tn, tn + fn, "npv", "no case predicted negative", out)
    _ratio(2 * tp, 2 * tp + fp + fn, "f1", "no positive cases and none predicted positive", out)
    return out


def _check_probabilities(prob: np.ndarray, n: int, k: int) -> np.ndarray:
    prob = np.asarray(prob, dtype=float)
    if prob.ndim != 2 or prob.shape != (n, k):
        raise ValueError(
            f"prob must have shape (n_cases, n_classes) = ({n}, {k}), got {prob.shape}"
        )
    if not np.all(np.isfinite(prob)):
        raise ValueError("prob contains NaN or infinite values")
    return prob


def classification_metrics(
    y_true: Sequence[str] | np.ndarray,
    prob: np.ndarray,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    threshold: float | None = None,
) -> MetricValues:
    """Classification metrics of predicted class probabilities (see the module docstring).

    Args:
        y_true: true class name per case; ``None``/NaN/"" marks an unknown label (case left out).
        prob: ``(n_cases, n_classes)`` probabilities, columns in the order of ``classes``.
        classes: class names, in the column order of ``prob``.
        positive_class: binary only; the class whose probability is the score. Default: the last
            class in ``classes`` (the last sorted class name).
        threshold: binary only; predicted positive iff ``prob[:, positive] >= threshold``.
            ``None``: the arg-max class is predicted.

    Returns:
        :class:`MetricValues` with ``n, auroc, ap, accuracy, brier, ece`` and, for binary labels,
        ``sensitivity, specificity, ppv, npv, f1``; for multi-class also ``auroc[<class>]``.
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    if k < 2:
        raise ValueError(f"need at least two classes, got {classes}")
    y_all = np.asarray(y_true, dtype=object)
    prob = _check_probabilities(prob, y_all.shape[0], k)
    known = ~is_missing_label(y_all)
    y = np.array([str(v) for v in y_all[known]], dtype=object)
    prob = prob[known]
    unknown = sorted(set(y) - set(classes))
    if unknown:
        raise ValueError(f"true labels {unknown} are not among the classes {classes}")
    if threshold is not None and k != 2:
        raise ValueError("a threshold only applies to a binary label")

    out = MetricValues()
    n_missing = int((~known).sum())
    out.set(
        "n",
        float(y.shape[0]),
        f"{n_missing} case(s) without a true label left out" if n_missing else None,
    )
    if y.shape[0] == 0:
        for name in ("auroc", "ap", "accuracy", "brier", "ece"):
            out.set(name, None, "no cases with a known label")
        return out

    y_idx = np.array([classes.index(v) for v in y])
    present = np.bincount(y_idx, minlength=k) > 0
    onehot = np.eye(k, dtype=bool)[y_idx]

    if k == 2:
        if positive_class is not None and positive_class not in classes:
            raise ValueError(f"positive_class {positive_class!r} is not among {classes}")
        pos = classes.index(positive_class) if positive_class is not None else k - 1
        y_pos = y_idx == pos
        score = prob[:, pos]
        if present.all():
            out.set("auroc", roc_auc_score(y_pos, score))
            out.set("ap", average_precision_score(y_pos, score))
        else:
            why = f"only one class ({classes[int(np.argmax(present))]!r}) present"
            out.set("auroc", None, why)
            out.set("ap", None, why)
        if threshold is None:
            pred_pos = np.argmax(prob, axis=1) == pos
        else:
            pred_pos = score >= threshold
        out.set("accuracy", float(np.mean(pred_pos == y_pos)))
        out.set("brier", brier_score_loss(y_pos, score))
        out.set("ece", expected_calibration_error(y_pos, score))
        operating_point_metrics(y_pos, pred_pos, out)
        return out

    absent = [c for c, p in zip(classes, present, strict=True) if not p]
    if absent:
        why = f"class(es) {absent} absent, one-vs-rest score undefined"
        out.set("auroc", None, why)
        out.set("ap", None, why)
    else:
        out.set(
            "auroc",
            roc_auc_score(y_idx, prob, multi_class="ovr", average="macro", labels=list(range(k))),
        )
        out.set(
            "ap",
            float(np.mean([average_precision_score(onehot[:, j], prob[:, j]) for j in range(k)])),
        )
    for j, c in enumerate(classes):
        if present[j] and present.sum() > 1:
            out.set(f"auroc[{c}]", roc_auc_score(onehot[:, j], prob[:, j]))
        else:
            out.set(
                f"auroc[{c}]", None, "class absent" if not present[j] else "the only class present"
            )
    pred_idx = np.argmax(prob, axis=1)
    out.set("accuracy", float(np.mean(pred_idx == y_idx)))
    out.set("brier", brier_score_loss(y_idx, prob, labels=list(range(k))))
    out.set("ece", expected_calibration_error(pred_idx == y_idx, prob.max(axis=1)))
    return out


def regression_metrics(
    y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray
) -> MetricValues:
    """MAE, RMSE, R² and Pearson r of predictions (cases with an unknown true value left out)."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}"
        )
    if not np.all(np.isfinite(y_pred[np.isfinite(y_true)])):
        raise ValueError("y_pred contains NaN or infinite values")
    known = np.isfinite(y_true)
    y_true, y_pred = y_true[known], y_pred[known]
    out = MetricValues()
    n_missing = int((~known).sum())
    out.set(
        "n",
        float(y_true.shape[0]),
        f"{n_missing} case(s) without a true value left out" if n_missing else None,
    )
    n = y_true.shape[0]
    if n == 0:
        for name in ("mae", "rmse", "r2", "pearson_r"):
            out.set(name, None, "no cases with a known value")
        return out
    out.set("mae", mean_absolute_error(y_true, y_pred))
    out.set("rmse", float(np.sqrt(np.mean((y_true - y_pred) ** 2))))
    if n < 2 or np.ptp(y_true) == 0:
        out.set("r2", None, "fewer than two cases or constant true values")
    else:
        out.set("r2", r2_score(y_true, y_pred))
    if n < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        out.set("pearson_r", None, "fewer than two cases or constant values")
    else:
        out.set("pearson_r", stats.pearsonr(y_true, y_pred).statistic)
    return out
