"""Which times and rows a survival metric of an evaluated split is computed on: metric names of
evaluation times, the evaluable follow-up, administrative censoring after the last time looked
at, the truncation time of Uno's C, risk groups and the seeded subsample of the IPCW statistics
(the reasons are in :mod:`nervus_lightning.survival.metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.reference import SurvivalReference


def format_time(t: float) -> str:
    """A time as it appears in metric names: ``365 -> "365"``, ``2.5 -> "2.5"``.

    Positional notation, at most 4 decimals, no trailing zeros or trailing dot.
    """
    return np.format_float_positional(float(t), precision=4, unique=True, trim="-")


def td_auc_key(t: float) -> str:
    """Metric name of the time-dependent AUC at time ``t``, e.g. ``td_auc_t365``."""
    return f"td_auc_t{format_time(t)}"


def assign_risk_groups(risk: Any, cutpoints: Any) -> np.ndarray:
    """Risk group of each subject: 0 = lowest risk; a risk equal to a cut-point goes below it."""
    return np.searchsorted(as_numpy(cutpoints), as_numpy(risk), side="left")


def uno_truncation_time(reference: SurvivalReference, time: Any) -> float:
    """``tau`` of Uno's C: 90th percentile of training times, capped at the evaluated maximum."""
    return float(min(reference.follow_up_p90, as_numpy(time).max()))


def inside_followup(times: np.ndarray, max_train_time: float, time: np.ndarray) -> np.ndarray:
    """Which of ``times`` a statistic of the evaluated ``time`` can be computed at."""
    # scikit-survival needs min(time) <= t < max(time); the stored curves end at the training
    # maximum.
    return (times >= time.min()) & (times < time.max()) & (times < max_train_time)


def ibs_time_grid(reference: SurvivalReference, time: Any) -> np.ndarray:
    """Times for the integrated Brier score (see :mod:`nervus_lightning.survival.metrics`); may
    hold < 2 times."""
    grid = reference.ibs_grid()
    return grid[inside_followup(grid, reference.max_time, as_numpy(time))]


def censor_after(
    time: np.ndarray, event: np.ndarray, horizon: float, cap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Administrative censoring just after ``horizon`` (see
    :mod:`nervus_lightning.survival.metrics`)."""
    beyond = time > horizon
    return np.where(beyond, np.minimum(time, cap), time), event & ~beyond


IBS_GRID_TOO_SHORT = (
    "fewer than 2 grid times between the 10th and 90th percentiles of the training "
    "times lie inside the evaluated follow-up"
)


def ipcw_subsample(n: int, max_rows: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices of the seeded random subsample (without replacement) the IPCW
    metrics use when ``n > max_rows``; ``None``: all rows."""
    if max_rows is None or n <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
