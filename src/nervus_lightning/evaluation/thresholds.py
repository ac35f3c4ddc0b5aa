"""Choice of the operating threshold of a binary classifier.

The threshold is chosen once, on the validation split, and then applied unchanged to the test
and external splits: choosing it on the split being reported would make sensitivity and
specificity optimistic. Candidates are the thresholds of ``sklearn.metrics.roc_curve`` (the
distinct scores), with its convention: a case is predicted positive iff ``score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_curve

THRESHOLD_METHODS = ("youden", "sensitivity")


def choose_threshold(
    y_true_binary: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    method: str = "youden",
    target_sensitivity: float = 0.9,
) -> float:
    """Threshold on the positive-class probability, chosen from the ROC curve.

    Args:
        y_true_binary: 1 (or True) for positive cases, 0 for negative ones.
        prob: predicted probability (or any score) of the positive class.
        method: ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 (ties: the
            highest such threshold); ``"sensitivity"``: the highest threshold whose sensitivity
            is at least ``target_sensitivity`` (i.e. the best specificity at that sensitivity).
        target_sensitivity: used by ``method="sensitivity"``, in (0, 1].

    Returns:
        The threshold (one of the observed scores).

    Raises:
        ValueError: unknown method, or both classes are not present.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; use one of {THRESHOLD_METHODS}")
    y = np.asarray(y_true_binary).astype(bool)
    score = np.asarray(prob, dtype=float)
    if y.all() or not y.any():
        raise ValueError("choosing a threshold needs both positive and negative cases")
    # Keep every point: dropping collinear ones could skip the exact sensitivity target.
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    # The first point (threshold = +inf, nobody positive) is never a usable operating point.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    # tpr is non-decreasing as the threshold falls; a tiny tolerance absorbs float rounding
    # (e.g. 9/10 computed as 0.8999999).
    reached = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
    return float(thresholds[int(reached[0])])
