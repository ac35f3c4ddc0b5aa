"""Survival metrics of one evaluated split, from the training split's aggregates only.

This module owns *which* statistics are reported for a survival label, on which times, and when
a statistic cannot be computed. The training split enters only through a
:class:`~nervus_lightning.survival.reference.SurvivalReference` (baseline hazard on a grid,
cut-points, evaluation times, a few rounded percentiles), so a checkpoint that carries no
patient's value can score any data set. Harrell's C comes from
:mod:`nervus_lightning.survival.concordance` (scikit-survival's definition and counts, in
O(n log n)); the log-rank test is scikit-survival's; the IPCW statistics come from
:mod:`nervus_lightning.survival.ipcw`.

Censoring weights: every IPCW statistic (Uno's C, the td-AUCs, the IBS, ``ibs_null`` and so
``ipa``, and the per-cause ones) weighs with the *evaluated split's own* Kaplan-Meier curve of
the censoring times (any cause counting as an event), fitted on the rows it scores (after the
``max_rows_exact`` subsample; per resample in the bootstrap). They are scikit-survival's values
with ``survival_train`` = the evaluated data, and the same in the training run and in
``predict`` at another site.

Reported keys (:func:`survival_metrics`), in this order:

``c_index``
    Harrell's concordance index (as ``concordance_index_censored``) of the risk scores.
``c_index_uno``
    Uno's IPCW concordance index (as ``concordance_index_ipcw``), censoring distribution
    estimated by Kaplan-Meier on the evaluated split, truncated at ``tau``
    (:func:`uno_truncation_time`: the 90th percentile of training follow-up times, capped at the
    evaluated set's largest time). Only pairs whose earlier time is below ``tau`` count, which
    keeps the censoring weights away from the unstable tail.
``td_auc_t<time>``
    Cumulative/dynamic time-dependent AUC (as ``cumulative_dynamic_auc``) at each evaluation
    time, one key per requested time (names from :func:`format_time`), so every split has the
    same columns.
``td_auc_mean``
    scikit-survival's survival-weighted mean of the AUCs over the evaluation times that could be
    computed for this split.
``ibs``
    Integrated Brier score (as ``integrated_brier_score``) of the survival probabilities given
    by the Breslow baseline (stored on a grid that contains these times), on
    :func:`ibs_time_grid`: evenly spaced times between the 10th and 90th percentiles of the
    *training* follow-up times, kept where they lie inside the evaluated set's follow-up (so
    val/test/external scores cover the same period where possible).
``logrank_p``
    p-value of the log-rank test (``compare_survival``) across the risk groups defined by the
    training cut-points (:func:`risk_group_cutpoints`, :func:`assign_risk_groups`).

Times outside the evaluable range: scikit-survival raises for evaluation times outside
``[min, max)`` of the evaluated set's times, and the stored curves end at the training
follow-up (the largest training time, rounded up). Such evaluation times are dropped (their key
is ``None``) instead of raising.
Subjects of the evaluated set followed *beyond* the last time a metric looks at are
administratively censored just after it before computing the statistic (event set to 0, time
capped at the largest training time). This changes no value that scikit-survival could already
compute (those subjects count only as "still event-free" there), but lets an external set with
longer follow-up than the training set be scored instead of raising.

Beside them, for the evaluation report: :func:`null_ibs` (the same IBS of the training
split's covariate-free curve, stored in the reference) and :func:`prediction_accuracy` (the index
of prediction accuracy, 1 - IBS / that), and, for an endpoint with competing causes,
:func:`cause_uno_c`, :func:`cause_td_auc` and :func:`cause_ibs` (each cause's censoring-weighted
concordance, cumulative/dynamic AUC and integrated Brier score; formulas in
:mod:`nervus_lightning.survival.ipcw`).

A metric that cannot be computed (no event in the split, one risk group only, no comparable
pair, no evaluation time inside the follow-up, ...) is ``None``. Pass a dict as ``reasons`` to
:func:`survival_metrics` to receive, for every ``None``, a one-line explanation keyed like the
metric.

The times and rows each statistic looks at are :mod:`nervus_lightning.survival.followup`'s, the
report's further statistics (``null_ibs``, ``prediction_accuracy``, per cause)
:mod:`nervus_lightning.survival.cause_metrics`'s; every name listed in ``__all__`` is importable
from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sksurv.compare import compare_survival
from sksurv.exceptions import NoComparablePairException
from sksurv.util import Surv

from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.cause_metrics import (
    cause_ibs,
    cause_td_auc,
    cause_uno_c,
    null_ibs,
    prediction_accuracy,
)
from nervus_lightning.survival.concordance import concordance_counts, weighted_concordance
from nervus_lightning.survival.followup import (
    IBS_GRID_TOO_SHORT,
    assign_risk_groups,
    censor_after,
    format_time,
    ibs_time_grid,
    inside_followup,
    ipcw_subsample,
    td_auc_key,
    uno_truncation_time,
)
from nervus_lightning.survival.ipcw import (
    CensoringCurve,
    cumulative_dynamic_auc,
    integrated_brier_score,
    uno_concordance,
)
from nervus_lightning.survival.reference import (
    SurvivalReference,
    default_eval_times,
    risk_group_cutpoints,
)

# Above this many rows a split's IPCW metrics use a seeded random subsample (evaluation option
# ``max_rows_exact``; its default in conf/evaluation/default.yaml is the same).
MAX_ROWS_EXACT = 100_000

__all__ = [
    "MAX_ROWS_EXACT",
    "assign_risk_groups",
    "cause_ibs",
    "cause_td_auc",
    "cause_uno_c",
    "ipcw_subsample",
    "null_ibs",
    "prediction_accuracy",
    "default_eval_times",
    "format_time",
    "ibs_time_grid",
    "risk_group_cutpoints",
    "survival_metrics",
    "td_auc_key",
    "uno_truncation_time",
]


def _harrell_c(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, why: dict[str, str]
) -> tuple[float | None, Any]:
    """Harrell's C on every row, and the concordance counts Uno's C may reuse."""
    counts = concordance_counts(event, time, risk)
    no_pair = "no comparable pair (no event before another subject's time)"
    try:
        c_index = weighted_concordance(counts)
    except NoComparablePairException:
        why["c_index"] = no_pair
        return None, counts
    if np.isnan(c_index):
        why["c_index"] = no_pair
        return None, counts
    return c_index, counts


def _logrank_p(
    reference: SurvivalReference,
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    why: dict[str, str],
) -> float | None:
    """Log-rank test across the training-defined risk groups, on every row."""
    groups = assign_risk_groups(risk, reference.risk_cutpoints)
    if np.unique(groups).shape[0] < 2:
        why["logrank_p"] = "all subjects fall into one risk group"
        return None
    try:
        survival_test = Surv.from_arrays(event=event, time=time)
        return float(compare_survival(survival_test, groups)[1])
    except np.linalg.LinAlgError:
        why["logrank_p"] = "log-rank covariance is singular (too few events per group)"
        return None


def _uno_c(
    reference: SurvivalReference,
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    censoring: CensoringCurve,
    tau: float | None,
    counts: Any,
    why: dict[str, str],
) -> float | None:
    """Uno's C truncated at ``tau`` (default :func:`uno_truncation_time`)."""
    max_train = reference.max_time
    tau_used = uno_truncation_time(reference, time) if tau is None else float(tau)
    if tau_used >= max_train:
        why["c_index_uno"] = (
            f"tau={format_time(tau_used)} is not below the largest training time "
            f"{format_time(max_train)}"
        )
        return None
    if not (event & (time < tau_used)).any():
        why["c_index_uno"] = f"no event before tau={format_time(tau_used)}"
        return None
    try:
        return uno_concordance(time, event, risk, censoring, tau_used, counts=counts)
    except NoComparablePairException:
        why["c_index_uno"] = f"no comparable pair before tau={format_time(tau_used)}"
        return None


def _td_aucs(
    reference: SurvivalReference,
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    censoring: CensoringCurve,
    eval_times: np.ndarray,
    why: dict[str, str],
) -> dict[str, float | None]:
    """The cumulative/dynamic AUC at each evaluation time inside the follow-up with an event
    up to it, and their mean (``td_auc_mean``)."""
    max_train = reference.max_time
    auc_keys = [td_auc_key(t) for t in eval_times]
    results: dict[str, float | None] = {}
    inside = inside_followup(eval_times, max_train, time)
    first_event = time[event].min()
    has_case = eval_times >= first_event
    valid = inside & has_case
    for t, key, ok_range, ok_case in zip(eval_times, auc_keys, inside, has_case, strict=True):
        results[key] = None
        if not ok_range:
            why[key] = (
                f"time {format_time(t)} is outside the evaluable follow-up "
                f"[{format_time(time.min())}, {format_time(min(time.max(), max_train))})"
            )
        elif not ok_case:
            why[key] = f"no event up to time {format_time(t)}"
    results["td_auc_mean"] = None
    if not valid.any():
        why["td_auc_mean"] = "no evaluation time could be scored"
        return results
    auc_times = np.unique(eval_times[valid])
    auc_time, auc_event = censor_after(time, event, auc_times.max(), max_train)
    auc, mean_auc = cumulative_dynamic_auc(auc_time, auc_event, risk, auc_times, censoring)
    by_time = dict(zip(auc_times.tolist(), auc.tolist(), strict=True))
    for t, key, ok in zip(eval_times, auc_keys, valid, strict=True):
        if ok:
            results[key] = float(by_time[float(t)])
    results["td_auc_mean"] = float(mean_auc)
    return results


def _ibs(
    reference: SurvivalReference,
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    censoring: CensoringCurve,
    ibs_survival: np.ndarray | None,
    why: dict[str, str],
) -> float | None:
    """Integrated Brier score on the part of ``reference.ibs_grid()`` inside the follow-up."""
    full_grid = reference.ibs_grid()
    kept = inside_followup(full_grid, reference.max_time, time)
    grid = full_grid[kept]
    if grid.shape[0] < 2:
        why["ibs"] = IBS_GRID_TOO_SHORT
        return None
    ibs_time, ibs_event = censor_after(time, event, grid.max(), reference.max_time)
    predicted = reference.survival(risk, grid) if ibs_survival is None else ibs_survival[:, kept]
    return integrated_brier_score(ibs_time, ibs_event, predicted, grid, censoring)


def _none_with_reason(
    keys: Sequence[str], reason: str, results: dict[str, float | None], why: dict[str, str]
) -> None:
    """Mark every metric of ``keys`` as not computed, for ``reason``."""
    for key in keys:
        results[key] = None
        why[key] = reason


def survival_metrics(
    reference: SurvivalReference,
    time: Any,
    event: Any,
    risk: Any,
    eval_times: Sequence[float] | np.ndarray | None = None,
    *,
    reasons: dict[str, str] | None = None,
    tau: float | None = None,
    max_rows_exact: int | None = MAX_ROWS_EXACT,
    seed: int = 0,
    logrank: bool = True,
    ibs_survival: np.ndarray | None = None,
) -> dict[str, float | None]:
    """All survival metrics of one evaluated split (keys and choices: module docstring).

    Args:
        reference: training-split aggregates (baseline hazard, cut-points, evaluation times,
            time grids); no training rows are needed.
        time: the evaluated split's times.
        event: the evaluated split's event indicators (bool or 0/1).
        risk: the evaluated split's risk scores (log hazard ratios; higher = worse).
        eval_times: times of the time-dependent AUCs; ``None`` uses ``reference.eval_times``.
        reasons: if a dict is given, it receives ``metric -> why`` for every ``None`` value.
        tau: truncation time of Uno's C; ``None`` uses :func:`uno_truncation_time`.
        max_rows_exact: above this many rows the IPCW metrics (Uno's C, td-AUC, IBS) are
            computed on the :func:`ipcw_subsample` of this size drawn with ``seed`` (Harrell's
            C and the log-rank test always use every row); ``None``: never.
        logrank: ``False`` leaves ``logrank_p`` out (``None``), e.g. in bootstrap resamples.
        ibs_survival: the rows' predicted survival at ``reference.ibs_grid()``, when the caller
            has it (bootstrap loops); computed otherwise.

    Returns:
        ``{name: float or None}`` with the keys listed in the module docstring.
    """
    time = as_numpy(time)
    event = as_numpy(event) != 0
    risk = as_numpy(risk)
    eval_times = as_numpy(reference.eval_times if eval_times is None else eval_times)
    if not (time.shape == event.shape == risk.shape):
        raise ValueError(
            f"time, event and risk must have the same length, got {time.shape[0]}, "
            f"{event.shape[0]}, {risk.shape[0]}"
        )
    why: dict[str, str] = {}
    results: dict[str, float | None] = {}
    auc_keys = [td_auc_key(t) for t in eval_times]
    keys = ["c_index", "c_index_uno", *auc_keys, "td_auc_mean", "ibs", "logrank_p"]

    general = None
    if time.shape[0] < 2:
        general = f"the evaluated split has {time.shape[0]} subject(s); at least 2 are needed"
    elif not event.any():
        general = "the evaluated split has no event"
    if general is not None:
        _none_with_reason(keys, general, results, why)
        if reasons is not None:
            reasons.update(why)
        return results

    # Harrell's C and the log-rank test, on every row.
    results["c_index"], counts = _harrell_c(time, event, risk, why)
    results["logrank_p"] = None
    if logrank:
        results["logrank_p"] = _logrank_p(reference, time, event, risk, why)
    else:
        why["logrank_p"] = "not computed"

    # The IPCW metrics, on a seeded subsample above max_rows_exact.
    sub = ipcw_subsample(time.shape[0], max_rows_exact, seed)
    if sub is not None:
        time, event, risk = time[sub], event[sub], risk[sub]
        ibs_survival = None if ibs_survival is None else ibs_survival[sub]
        counts = None
        if not event.any():
            ipcw_keys = ["c_index_uno", *auc_keys, "td_auc_mean", "ibs"]
            _none_with_reason(ipcw_keys, "the IPCW subsample has no event", results, why)
            if reasons is not None:
                reasons.update(why)
            return {key: results[key] for key in keys}

    # The evaluated rows' own censoring curve: the weights of every IPCW statistic.
    censoring = CensoringCurve.fit(time, event)
    results["c_index_uno"] = _uno_c(reference, time, event, risk, censoring, tau, counts, why)
    results.update(_td_aucs(reference, time, event, risk, censoring, eval_times, why))
    results["ibs"] = _ibs(reference, time, event, risk, censoring, ibs_survival, why)

    if reasons is not None:
        reasons.update(why)
    return {key: results[key] for key in keys}
