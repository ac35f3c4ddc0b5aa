"""Reliability (calibration) bins of predicted probabilities: the numbers a reliability diagram
draws (:func:`nervus_lightning.evaluation.plots.plot_reliability`), without matplotlib.

Binary labels are binned on the positive class's probability, multi-class labels on the
top-class probability (as the ``ece`` metric); each bin has its observed share and its Wilson
score interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nervus_lightning.evaluation.intervals import wilson_bin_intervals


def reliability_outcome(
    y_true: Sequence[str],
    prob: np.ndarray,
    classes: Sequence[str],
    positive_class: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 outcome, predicted probability) that a reliability diagram sets against each other.

    Binary: whether the case is of the positive class, and its probability. Multi-class:
    top-label, i.e. whether the arg-max class is right, and its probability (as the ``ece``
    metric).
    """
    y = np.asarray(y_true, dtype=object)
    prob = np.asarray(prob, dtype=float)
    classes = list(classes)
    if len(classes) == 2:
        pos = positive_class if positive_class is not None else classes[-1]
        return (y == pos).astype(float), prob[:, classes.index(pos)]
    arg = np.argmax(prob, axis=1)
    return (np.asarray(classes, dtype=object)[arg] == y).astype(float), prob.max(axis=1)


#: Reliability diagram: at most this many bins, each of at least ``RELIABILITY_MIN_CASES``.
RELIABILITY_MAX_BINS = 10
RELIABILITY_MIN_CASES = 20
#: Bins of fewer cases are drawn as markers, never joined by a line.
RELIABILITY_MIN_LINE_CASES = 3
RELIABILITY_COLUMNS = ["bin", "n", "events", "predicted", "observed", "lower", "upper"]


def reliability_bin_count(n: int, min_cases: int = RELIABILITY_MIN_CASES) -> int:
    """``min(10, n // min_cases)`` bins, at least one."""
    return int(max(1, min(RELIABILITY_MAX_BINS, n // min_cases)))


def reliability_bins(
    outcome: np.ndarray,
    predicted: np.ndarray,
    *,
    min_cases: int = RELIABILITY_MIN_CASES,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Quantile bins of the predicted probability and what each holds.

    The cases are sorted by predicted probability and cut into
    :func:`reliability_bin_count` bins of equal size (sizes differ by at most one; ties are
    broken by order, so every bin keeps its size), i.e. at least ``min_cases`` cases per bin
    when there are that many. Per bin (columns ``RELIABILITY_COLUMNS``): cases, events, mean
    predicted probability, observed share and its Wilson score interval. With distinct
    probabilities and ``n`` a multiple of the bin count, the bins are those of scikit-learn's
    ``calibration_curve(strategy="quantile")``.
    """
    outcome = np.asarray(outcome, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    n = predicted.shape[0]
    if n == 0:
        return pd.DataFrame(columns=RELIABILITY_COLUMNS)
    n_bins = reliability_bin_count(n, min_cases)
    order = np.argsort(predicted, kind="stable")
    member = np.empty(n, dtype=int)
    member[order] = np.arange(n) * n_bins // n
    counts = np.bincount(member, minlength=n_bins)
    events = np.bincount(member, weights=outcome, minlength=n_bins)
    mean_predicted = np.bincount(member, weights=predicted, minlength=n_bins) / counts
    lower, upper = wilson_bin_intervals(events.round().astype(int), counts, ci)
    return pd.DataFrame(
        {
            "bin": np.arange(1, n_bins + 1),
            "n": counts,
            "events": events.round().astype(int),
            "predicted": mean_predicted,
            "observed": events / counts,
            "lower": lower,
            "upper": upper,
        },
        columns=RELIABILITY_COLUMNS,
    )
