r"""What a survival model keeps from its training split: aggregates only, no patient's value.

This module owns :class:`SurvivalReference`, everything that survival predictions and metrics of
any later data set (validation, test, an external hospital's CSV) need from the training split,
and its two storage forms: float64 tensors for the checkpoint (``torch.load(...,
weights_only=True)`` reads them) and JSON for ``schema.json``. A checkpoint may leave the
hospital, so no stored value is a training patient's time, event, input or risk.

The privacy rule, in two parts:

Times on a grid that is not made of patients' times
    The times of the curves are multiples of the *time step* (:func:`time_step`): the smallest
    "nice" number (1, 2, 2.5 or 5 times a power of ten) that cuts ``[0, largest training time]``
    into at most :data:`GRID_STEPS` steps (e.g. 1 for follow-up up to 100 days, 0.1 for up to
    10 years), or evenly spaced between two stored percentiles. The largest training time is
    rounded *up* to the step. Percentiles are interpolated (``np.percentile``'s linear rule)
    and rounded to :data:`TIME_DIGITS` (2) significant digits (``33.5 -> 34``, ``671.5 ->
    670``). A stored time can equal a patient's
    time only where the data are as coarse as the step (e.g. whole days with a step of one
    day); then many patients share it and it is no one's value.
Each stored step backed by at least ``k`` patients (``min_patients_per_step``, default
:data:`MIN_PATIENTS_PER_STEP` = 10)
    The curves (Breslow's baseline hazard, the null Kaplan-Meier / Aalen-Johansen curves) are
    kept only at grid times chosen so that each step between two kept times holds at least ``k``
    training events and at least ``k`` patients are still followed after it
    (:func:`aggregate_grid`); after the last kept time a curve is flat. Ten is the smallest cell
    size the usual small-cell suppression rules publish (cells of 1 to 9 or 10 are suppressed);
    with fewer events per step a change of the curve would tell how many patients had an event
    in a short interval, and at the end of follow-up, which few were still at risk.

Fields:

``eval_times``
    Times of the survival-probability columns and the time-dependent AUCs (user-given, or the
    25/50/75th percentiles of the training event times, rounded to 2 significant digits).
``risk_cutpoints``
    Quantiles of the training risks that define the risk groups (median for two groups),
    interpolated and rounded to 4 significant digits, so no cut-point is one patient's risk.
``baseline``
    Breslow's baseline cumulative hazard :math:`\hat H_0` at the kept times of
    :func:`aggregate_grid` (first the evaluation times and their median, the calibration time,
    then the multiples of the time step and the integrated-Brier-score grid). At a kept time it
    is exactly the full Breslow estimate; between kept times (and from 0 at time 0 to the first)
    it is read linearly, a constant hazard over each stored step
    (:class:`~nervus_lightning.survival.baseline.BreslowBaseline` ``linear``). With few training
    events the kept times are few (30 events and ``k`` = 10: two or three), and a step reading
    would predict survival 1 for everyone before the first kept time and the previous kept
    value up to each next one. A reference stored before 2026-12-07 has no ``baseline_linear``
    flag and is read as before, in steps, so its predictions are reproduced.
``null_survival``, ``null_cif``
    The covariate-free prediction every case would get, on the integrated-Brier-score grid
    (``ibs_points`` values): the training split's Kaplan-Meier survival (any event) and, for
    an endpoint with competing causes 1..K, the Aalen-Johansen cumulative incidence of each
    cause (``K x ibs_points``), each known at the kept times of :func:`aggregate_grid` and read
    between them as the baseline is (the survival's cumulative hazard ``-log S`` and each
    cumulative incidence linear from 0 at time 0, flat after the last kept time), so the model
    and its reference are compared on the same footing. References stored before 2026-12-07
    hold the step reading. They are the reference of the index of prediction accuracy
    (``ipa``). A reference stored before they existed has ``None``.
scalars
    The largest training time rounded up to the time step, the 10th/90th percentiles of the
    training times (integrated-Brier-score grid; the 90th is Uno's truncation time ``tau``) and
    of the training event times (grid of the td-AUC figure), rounded to 2 significant digits, the
    number of points of the integrated-Brier-score grid, the time step and ``k``.

Not stored: the training times, event indicators, risks, the distinct event times, the
Breslow hazard's jump at each of them, or the censoring curve. The censoring weights of the
IPCW statistics come from the *evaluated* set's own Kaplan-Meier curve of the censoring times
(:mod:`nervus_lightning.survival.metrics`), so they need nothing from training. Checkpoints and
``schema.json`` files written before this rule still load: their censoring curve is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nervus_lightning.survival.baseline import BreslowBaseline, as_numpy, linear_from_zero
from nervus_lightning.survival.ipcw import aalen_johansen, kaplan_meier_at

__all__ = [
    "EVAL_PERCENTILES",
    "GRID_STEPS",
    "IBS_PERCENTILES",
    "MIN_PATIENTS_PER_STEP",
    "UNO_TAU_PERCENTILE",
    "SurvivalReference",
    "aggregate_grid",
    "default_eval_times",
    "risk_group_cutpoints",
    "round_significant",
    "round_to_step",
    "time_step",
]

EVAL_PERCENTILES = (25.0, 50.0, 75.0)
UNO_TAU_PERCENTILE = 90.0
IBS_PERCENTILES = (10.0, 90.0)
PLOT_PERCENTILES = (10.0, 90.0)
#: At most this many time steps from 0 to the largest training time (:func:`time_step`).
GRID_STEPS = 100
#: Default ``k``: training events per stored step of a curve, and patients still followed
#: after its last stored time (``task.min_patients_per_step``).
MIN_PATIENTS_PER_STEP = 10
#: Significant digits of the stored percentiles of the training times.
TIME_DIGITS = 2
#: Significant digits of the stored risk-group cut-points.
RISK_DIGITS = 4

_SCALARS = (
    "max_time",
    "follow_up_p10",
    "follow_up_p90",
    "event_time_p10",
    "event_time_p90",
    "ibs_points",
)
_OPTIONAL_SCALARS = ("time_step", "min_patients_per_step")
#: Stored (1.0) when the baseline is read linearly between its kept times; absent: in steps.
LINEAR_FLAG = "baseline_linear"


def time_step(max_time: float, steps: int = GRID_STEPS) -> float:
    """The smallest of 1, 2, 2.5 and 5 times a power of ten that cuts ``[0, max_time]`` into
    at most ``steps`` steps (1 for ``max_time`` = 60 and 100 steps, 0.1 for 8.3)."""
    max_time = float(max_time)
    if not (np.isfinite(max_time) and max_time > 0):
        return 1.0
    raw = max_time / steps
    power = 10.0 ** np.floor(np.log10(raw))
    for nice in (1.0, 2.0, 2.5, 5.0, 10.0):
        if nice * power >= raw * (1 - 1e-12):
            return float(nice * power)
    return float(10.0 * power)  # pragma: no cover (10 always qualifies)


def round_to_step(values: Any, step: float, up: bool = False) -> np.ndarray:
    """``values`` rounded to the nearest multiple of ``step`` (``up``: the next one at or above),
    written without binary noise (``0.30000000000000004`` is stored as ``0.3``)."""
    scaled = as_numpy(values) / step
    # A value already on the grid (up to float noise) stays there when rounding up.
    count = np.ceil(scaled - 1e-9) if up else np.round(scaled)
    decimals = max(0, int(-np.floor(np.log10(step))) + 3)
    return np.round(count * step, decimals) + 0.0


def round_significant(values: Any, digits: int) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (``289.0 -> 290.0`` for 2)."""
    return np.array([float(f"{v:.{digits}g}") for v in as_numpy(values)], dtype=np.float64)


def default_eval_times(train_time: Any, train_event: Any) -> np.ndarray:
    """25th, 50th and 75th percentiles of the training *event* times (linear interpolation),
    rounded to :data:`TIME_DIGITS` significant digits.

    Duplicates (many ties) and times rounded to 0 are removed, so the result may hold fewer
    than three times.
    """
    time = as_numpy(train_time)
    event = as_numpy(train_event) != 0
    if not event.any():
        raise ValueError("the training split has no event: cannot choose evaluation times")
    times = np.unique(round_significant(np.percentile(time[event], EVAL_PERCENTILES), TIME_DIGITS))
    return times[times > 0]


def risk_group_cutpoints(train_risk: Any, n_groups: int = 2) -> np.ndarray:
    """Cut-points splitting the *training* risks into ``n_groups`` equally sized groups.

    Returns the ``k / n_groups`` quantiles for ``k = 1 .. n_groups - 1`` (the median for two
    groups), interpolated and rounded to :data:`RISK_DIGITS` significant digits (the median of
    an odd count would be one patient's risk). Fitting them on the training split keeps
    val/test groups free of test information.
    """
    if n_groups < 2:
        raise ValueError(f"n_groups must be at least 2, got {n_groups}")
    risk = as_numpy(train_risk)
    return round_significant(np.quantile(risk, np.arange(1, n_groups) / n_groups), RISK_DIGITS)


def aggregate_grid(
    time: Any,
    event: Any,
    candidates: Any,
    k: int = MIN_PATIENTS_PER_STEP,
    anchors: Any = (),
) -> np.ndarray:
    """The times among ``candidates`` and ``anchors`` (times that are not patients' times)
    where a curve of ``(time, event)`` may be stored.

    Walking up the sorted positive times, one is kept when at least ``k`` events lie after the
    previously kept time and up to it, and the walk stops at the first time with fewer than
    ``k`` patients followed beyond it. Every step between kept times (and the first one, from
    0) then aggregates ``k`` events or more, and the curve ends where ``k`` patients are still
    at risk. The ``anchors`` (e.g. the evaluation times) are chosen first, that way; a candidate
    is then kept only where it leaves ``k`` events up to the next kept anchor too. Empty when
    there are fewer than ``k`` events.
    """
    time = as_numpy(time)
    event_time = np.sort(time[as_numpy(event) != 0])
    all_time = np.sort(time)

    def events_up_to(t: float) -> int:
        return int(np.searchsorted(event_time, t, side="right"))

    def followed_after(t: float) -> int:
        return int(all_time.shape[0] - np.searchsorted(all_time, t, side="right"))

    def walk(times: np.ndarray, start: float, end: float) -> list[float]:
        """Greedy walk over ``times`` inside ``(start, end)``, ``k`` events left before
        ``end`` when it is finite."""
        kept: list[float] = []
        before = start
        for c in np.unique(times):
            if c <= start or c >= end:
                continue
            if followed_after(c) < k:
                break
            room = events_up_to(end) - events_up_to(c) if np.isfinite(end) else k
            if events_up_to(c) - events_up_to(before) >= k and room >= k:
                kept.append(float(c))
                before = c
        return kept

    fixed = walk(as_numpy(anchors), 0.0, np.inf)
    # Between and after the anchors: the candidates, each step still holding k events.
    kept = list(fixed)
    bounds = [0.0, *fixed, np.inf]
    candidates = as_numpy(candidates)
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        kept += walk(candidates, low, high)
    return np.unique(np.asarray(kept, dtype=np.float64))


@dataclass
class SurvivalReference:
    """Training-split aggregates of one survival endpoint (module docstring lists each field)."""

    eval_times: np.ndarray
    risk_cutpoints: np.ndarray
    baseline: BreslowBaseline
    max_time: float
    follow_up_p10: float
    follow_up_p90: float
    event_time_p10: float
    event_time_p90: float
    ibs_points: int = 50
    null_survival: np.ndarray | None = None
    null_cif: np.ndarray | None = None
    time_step: float | None = None
    min_patients_per_step: int | None = None

    def __post_init__(self) -> None:
        self.eval_times = as_numpy(self.eval_times)
        self.risk_cutpoints = as_numpy(self.risk_cutpoints)
        if self.null_survival is not None:
            self.null_survival = as_numpy(self.null_survival).reshape(-1)
        if self.null_cif is not None:
            self.null_cif = np.asarray(self.null_cif, dtype=np.float64).reshape(
                -1, int(self.ibs_points)
            )
        for name in (
            "max_time", "follow_up_p10", "follow_up_p90", "event_time_p10", "event_time_p90"
        ):  # fmt: skip
            setattr(self, name, float(getattr(self, name)))
        self.ibs_points = int(self.ibs_points)
        if self.time_step is not None and np.isfinite(self.time_step):
            self.time_step = float(self.time_step)
        else:
            self.time_step = None
        if self.min_patients_per_step is not None and np.isfinite(self.min_patients_per_step):
            self.min_patients_per_step = int(self.min_patients_per_step)
        else:
            self.min_patients_per_step = None

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
        min_patients_per_step: int = MIN_PATIENTS_PER_STEP,
    ) -> SurvivalReference:
        """Aggregates of the training split; the arrays given are not kept.

        Args:
            train_time: training follow-up.
            train_event: training event indicators (or, with competing risks, 0 for censored
                and the cause 1..K).
            train_risk: the trained model's risks on the training split (log hazard ratios).
            eval_times: evaluation times (kept as given: the user's choice, not patients'
                values); ``None`` uses :func:`default_eval_times`.
            risk_cutpoints: risk-group cut-points; ``None`` uses :func:`risk_group_cutpoints`
                with ``n_risk_groups``.
            ibs_points: number of times of the integrated-Brier-score grid.
            min_patients_per_step: ``k`` of :func:`aggregate_grid`.
        """
        time = as_numpy(train_time)
        cause = np.rint(as_numpy(train_event)).astype(np.int64)
        event = cause != 0
        risk = as_numpy(train_risk)
        if not (time.shape == event.shape == risk.shape):
            raise ValueError("train_time, train_event and train_risk must have the same length")
        full = BreslowBaseline.fit(risk, time, event)  # raises when there is no event
        step = time_step(time.max())
        if eval_times is None:
            eval_times = default_eval_times(time, event)
        if risk_cutpoints is None:
            risk_cutpoints = risk_group_cutpoints(risk, n_risk_groups)
        eval_times = as_numpy(eval_times)
        follow_up = round_significant(np.percentile(time, IBS_PERCENTILES), TIME_DIGITS)
        event_range = round_significant(np.percentile(time[event], PLOT_PERCENTILES), TIME_DIGITS)
        max_time = float(round_to_step([time.max()], step, up=True)[0])
        reference = cls(
            eval_times=eval_times,
            risk_cutpoints=risk_cutpoints,
            baseline=full,
            max_time=max_time,
            follow_up_p10=follow_up[0],
            follow_up_p90=follow_up[1],
            event_time_p10=event_range[0],
            event_time_p90=event_range[1],
            ibs_points=ibs_points,
            time_step=step,
            min_patients_per_step=min_patients_per_step,
        )
        ibs_grid = reference.ibs_grid()
        candidates = np.r_[step * np.arange(1, int(round(max_time / step)) + 1), ibs_grid]
        anchors = np.r_[eval_times, np.median(eval_times) if eval_times.size else []]
        kept = aggregate_grid(time, event, candidates, min_patients_per_step, anchors)
        reference.baseline = BreslowBaseline(
            kept, full.baseline_cumulative_hazard(kept), linear=True
        )
        # Kept times leave k patients followed after them, so the curve is above 0 there.
        null_cumhaz = -np.log(np.clip(kaplan_meier_at(time, event, kept), 1e-300, None))
        reference.null_survival = np.exp(-linear_from_zero(ibs_grid, kept, null_cumhaz))
        if cause.max() >= 2:  # competing risks
            cif = aalen_johansen(time, cause, kept, int(cause.max()))
            reference.null_cif = linear_from_zero(ibs_grid, kept, cif)
        return reference

    # -- what the metrics read ----------------------------------------------------------------
    def ibs_grid(self) -> np.ndarray:
        """Integrated-Brier-score grid: evenly spaced between the (rounded) 10th and 90th
        percentiles of the training times (before keeping the times inside an evaluated set's
        follow-up)."""
        return np.unique(np.linspace(self.follow_up_p10, self.follow_up_p90, self.ibs_points))

    def td_auc_plot_grid(self, n_points: int = 20) -> np.ndarray:
        """Times of the td-AUC figure: evenly spaced between the (rounded) 10th and 90th
        percentiles of the training event times."""
        return np.linspace(self.event_time_p10, self.event_time_p90, n_points)

    def survival(self, risk: Any, times: Any) -> np.ndarray:
        """Predicted survival probabilities, shape ``(n, len(times))`` (exact at grid times)."""
        return self.baseline.survival(risk, times)

    # -- storage --------------------------------------------------------------------------------
    def _scalars(self) -> dict[str, float]:
        out = {name: float(getattr(self, name)) for name in _SCALARS}
        out.update(
            {name: float(getattr(self, name)) for name in _OPTIONAL_SCALARS if getattr(self, name)}
        )
        if self.baseline.linear:
            out[LINEAR_FLAG] = 1.0
        return out

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Float64 tensors (``weights_only`` safe): ``eval_times``, ``risk_cutpoints``,
        ``baseline_times``, ``baseline_cumhaz``, ``null_survival`` and ``null_cif`` when set,
        and one 0-d tensor per scalar (``max_time``, ``follow_up_p10``, ...)."""
        arrays = {
            "eval_times": self.eval_times,
            "risk_cutpoints": self.risk_cutpoints,
            "baseline_times": self.baseline.times,
            "baseline_cumhaz": self.baseline.cumhaz,
        }
        for name in ("null_survival", "null_cif"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        out = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in arrays.items()}
        out.update({k: torch.tensor(v, dtype=torch.float64) for k, v in self._scalars().items()})
        return out

    @classmethod
    def _from_fields(cls, get: Any, optional: Any) -> SurvivalReference:
        # A censoring curve stored by an older version (censoring_times, censoring_survival)
        # is ignored: the IPCW statistics use the evaluated set's own.
        scalar = {name: optional(name) for name in _OPTIONAL_SCALARS}
        linear = optional(LINEAR_FLAG)
        return cls(
            eval_times=as_numpy(get("eval_times")),
            risk_cutpoints=as_numpy(get("risk_cutpoints")),
            baseline=BreslowBaseline(
                get("baseline_times"),
                get("baseline_cumhaz"),
                linear=linear is not None and bool(np.asarray(linear).any()),
            ),
            max_time=float(get("max_time")),
            follow_up_p10=float(get("follow_up_p10")),
            follow_up_p90=float(get("follow_up_p90")),
            event_time_p10=float(get("event_time_p10")),
            event_time_p90=float(get("event_time_p90")),
            ibs_points=int(float(get("ibs_points"))),
            null_survival=optional("null_survival"),
            null_cif=optional("null_cif"),
            **{
                k: None if v is None else float(np.asarray(v).reshape(-1)[0])
                for k, v in scalar.items()
            },
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SurvivalReference:
        """Inverse of :meth:`to_tensors` (also reads what older versions stored)."""

        def optional(name: str) -> np.ndarray | None:
            return tensors[name].cpu().numpy() if name in tensors else None

        return cls._from_fields(lambda name: tensors[name].cpu().numpy(), optional)

    JSON_KEYS = ("eval_times", "risk_cutpoints", "baseline", "time_summary")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for a ``schema.json`` label: ``eval_times``, ``risk_cutpoints``,
        ``baseline`` ``{times, cumhaz}``, ``time_summary`` (the scalars) and ``null_survival``
        / ``null_cif`` when set. Python's float repr round-trips exactly."""
        return {
            "eval_times": self.eval_times.tolist(),
            "risk_cutpoints": self.risk_cutpoints.tolist(),
            "baseline": {
                "times": self.baseline.times.tolist(),
                "cumhaz": self.baseline.cumhaz.tolist(),
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
        """Inverse of :meth:`to_json`; extra keys (e.g. a schema label's name, or an older
        version's ``censoring`` curve) are ignored."""
        missing = [k for k in cls.JSON_KEYS if data.get(k) is None]
        if missing:
            raise KeyError(f"survival reference is missing {missing}")
        fields = {
            "eval_times": data["eval_times"],
            "risk_cutpoints": data["risk_cutpoints"],
            "baseline_times": data["baseline"]["times"],
            "baseline_cumhaz": data["baseline"]["cumhaz"],
            **data["time_summary"],
        }

        def optional(name: str) -> np.ndarray | None:
            value = data.get(name, fields.get(name))
            return None if value is None else np.asarray(value, dtype=np.float64)

        return cls._from_fields(lambda name: np.asarray(fields[name], dtype=np.float64), optional)
