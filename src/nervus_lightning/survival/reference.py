r"""What a survival model keeps from its training split: aggregates only, no patient rows.

This module owns :class:`SurvivalReference`, everything that survival predictions and metrics of
any later data set (validation, test, an external hospital's CSV) need from the training split,
and its two storage forms: float64 tensors for the checkpoint (``torch.load(...,
weights_only=True)`` reads them) and JSON for ``schema.json``. A checkpoint may leave the
hospital, so nothing stored here is a per-patient value:

``eval_times``
    Times of the survival-probability columns and the time-dependent AUCs (user-given, or the
    25/50/75th percentiles of the training event times).
``risk_cutpoints``
    Quantiles of the training risks that define the risk groups (median for two groups).
``baseline``
    Breslow's baseline cumulative hazard :math:`\hat H_0` evaluated on a *time grid*, not at
    every training event time: the evaluation times, their median (the calibration time of the
    report), the integrated-Brier-score grid and ``grid_points`` evenly spaced times from 0 to
    the largest training time. Survival probabilities at grid times are exactly those of the
    full Breslow estimate; between grid times the curve steps at the previous grid time.
``censoring``
    Kaplan-Meier curve of the censoring distribution :math:`\hat G` (the weights of Uno's C,
    the cumulative/dynamic AUC and the Brier score) at the times where it drops, i.e. a
    population curve as drawn in a Kaplan-Meier figure. It is needed exactly, because the
    weights are read at every evaluated subject's own time.
``null_survival``, ``null_cif``
    The covariate-free prediction every case would get, on the integrated-Brier-score grid
    (``ibs_points`` values): the training split's Kaplan-Meier survival (any event) and, for
    an endpoint with competing causes 1..K, the Aalen-Johansen cumulative incidence of each
    cause (``K x ibs_points``). They are the reference of the index of prediction accuracy
    (``ipa``). A reference stored before they existed has ``None``.
scalars
    The largest training time (end of the censoring curve), the 10th/90th percentiles of the
    training times (integrated-Brier-score grid; the 90th is Uno's truncation time ``tau``), the
    10th/90th percentiles of the training event times (grid of the td-AUC figure) and the
    number of points of the integrated-Brier-score grid.

Not stored: the training times, event indicators, risks, the distinct event times, or the
Breslow hazard's jump at each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nervus_lightning.survival.baseline import BreslowBaseline, as_numpy
from nervus_lightning.survival.ipcw import CensoringCurve, kaplan_meier_at

__all__ = [
    "EVAL_PERCENTILES",
    "IBS_PERCENTILES",
    "UNO_TAU_PERCENTILE",
    "SurvivalReference",
    "default_eval_times",
    "risk_group_cutpoints",
]

EVAL_PERCENTILES = (25.0, 50.0, 75.0)
UNO_TAU_PERCENTILE = 90.0
IBS_PERCENTILES = (10.0, 90.0)
PLOT_PERCENTILES = (10.0, 90.0)

_SCALARS = (
    "max_time",
    "follow_up_p10",
    "follow_up_p90",
    "event_time_p10",
    "event_time_p90",
    "ibs_points",
)


def default_eval_times(train_time: Any, train_event: Any) -> np.ndarray:
    """25th, 50th and 75th percentiles of the training *event* times (linear interpolation).

    Duplicates (many ties) are removed, so the result may hold fewer than three times.
    """
    time = as_numpy(train_time)
    event = as_numpy(train_event) != 0
    if not event.any():
        raise ValueError("the training split has no event: cannot choose evaluation times")
    return np.unique(np.percentile(time[event], EVAL_PERCENTILES))


def risk_group_cutpoints(train_risk: Any, n_groups: int = 2) -> np.ndarray:
    """Cut-points splitting the *training* risks into ``n_groups`` equally sized groups.

    Returns the ``k / n_groups`` quantiles for ``k = 1 .. n_groups - 1`` (the median for two
    groups). Fitting them on the training split keeps val/test groups free of test information.
    """
    if n_groups < 2:
        raise ValueError(f"n_groups must be at least 2, got {n_groups}")
    risk = as_numpy(train_risk)
    return np.quantile(risk, np.arange(1, n_groups) / n_groups)


@dataclass
class SurvivalReference:
    """Training-split aggregates of one survival endpoint (module docstring lists each field)."""

    eval_times: np.ndarray
    risk_cutpoints: np.ndarray
    baseline: BreslowBaseline
    censoring: CensoringCurve
    follow_up_p10: float
    follow_up_p90: float
    event_time_p10: float
    event_time_p90: float
    ibs_points: int = 50
    null_survival: np.ndarray | None = None
    null_cif: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.eval_times = as_numpy(self.eval_times)
        self.risk_cutpoints = as_numpy(self.risk_cutpoints)
        if self.null_survival is not None:
            self.null_survival = as_numpy(self.null_survival).reshape(-1)
        if self.null_cif is not None:
            self.null_cif = np.asarray(self.null_cif, dtype=np.float64).reshape(
                -1, int(self.ibs_points)
            )
        for name in ("follow_up_p10", "follow_up_p90", "event_time_p10", "event_time_p90"):
            setattr(self, name, float(getattr(self, name)))
        self.ibs_points = int(self.ibs_points)

    @classmethod
    def fit(
        cls,
        train_time: Any,
        train_event: Any,
        train_risk: Any,
        eval_times: Any = None,
        risk_cutpoints: Any = None,
        n_risk_groups: int = 2,
        ibs_points: int = 50,
        grid_points: int = 100,
    ) -> SurvivalReference:
        """Aggregates of the training split; the arrays given are not kept.

        Args:
            train_time, train_event, train_risk: training follow-up, event indicators (or, with
                competing risks, 0 for censored and the cause 1..K) and the trained model's
                risks (log hazard ratios).
            eval_times: evaluation times; ``None`` uses :func:`default_eval_times`.
            risk_cutpoints: risk-group cut-points; ``None`` uses :func:`risk_group_cutpoints`
                with ``n_risk_groups``.
            ibs_points: number of times of the integrated-Brier-score grid.
            grid_points: evenly spaced times (0 to the largest training time) added to the
                baseline hazard's grid.
        """
        time = as_numpy(train_time)
        cause = np.rint(as_numpy(train_event)).astype(np.int64)
        event = cause != 0
        risk = as_numpy(train_risk)
        if not (time.shape == event.shape == risk.shape):
            raise ValueError("train_time, train_event and train_risk must have the same length")
        full = BreslowBaseline.fit(risk, time, event)  # raises when there is no event
        if eval_times is None:
            eval_times = default_eval_times(time, event)
        if risk_cutpoints is None:
            risk_cutpoints = risk_group_cutpoints(risk, n_risk_groups)
        eval_times = as_numpy(eval_times)
        follow_up = np.percentile(time, IBS_PERCENTILES)
        event_range = np.percentile(time[event], PLOT_PERCENTILES)
        reference = cls(
            eval_times=eval_times,
            risk_cutpoints=risk_cutpoints,
            baseline=full,
            censoring=CensoringCurve.fit(time, event),
            follow_up_p10=follow_up[0],
            follow_up_p90=follow_up[1],
            event_time_p10=event_range[0],
            event_time_p90=event_range[1],
            ibs_points=ibs_points,
        )
        grid = np.unique(
            np.r_[
                eval_times,
                np.median(eval_times) if eval_times.size else [],
                reference.ibs_grid(),
                np.linspace(0.0, time.max(), grid_points),
            ]
        )
        reference.baseline = BreslowBaseline(grid, full.baseline_cumulative_hazard(grid))
        ibs_grid = reference.ibs_grid()
        reference.null_survival = kaplan_meier_at(time, event, ibs_grid)
        if cause.max() >= 2:  # competing risks
            from nervus_lightning.survival.competing import aalen_johansen

            reference.null_cif = aalen_johansen(time, cause, ibs_grid, int(cause.max()))
        return reference

    # -- what the metrics read ----------------------------------------------------------------
    @property
    def max_time(self) -> float:
        """Largest training time."""
        return self.censoring.max_time

    def ibs_grid(self) -> np.ndarray:
        """Integrated-Brier-score grid: evenly spaced between the 10th and 90th percentiles of
        the training times (before keeping the times inside an evaluated set's follow-up)."""
        return np.unique(np.linspace(self.follow_up_p10, self.follow_up_p90, self.ibs_points))

    def td_auc_plot_grid(self, n_points: int = 20) -> np.ndarray:
        """Times of the td-AUC figure: evenly spaced between the 10th and 90th percentiles of
        the training event times."""
        return np.linspace(self.event_time_p10, self.event_time_p90, n_points)

    def survival(self, risk: Any, times: Any) -> np.ndarray:
        """Predicted survival probabilities, shape ``(n, len(times))`` (exact at grid times)."""
        return self.baseline.survival(risk, times)

    # -- storage --------------------------------------------------------------------------------
    def _scalars(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in _SCALARS}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Float64 tensors (``weights_only`` safe): ``eval_times``, ``risk_cutpoints``,
        ``baseline_times``, ``baseline_cumhaz``, ``censoring_times``, ``censoring_survival``,
        ``null_survival`` and ``null_cif`` when set, and one 0-d tensor per scalar
        (``max_time``, ``follow_up_p10``, ...)."""
        arrays = {
            "eval_times": self.eval_times,
            "risk_cutpoints": self.risk_cutpoints,
            "baseline_times": self.baseline.times,
            "baseline_cumhaz": self.baseline.cumhaz,
            "censoring_times": self.censoring.times,
            "censoring_survival": self.censoring.survival,
        }
        for name in ("null_survival", "null_cif"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        out = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in arrays.items()}
        out.update({k: torch.tensor(v, dtype=torch.float64) for k, v in self._scalars().items()})
        return out

    @classmethod
    def _from_fields(cls, get: Any, optional: Any) -> SurvivalReference:
        return cls(
            eval_times=as_numpy(get("eval_times")),
            risk_cutpoints=as_numpy(get("risk_cutpoints")),
            baseline=BreslowBaseline(get("baseline_times"), get("baseline_cumhaz")),
            censoring=CensoringCurve(
                get("censoring_times"), get("censoring_survival"), float(get("max_time"))
            ),
            follow_up_p10=float(get("follow_up_p10")),
            follow_up_p90=float(get("follow_up_p90")),
            event_time_p10=float(get("event_time_p10")),
            event_time_p90=float(get("event_time_p90")),
            ibs_points=int(float(get("ibs_points"))),
            null_survival=optional("null_survival"),
            null_cif=optional("null_cif"),
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SurvivalReference:
        """Inverse of :meth:`to_tensors`."""

        def optional(name: str) -> np.ndarray | None:
            return tensors[name].cpu().numpy() if name in tensors else None

        return cls._from_fields(lambda name: tensors[name].cpu().numpy(), optional)

    JSON_KEYS = ("eval_times", "risk_cutpoints", "baseline", "censoring", "time_summary")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for a ``schema.json`` label: ``eval_times``, ``risk_cutpoints``,
        ``baseline`` ``{times, cumhaz}``, ``censoring`` ``{times, survival}``,
        ``time_summary`` (the scalars) and ``null_survival`` / ``null_cif`` when set. Python's
        float repr round-trips exactly."""
        return {
            "eval_times": self.eval_times.tolist(),
            "risk_cutpoints": self.risk_cutpoints.tolist(),
            "baseline": {
                "times": self.baseline.times.tolist(),
                "cumhaz": self.baseline.cumhaz.tolist(),
            },
            "censoring": {
                "times": self.censoring.times.tolist(),
                "survival": self.censoring.survival.tolist(),
            },
            "time_summary": self._scalars(),
            **{
                name: getattr(self, name).tolist()
                for name in ("null_survival", "null_cif")
                if getattr(self, name) is not None
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SurvivalReference:
        """Inverse of :meth:`to_json`; extra keys (e.g. a schema label's name) are ignored."""
        missing = [k for k in cls.JSON_KEYS if data.get(k) is None]
        if missing:
            raise KeyError(f"survival reference is missing {missing}")
        fields = {
            "eval_times": data["eval_times"],
            "risk_cutpoints": data["risk_cutpoints"],
            "baseline_times": data["baseline"]["times"],
            "baseline_cumhaz": data["baseline"]["cumhaz"],
            "censoring_times": data["censoring"]["times"],
            "censoring_survival": data["censoring"]["survival"],
            **data["time_summary"],
        }

        def optional(name: str) -> np.ndarray | None:
            value = data.get(name)
            return None if value is None else np.asarray(value, dtype=np.float64)

        return cls._from_fields(lambda name: np.asarray(fields[name], dtype=np.float64), optional)
