r"""Breslow estimate of the baseline cumulative hazard of a Cox / DeepSurv model.

This module owns turning risk scores (log hazard ratios) into survival probabilities. The
baseline is fitted once, on the training split, from the trained model's risks:

.. math::

    \hat H_0(t) = \sum_{t_j \le t} \frac{d_j}{\sum_{i: T_i \ge t_j} e^{\eta_i}},
    \qquad
    \hat H(t \mid \eta) = \hat H_0(t)\, e^{\eta},
    \qquad
    \hat S(t \mid \eta) = \exp\big(-\hat H_0(t)\, e^{\eta}\big),

with :math:`t_j` the distinct training event times and :math:`d_j` the number of events at
:math:`t_j`. Fitted (:meth:`BreslowBaseline.fit`), :math:`\hat H_0` is a right-continuous step
function: 0 before the first event time, and constant after the last one (a prediction beyond
the training follow-up is an extrapolation the user should not lean on; scikit-survival raises
there instead, and before its first time point it returns the first step's value rather than
0). The risks are used as given, without centring, so ``risk`` must be on the same scale at fit
and prediction time; this matches scikit-survival's ``CoxPHSurvivalAnalysis``
(``tests/test_survival_metrics.py`` checks the values against it).

:meth:`BreslowBaseline.fit` keeps :math:`\hat H_0` at every distinct training event time, which
is patient-level information; what a checkpoint stores is the same curve evaluated on a coarse
time grid, each step holding several events (a ``BreslowBaseline`` whose ``times`` are the grid,
read linearly between them: ``linear=True``; see
:class:`~nervus_lightning.survival.reference.SurvivalReference`).
:meth:`BreslowBaseline.to_tensors` / :meth:`BreslowBaseline.from_tensors` give plain tensors that
``torch.load(..., weights_only=True)`` can read (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BreslowBaseline", "as_numpy", "linear_from_zero"]


def as_numpy(values: Any, dtype: Any = np.float64) -> np.ndarray:
    """``values`` (array-like, or a tensor on any device) as a 1-D numpy array of ``dtype``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1)


def linear_from_zero(times: Any, known: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A curve known at ``known`` (``values[..., i]`` at ``known[i]``) and 0 at time 0, read at
    ``times``: linear between known times, 0 before time 0, flat after the last; the shape of
    ``values`` with its last axis ``len(times)``."""
    times, values = as_numpy(times), np.asarray(values, dtype=np.float64)
    lead = values.shape[:-1]
    rows = values.reshape(int(np.prod(lead)), values.shape[-1])
    read = [np.interp(times, np.r_[0.0, known], np.r_[0.0, row], left=0.0) for row in rows]
    return np.asarray(read).reshape(lead + (times.shape[0],))


@dataclass
class BreslowBaseline:
    r"""Baseline cumulative hazard, known at ``times``.

    Attributes:
        times: where the curve is known, ascending, shape ``(m,)``: the distinct training event
            times after :meth:`fit`, or a coarser time grid.
        cumhaz: :math:`\hat H_0` at those times (non-decreasing), shape ``(m,)``.
        linear: how the curve is read between two times. ``False`` (what :meth:`fit` gives,
            where ``times`` are every event time): a right-continuous step function, the value
            of the earlier time, 0 before the first, which *is* Breslow's estimate. ``True``
            (a curve stored on a coarse grid, each step holding several events): linear from
            ``(0, 0)`` through the stored points, i.e. a constant hazard between two stored
            times (a piecewise-exponential reading). A step reading of a coarse grid would
            hold every prediction at the previous stored value up to the next one, so
            survival would be overstated everywhere between them (by a whole step's events
            just before each stored time). Both readings are flat after the last time.
    """

    times: np.ndarray
    cumhaz: np.ndarray
    linear: bool = False

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        self.cumhaz = np.asarray(self.cumhaz, dtype=np.float64).reshape(-1)
        if self.times.shape != self.cumhaz.shape:
            raise ValueError(
                f"times and cumhaz must have the same length, got {self.times.shape[0]} "
                f"and {self.cumhaz.shape[0]}"
            )
        if np.any(np.diff(self.times) <= 0):
            raise ValueError("times must be strictly increasing")

    @classmethod
    def fit(cls, risk: Any, time: Any, event: Any) -> BreslowBaseline:
        """Fit the Breslow estimator on training risks, times and events (any array-like)."""
        risk = as_numpy(risk)
        time = as_numpy(time)
        event = as_numpy(event, dtype=np.float64) != 0
        if not (risk.shape == time.shape == event.shape):
            raise ValueError(
                f"risk, time and event must have the same length, got {risk.shape[0]}, "
                f"{time.shape[0]}, {event.shape[0]}"
            )
        if not event.any():
            raise ValueError("cannot fit a baseline hazard without any event")

        order = np.argsort(time, kind="stable")
        time, risk, event = time[order], risk[order], event[order]
        # log sum_{k >= i} exp(risk_k), computed from the end without overflow.
        log_tail = np.logaddexp.accumulate(risk[::-1])[::-1]
        event_times, n_events = np.unique(time[event], return_counts=True)
        # Risk set of t_j: every subject with T >= t_j, i.e. from the first sorted position of t_j.
        start = np.searchsorted(time, event_times, side="left")
        increments = n_events * np.exp(-log_tail[start])
        return cls(times=event_times, cumhaz=np.cumsum(increments))

    def baseline_cumulative_hazard(self, times: Any) -> np.ndarray:
        r""":math:`\hat H_0` at ``times``, shape ``(k,)``: a right-continuous step function, or
        linear between the stored times when :attr:`linear` (class docstring)."""
        times = as_numpy(times)
        if self.linear:
            return linear_from_zero(times, self.times, self.cumhaz)
        index = np.searchsorted(self.times, times, side="right") - 1
        padded = np.concatenate(([0.0], self.cumhaz))
        return padded[index + 1]

    def cumulative_hazard(self, risk: Any, times: Any) -> np.ndarray:
        r""":math:`\hat H_0(t) e^{\eta}` for every subject and time, shape ``(n, len(times))``."""
        risk = as_numpy(risk)
        h0 = self.baseline_cumulative_hazard(times)
        # In log space so that exp(risk) cannot overflow into inf * 0 = NaN; a true overflow
        # (huge risk, H0 > 0) is an infinite hazard, i.e. survival 0.
        with np.errstate(divide="ignore", over="ignore"):
            return np.exp(np.log(h0)[None, :] + risk[:, None])

    def survival(self, risk: Any, times: Any) -> np.ndarray:
        r""":math:`\exp(-\hat H_0(t) e^{\eta})`, shape ``(n, len(times))``."""
        return np.exp(-self.cumulative_hazard(risk, times))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Float64 tensors ``times`` and ``cumhaz`` for a checkpoint (``weights_only`` safe), and
        ``linear`` (1.0) when the curve is read linearly."""
        out = {
            "times": torch.from_numpy(self.times.copy()),
            "cumhaz": torch.from_numpy(self.cumhaz.copy()),
        }
        if self.linear:
            out["linear"] = torch.tensor(1.0, dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> BreslowBaseline:
        """Inverse of :meth:`to_tensors` (no ``linear``: a step function)."""
        linear = "linear" in tensors and bool(tensors["linear"].item())
        return cls(as_numpy(tensors["times"]), as_numpy(tensors["cumhaz"]), linear=linear)
