"""The evaluation report's further survival statistics, beside those of
:func:`~nervus_lightning.survival.metrics.survival_metrics`: the integrated Brier score of the
training split's covariate-free prediction (:func:`null_ibs`) and the index of prediction
accuracy (:func:`prediction_accuracy`), and, for an endpoint with competing causes, each cause's
censoring-weighted concordance, cumulative/dynamic AUC and integrated Brier score (formulas in
:mod:`nervus_lightning.survival.ipcw`). Each returns its value with the reason when it is None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sksurv.exceptions import NoComparablePairException

from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.followup import (
    IBS_GRID_TOO_SHORT,
    censor_after,
    format_time,
    inside_followup,
    uno_truncation_time,
)
from nervus_lightning.survival.ipcw import (
    CensoringCurve,
    cause_dynamic_auc,
    cause_uno_concordance,
    integrated_cause_brier_score,
)
from nervus_lightning.survival.reference import SurvivalReference


def cause_ibs(
    reference: SurvivalReference, time: Any, cause: Any, cif: Any, c: int
) -> tuple[float | None, str | None]:
    """Integrated Brier score of cause ``c``'s predicted cumulative incidence (competing risks;
    :func:`~nervus_lightning.survival.ipcw.cause_brier_scores`) on the times of ``ibs``, with the
    same administrative censoring after the grid; ``(None, why)`` when it cannot be computed.

    Args:
        cause: 0 (censored) or the cause 1..K of the first event, per subject.
        cif: the subjects' predicted CIF of cause ``c`` at ``reference.ibs_grid()``.
    """
    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    full_grid = reference.ibs_grid()
    kept = inside_followup(full_grid, reference.max_time, time)
    grid = full_grid[kept]
    if time.shape[0] < 2 or not (cause != 0).any():
        return None, "the evaluated split has fewer than 2 subjects or no event"
    if grid.shape[0] < 2:
        return None, IBS_GRID_TOO_SHORT
    censoring = CensoringCurve.fit(time, cause != 0)
    capped, event = censor_after(time, cause != 0, grid.max(), reference.max_time)
    cif = np.asarray(cif, dtype=np.float64)[:, kept]
    value = integrated_cause_brier_score(capped, np.where(event, cause, 0), cif, c, grid, censoring)
    return value, None


def null_ibs(
    reference: SurvivalReference, time: Any, event: Any, cause: int | None = None
) -> tuple[float | None, str | None]:
    """Integrated Brier score of the covariate-free prediction stored in ``reference`` (the
    training Kaplan-Meier survival; with ``cause``, the training Aalen-Johansen incidence of
    that cause, ``event`` then holding the causes), on the rows, grid and censoring of ``ibs``
    (or ``ibs_cause<c>``); ``(None, why)`` when it cannot be computed."""
    null = reference.null_survival if cause is None else reference.null_cif
    if null is None or (cause is not None and cause > null.shape[0]):
        return None, "the survival reference was stored without the training null model"
    time = as_numpy(time)
    curve = null if cause is None else null[cause - 1]
    predicted = np.broadcast_to(curve, (time.shape[0], curve.shape[0]))
    if cause is None:  # one cause, any event: the Brier score of 1 - the survival curve
        return cause_ibs(reference, time, as_numpy(event) != 0, 1.0 - predicted, 1)
    return cause_ibs(reference, time, event, predicted, cause)


def prediction_accuracy(ibs: float | None, null: float | None) -> float | None:
    """Index of prediction accuracy (Kattan & Gerds 2018): ``1 - ibs / null``, None when
    either is missing or the null model's score is 0."""
    if ibs is None or null is None or not null > 0:
        return None
    return 1.0 - ibs / null


def cause_uno_c(
    reference: SurvivalReference, time: Any, cause: Any, risk: Any, c: int
) -> tuple[float | None, str | None]:
    """Censoring-weighted concordance of cause ``c`` (competing risks;
    :func:`~nervus_lightning.survival.ipcw.cause_uno_concordance`) of the cause's risk scores,
    truncated at ``tau`` of Uno's C (:func:`uno_truncation_time`); ``(None, why)`` when it
    cannot be computed."""
    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    tau = uno_truncation_time(reference, time)
    if tau >= reference.max_time:
        return None, (
            f"tau={format_time(tau)} is not below the largest training time "
            f"{format_time(reference.max_time)}"
        )
    if not ((cause == c) & (time < tau)).any():
        return None, f"no cause-{c} failure before tau={format_time(tau)}"
    try:
        censoring = CensoringCurve.fit(time, cause != 0)
        return cause_uno_concordance(time, cause, risk, c, censoring, tau), None
    except NoComparablePairException:
        return None, f"no comparable pair before tau={format_time(tau)}"


def cause_td_auc(
    reference: SurvivalReference, time: Any, cause: Any, cif: Any, c: int
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Cause ``c``'s cumulative/dynamic AUC (competing risks;
    :func:`~nervus_lightning.survival.ipcw.cause_dynamic_auc`) at each evaluation time, the
    marker being the predicted CIF of cause ``c`` there; keys ``td_auc_cause<c>_t<time>``.

    Args:
        cause: 0 (censored) or the cause 1..K of the first event, per subject.
        cif: the subjects' predicted CIF of cause ``c`` at ``reference.eval_times``.

    Returns:
        ``(values, reasons)``: a value per evaluation time, and why for each ``None``.
    """
    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    eval_times = as_numpy(reference.eval_times)
    keys = [f"td_auc_cause{c}_t{format_time(t)}" for t in eval_times]
    values: dict[str, float | None] = dict.fromkeys(keys)
    why: dict[str, str] = {}
    inside = inside_followup(eval_times, reference.max_time, time)
    for key, t, ok in zip(keys, eval_times, inside, strict=True):
        if not ok:
            why[key] = (
                f"time {format_time(t)} is outside the evaluable follow-up "
                f"[{format_time(time.min())}, {format_time(min(time.max(), reference.max_time))})"
            )
    if inside.any():
        times = eval_times[inside]
        cif = np.asarray(cif, dtype=np.float64)[:, inside]
        censoring = CensoringCurve.fit(time, cause != 0)
        auc = cause_dynamic_auc(time, cause, cif, c, times, censoring)
        by_time = dict(zip(np.unique(times).tolist(), auc.tolist(), strict=True))
        for key, t, ok in zip(keys, eval_times, inside, strict=True):
            if ok and np.isfinite(by_time[float(t)]):
                values[key] = float(by_time[float(t)])
            elif ok:
                why[key] = f"no cause-{c} failure, or no one else, up to time {format_time(t)}"
    return values, why
