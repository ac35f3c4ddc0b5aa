"""Percentile bootstrap confidence intervals.

This module owns how cases are resampled and how a bootstrap distribution becomes an interval.

Resampling: cases are drawn with replacement, ``n_resamples`` times, each resample as large as
the data. By default the draw is plain (unstratified). ``strata`` makes it stratified: each
stratum (e.g. each true class) is resampled within itself, so every resample keeps the observed
number of cases per class. The evaluation report stratifies classification metrics by the true
class, as pROC does for AUC: a test set's class counts are usually fixed by its design, and this
way no resample lacks a class (where AUROC would be undefined). Regression and survival metrics
are bootstrapped unstratified.

Large sets (m-out-of-n): with ``size`` below the number of cases ``n``, each resample draws
``m = size`` cases with replacement from all ``n`` (the evaluation sets ``size`` from
``evaluation.max_rows_bootstrap``), so a bootstrap of a million rows costs what one of ``m``
costs. A root-n consistent statistic (every reported one: C-indices, AUCs, Brier scores, means)
varies ``sqrt(n / m)`` times more on ``m`` cases than on ``n``, so
:func:`rescale_distribution` shrinks each resample's deviation from the point value by
``sqrt(m / n)`` before the percentile interval is taken (Bickel and Sakov's m-out-of-n
bootstrap with the root-n rate).

Interval: the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles (numpy's default linear
interpolation) of the metric over the resamples where it is defined. Resamples where it is not
defined are skipped and counted; above ``max_skipped_fraction`` a warning is given and the reason
is recorded, and when fewer than half of the resamples are usable no interval is returned.

Two entry points share the same resamples for the same ``(n, n_resamples, seed, strata)``:

- :func:`bootstrap_ci` calls any ``metric_fn(*arrays)`` once per resample (simple, general);
- :func:`weighted_bootstrap_ci` calls a vectorised ``weighted_fn(weights, *arrays)`` on blocks of
  resamples, where ``weights[b, i]`` is how many times case ``i`` was drawn in resample ``b``.
  The ``weighted_*`` functions below are such vectorised metrics; on a weights row they equal the
  scikit-learn metric on the corresponding resample (the tests check this).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from nervus_lightning.evaluation.metrics import ECE_BINS

# Upper bound on resamples x cases held in memory at once by the vectorised path.
_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class BootstrapCI:
    """A percentile bootstrap interval; unpacks as ``lower, upper = result``."""

    lower: float | None
    upper: float | None
    n_resamples: int
    n_skipped: int
    reason: str | None = None

    def __iter__(self) -> Iterator[float | None]:
        return iter((self.lower, self.upper))


def _resample_blocks(
    n: int,
    n_resamples: int,
    seed: int,
    strata: Sequence | np.ndarray | None,
    size: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``(block, m)`` arrays of case indices; deterministic for the arguments given.

    ``m = n`` (the ordinary bootstrap) unless ``size < n`` is given (m-out-of-n: each stratum
    contributes its share of ``size``, at least one case).
    """
    if n < 1:
        raise ValueError("cannot bootstrap zero cases")
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
    else:
        strata = np.asarray(strata)
        if strata.shape[0] != n:
            raise ValueError(f"strata has {strata.shape[0]} entries for {n} cases")
        _, codes = np.unique(strata, return_inverse=True)
        groups = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    if size is None or size >= n:
        draws = [members.shape[0] for members in groups]
    else:
        draws = [max(1, round(size * members.shape[0] / n)) for members in groups]
    m = sum(draws)
    block = max(1, min(n_resamples, _BLOCK_ELEMENTS // m))
    done = 0
    while done < n_resamples:
        count = min(block, n_resamples - done)
        yield np.concatenate(
            [
                members[rng.integers(0, members.shape[0], size=(count, k))]
                for members, k in zip(groups, draws, strict=True)
            ],
            axis=1,
        )
        done += count


def bootstrap_size(n: int, max_rows: int | None) -> int:
    """Cases per resample: ``n``, or ``max_rows`` when there are more (m-out-of-n)."""
    return n if max_rows is None else min(n, int(max_rows))


def rescale_distribution(values: np.ndarray, point: float | None, m: int, n: int) -> np.ndarray:
    """m-out-of-n bootstrap values mapped to the spread of a statistic on ``n`` cases.

    A root-n consistent statistic computed on ``m`` resampled cases varies ``sqrt(n / m)``
    times more than on ``n``; its deviations from the point value are shrunk by
    ``sqrt(m / n)``, so that the percentile interval of the result is the m-out-of-n interval
    for ``n`` cases. ``m >= n`` or no point value: unchanged.
    """
    if point is None or m >= n:
        return values
    return point + np.sqrt(m / n) * (np.asarray(values, dtype=float) - point)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``(block, n)`` float counts of how often each case appears in each resample."""
    block = indices.shape[0]
    flat = (indices + np.arange(block)[:, None] * n).ravel()
    return np.bincount(flat, minlength=block * n).reshape(block, n).astype(float)


def percentile_interval(
    values: np.ndarray, ci: float = 0.95, max_skipped_fraction: float = 0.1
) -> BootstrapCI:
    """Percentile interval of a bootstrap distribution; NaN entries count as skipped."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    values = np.asarray(values, dtype=float)
    total = values.shape[0]
    valid = values[np.isfinite(values)]
    skipped = total - valid.shape[0]
    reason = None
    if skipped:
        reason = f"{skipped} of {total} resamples skipped (metric undefined there)"
    if valid.shape[0] < max(2, total / 2):
        return BootstrapCI(
            None, None, total, skipped, (reason or "") + "; too few usable resamples, no interval"
        )
    if skipped > max_skipped_fraction * total:
        reason = f"{reason}; the interval is conditional on the metric being defined"
        warnings.warn(f"bootstrap: {reason}", RuntimeWarning, stacklevel=3)
    alpha = (1.0 - ci) / 2.0
    lower, upper = np.quantile(valid, [alpha, 1.0 - alpha])
    return BootstrapCI(float(lower), float(upper), total, skipped, reason)


def bootstrap_distribution(
    metric_fn: Callable[..., float | None],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    strata: Sequence | np.ndarray | None = None,
) -> np.ndarray:
    """``metric_fn`` on each resample (NaN where it is undefined); see :func:`bootstrap_ci`."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("all arrays must have the same number of cases")
    values = []
    with warnings.catch_warnings():
        # Undefined resamples are counted and reported once, not warned about one by one.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for block in _resample_blocks(n, n_resamples, seed, strata):
            for idx in block:
                try:
                    value = metric_fn(*(a[idx] for a in arrays))
                except ValueError:
                    # Older scikit-learn raises where a metric is undefined (one class only).
                    value = None
                values.append(np.nan if value is None else float(value))
    return np.asarray(values)


def bootstrap_distributions(
    metrics_fn: Callable[..., Mapping[str, float | None]],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    strata: Sequence | np.ndarray | None = None,
    size: int | None = None,
) -> dict[str, np.ndarray]:
    """Like :func:`bootstrap_distribution` for a ``metrics_fn`` returning several named metrics
    (all computed on the same resamples; ``None`` values become NaN). ``size``: cases per
    resample when fewer than ``n`` (m-out-of-n; see :func:`rescale_distribution`)."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("all arrays must have the same number of cases")
    rows: list[Mapping[str, float | None]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for block in _resample_blocks(n, n_resamples, seed, strata, size):
            rows.extend(metrics_fn(*(a[idx] for a in arrays)) for idx in block)
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {
        name: np.array([np.nan if row.get(name) is None else float(row[name]) for row in rows])
        for name in names
    }


def bootstrap_ci(
    metric_fn: Callable[..., float | None],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    strata: Sequence | np.ndarray | None = None,
    max_skipped_fraction: float = 0.1,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``metric_fn(*arrays)``, resampling cases (rows) of ``arrays``.

    ``metric_fn`` returning ``None``/NaN or raising ``ValueError`` marks the resample as one where
    the metric is undefined; it is skipped (see the module docstring). scikit-learn's
    ``UndefinedMetricWarning`` is silenced during the loop for that reason.
    """
    values = bootstrap_distribution(
        metric_fn, *arrays, n_resamples=n_resamples, seed=seed, strata=strata
    )
    return percentile_interval(values, ci, max_skipped_fraction)


def weighted_bootstrap_distributions(
    weighted_fn: Callable[..., dict[str, np.ndarray]],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    strata: Sequence | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Distributions of several vectorised metrics computed on the same resamples.

    ``weighted_fn(weights, *arrays)`` returns ``{metric name: (block,) values}``.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    parts: dict[str, list[np.ndarray]] = {}
    for block in _resample_blocks(n, n_resamples, seed, strata):
        for name, values in weighted_fn(resample_counts(block, n), *arrays).items():
            parts.setdefault(name, []).append(np.asarray(values, dtype=float))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def weighted_bootstrap_ci(
    weighted_fn: Callable[..., np.ndarray],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    strata: Sequence | np.ndarray | None = None,
    max_skipped_fraction: float = 0.1,
) -> BootstrapCI:
    """Like :func:`bootstrap_ci` for a vectorised ``weighted_fn(weights, *arrays) -> (block,)``."""
    values = weighted_bootstrap_distributions(
        lambda w, *a: {"metric": weighted_fn(w, *a)},
        *arrays,
        n_resamples=n_resamples,
        seed=seed,
        strata=strata,
    )["metric"]
    return percentile_interval(values, ci, max_skipped_fraction)


# Vectorised metrics. ``w`` is a (block, n) matrix of case weights (bootstrap counts); every
# function returns (block,) values with NaN where the metric is undefined.


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _score_groups(
    w: np.ndarray, y_pos: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per distinct score, scores ascending: two (block, m)."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, np.diff(s) != 0])
    w_sorted = w[:, order]
    pos = y_pos[order].astype(float)
    return (
        np.add.reduceat(w_sorted * pos, starts, axis=1),
        np.add.reduceat(w_sorted * (1.0 - pos), starts, axis=1),
    )


def weighted_auroc(w: np.ndarray, y_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC as the Mann-Whitney probability P(score_pos > score_neg) + 0.5 P(tie)."""
    p, q = _score_groups(w, np.asarray(y_pos, dtype=bool), np.asarray(score, dtype=float))
    neg_below = np.cumsum(q, axis=1) - q
    return _safe_divide((p * (neg_below + 0.5 * q)).sum(axis=1), p.sum(axis=1) * q.sum(axis=1))


def weighted_average_precision(w: np.ndarray, y_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision: sum over distinct thresholds of recall gain x precision."""
    p, q = _score_groups(w, np.asarray(y_pos, dtype=bool), np.asarray(score, dtype=float))
    p, q = p[:, ::-1], q[:, ::-1]  # thresholds from the highest score down
    tp = np.cumsum(p, axis=1)
    fp = np.cumsum(q, axis=1)
    precision = _safe_divide(tp, tp + fp)
    precision = np.where(np.isnan(precision), 0.0, precision)
    return _safe_divide((p * precision).sum(axis=1), p.sum(axis=1))


def weighted_mean(w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Weighted mean of per-case ``values``."""
    return _safe_divide(w @ np.asarray(values, dtype=float), w.sum(axis=1))


def weighted_ece(
    w: np.ndarray, correct: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS
) -> np.ndarray:
    """Expected calibration error (same bins as :func:`metrics.expected_calibration_error`)."""
    confidence = np.asarray(confidence, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    member = np.eye(n_bins)[np.searchsorted(edges[1:-1], confidence)]  # (n, bins)
    gap = w @ (member * np.asarray(correct, dtype=float)[:, None]) - w @ (
        member * confidence[:, None]
    )
    return _safe_divide(np.abs(gap).sum(axis=1), w.sum(axis=1))


def weighted_operating_point(
    w: np.ndarray, y_pos: np.ndarray, pred_pos: np.ndarray
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 per resample."""
    y_pos = np.asarray(y_pos, dtype=bool)
    pred_pos = np.asarray(pred_pos, dtype=bool)
    tp = w @ (y_pos & pred_pos)
    fp = w @ (~y_pos & pred_pos)
    tn = w @ (~y_pos & ~pred_pos)
    fn = w @ (y_pos & ~pred_pos)
    return {
        "sensitivity": _safe_divide(tp, tp + fn),
        "specificity": _safe_divide(tn, tn + fp),
        "ppv": _safe_divide(tp, tp + fp),
        "npv": _safe_divide(tn, tn + fn),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
    }


def weighted_classification_metrics(
    w: np.ndarray,
    y_idx: np.ndarray,
    prob: np.ndarray,
    classes: Sequence[str],
    positive_index: int | None = None,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """The metrics of :func:`metrics.classification_metrics` for each weights row.

    ``y_idx`` are true class indices (no missing labels); ``positive_index`` the binary positive
    column (default: the last).
    """
    k = prob.shape[1]
    onehot = np.eye(k)[y_idx]
    out: dict[str, np.ndarray] = {}
    if k == 2:
        pos = k - 1 if positive_index is None else positive_index
        y_pos = y_idx == pos
        score = prob[:, pos]
        pred_pos = np.argmax(prob, axis=1) == pos if threshold is None else score >= threshold
        out["auroc"] = weighted_auroc(w, y_pos, score)
        out["ap"] = weighted_average_precision(w, y_pos, score)
        out["accuracy"] = weighted_mean(w, pred_pos == y_pos)
        out["brier"] = weighted_mean(w, (score - y_pos) ** 2)
        out["ece"] = weighted_ece(w, y_pos, score)
        out.update(weighted_operating_point(w, y_pos, pred_pos))
        return out
    per_class_auc = [weighted_auroc(w, onehot[:, j], prob[:, j]) for j in range(k)]
    # The mean is NaN when any class is absent from the resample, as the point metric is None.
    out["auroc"] = np.mean(per_class_auc, axis=0)
    for j, c in enumerate(classes):
        out[f"auroc[{c}]"] = per_class_auc[j]
    out["ap"] = np.mean(
        [weighted_average_precision(w, onehot[:, j], prob[:, j]) for j in range(k)], axis=0
    )
    pred_idx = np.argmax(prob, axis=1)
    out["accuracy"] = weighted_mean(w, pred_idx == y_idx)
    out["brier"] = weighted_mean(w, ((prob - onehot) ** 2).sum(axis=1))
    out["ece"] = weighted_ece(w, pred_idx == y_idx, prob.max(axis=1))
    return out


def weighted_regression_metrics(
    w: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray
) -> dict[str, np.ndarray]:
    """The metrics of :func:`metrics.regression_metrics` for each weights row."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    err = y_pred - y_true
    total = w.sum(axis=1)
    # Centre once on the whole-sample means so the variance sums below do not cancel badly.
    yc = y_true - y_true.mean()
    pc = y_pred - y_pred.mean()
    mean_y = _safe_divide(w @ yc, total)
    mean_p = _safe_divide(w @ pc, total)
    var_y = _safe_divide(w @ yc**2, total) - mean_y**2
    var_p = _safe_divide(w @ pc**2, total) - mean_p**2
    cov = _safe_divide(w @ (yc * pc), total) - mean_y * mean_p
    mse = _safe_divide(w @ err**2, total)
    tiny = 1e-12 * max(float(np.var(y_true)), np.finfo(float).tiny)
    tiny_p = 1e-12 * max(float(np.var(y_pred)), np.finfo(float).tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(var_y > tiny, 1.0 - mse / np.where(var_y > tiny, var_y, 1.0), np.nan)
        ok = (var_y > tiny) & (var_p > tiny_p)
        r = np.where(ok, cov / np.sqrt(np.where(ok, var_y * var_p, 1.0)), np.nan)
    return {
        "mae": weighted_mean(w, np.abs(err)),
        "rmse": np.sqrt(mse),
        "r2": r2,
        "pearson_r": np.clip(r, -1.0, 1.0),
    }
