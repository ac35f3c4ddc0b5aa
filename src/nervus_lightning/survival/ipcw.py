r"""Censoring distribution and the IPCW statistics that need it: Uno's C, cumulative/dynamic AUC,
Brier score and integrated Brier score, and their versions for one cause of competing risks;
with the nonparametric curves they and the null models rest on (Kaplan-Meier, Aalen-Johansen).

This module owns computing these statistics from a fitted censoring curve
(:class:`CensoringCurve`). :mod:`nervus_lightning.survival.metrics` fits it on the *evaluated*
set itself (its own Kaplan-Meier curve of the censoring times), in a training run as in
``predict`` at another site, so the results do not depend on where they are computed and no
training patient's time is needed. The formulas are written out here (O(n log n) where
scikit-survival compares all pairs); ``tests/test_survival_reference.py`` checks every value
against scikit-survival called with ``survival_train`` = the evaluated data (with tied times
and the times where scikit-survival raises).

Notation: the evaluated set has times :math:`T_i`, event indicators :math:`\delta_i` and risk
scores :math:`\eta_i` (higher = earlier event). :math:`\hat G(t)` is the Kaplan-Meier estimate
of the *censoring* survival function :math:`P(C > t)` (of the evaluated set, see above). Two
risks are tied when :math:`|\eta_i - \eta_j| \le 10^{-8}` (``tied_tol``), as in scikit-survival.

Uno's concordance index, truncated at :math:`\tau`:

.. math::

    C_\tau = \frac{\sum_{i,j} \delta_i \hat G(T_i)^{-2}\, 1\{T_i < \tau\}\, c_{ij}
                   \big(1\{\eta_i > \eta_j\} + \tfrac12 1\{\eta_i \approx \eta_j\}\big)}
                  {\sum_{i,j} \delta_i \hat G(T_i)^{-2}\, 1\{T_i < \tau\}\, c_{ij}},

where :math:`c_{ij} = 1` when :math:`T_j > T_i`, or :math:`T_j = T_i` and :math:`j` is
censored (a pair counts as concordant only when the risks are not tied). These are Harrell's
pairs, so the sums are the per-event counts of
:func:`~nervus_lightning.survival.concordance.concordance_counts` weighted by
:math:`\hat G(T_i)^{-2}`: :math:`O(n \log n)`.

Cumulative/dynamic AUC at time :math:`t` (cases :math:`T_i \le t, \delta_i = 1` weighted by
:math:`1/\hat G(T_i)`; controls :math:`T_j > t`):

.. math::

    \mathrm{AUC}(t) = \frac{\sum_{i \in \text{cases}} \sum_{j \in \text{controls}}
        \hat G(T_i)^{-1} \big(1\{\eta_i > \eta_j\} + \tfrac12 1\{\eta_i \approx \eta_j\}\big)}
        {\big(\sum_{i \in \text{cases}} \hat G(T_i)^{-1}\big)\, |\text{controls}|},

the area under the weighted ROC curve. The mean over times :math:`t_1 < \dots < t_k` weights
each AUC by the drop of the evaluated set's own Kaplan-Meier curve :math:`\hat S`:
:math:`\sum_k \mathrm{AUC}(t_k) (\hat S(t_{k-1}) - \hat S(t_k)) / (1 - \hat S(t_k))` with
:math:`\hat S(t_0) = 1` (the single AUC when :math:`k = 1`).

Brier score at :math:`t` of predicted survival probabilities :math:`\hat S_i(t)`, and its
integral over a grid by the trapezoidal rule, divided by the grid's length:

.. math::

    \mathrm{BS}(t) = \frac1n \sum_i \Big[
        \frac{\hat S_i(t)^2\, 1\{T_i \le t, \delta_i = 1\}}{\hat G(T_i)}
        + \frac{(1 - \hat S_i(t))^2\, 1\{T_i > t\}}{\hat G(t)} \Big],
    \qquad
    \mathrm{IBS} = \frac{1}{t_k - t_1} \int_{t_1}^{t_k} \mathrm{BS}(t)\, dt,

where a zero :math:`\hat G` makes its term 0.

With competing risks (:math:`\delta_i \in \{0, 1, \dots, K\}`, 0 censored, else the cause of the
first event) the Brier score of cause :math:`c`'s predicted cumulative incidence
:math:`\hat F_{c,i}(t)` weighs the subjects the same way, any cause counting as the event for
:math:`\hat G` and for "event by :math:`t`"; the target is 1 only for a cause-:math:`c` failure
by :math:`t` (Graf's score with the weights of Gerds & Schumacher, as for cause-specific
prediction errors in the competing-risks literature):

.. math::

    \mathrm{BS}_c(t) = \frac1n \sum_i \Big[
        \frac{(1\{\delta_i = c\} - \hat F_{c,i}(t))^2\, 1\{T_i \le t, \delta_i \ne 0\}}
             {\hat G(T_i)}
        + \frac{\hat F_{c,i}(t)^2\, 1\{T_i > t\}}{\hat G(t)} \Big].

With one cause it is :math:`\mathrm{BS}(t)` of :math:`\hat S = 1 - \hat F_1`; the integrated
score is integrated as above.

The censoring-weighted concordance of cause :math:`c` truncated at :math:`\tau` (Wolbers et al.,
Biostatistics 2014; Uno's weights): a cause-:math:`c` failure :math:`i` with :math:`T_i < \tau` is
compared with every :math:`j` in Harrell's pairs of the cause-:math:`c` failures (later times, or
the same time without a cause-:math:`c` failure), weight :math:`\hat G(T_i)^{-2}`, and with every
other-cause failure before :math:`T_i`, weight :math:`\hat G(T_i)^{-1} \hat G(T_j)^{-1}`;
concordant when :math:`i` has the higher risk (ties half). With one cause it is Uno's C above;
without censoring and with :math:`\tau` beyond every time, Wolbers' C.

The cumulative/dynamic AUC of cause :math:`c` at :math:`t` (Blanche, Dartigues &
Jacqmin-Gadda, Stat Med 2013, their second definition of controls): cases are the cause-:math:`c`
failures by :math:`t`, weighted :math:`1/\hat G(T_i)`; controls are everyone not failed from
:math:`c` by :math:`t`: the event-free after :math:`t`, weighted :math:`1/\hat G(t)`, and the
other-cause failures by :math:`t`, weighted :math:`1/\hat G(T_j)`. It is the weighted share of
case-control pairs where the case has the higher marker (ties half). With one cause there are no
other-cause failures and it is :math:`\mathrm{AUC}(t)` above.

As in scikit-survival, every evaluation time must lie in ``[min(T), max(T))`` of the evaluated
set, and :math:`\hat G` is undefined after the largest time it was fitted on unless it reached 0
(``ValueError`` in both cases; :mod:`nervus_lightning.survival.metrics` avoids them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sksurv.exceptions import NoComparablePairException

from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.concordance import (
    ConcordanceCounts,
    concordance_counts,
    weighted_concordance,
    weighted_pairs_before,
)

__all__ = [
    "CensoringCurve",
    "aalen_johansen",
    "brier_scores",
    "cause_brier_scores",
    "cause_uno_concordance",
    "cause_dynamic_auc",
    "cumulative_dynamic_auc",
    "integrated_brier_score",
    "integrated_cause_brier_score",
    "kaplan_meier_at",
    "uno_concordance",
]

TIED_TOL = 1e-8


@dataclass
class CensoringCurve:
    r"""Kaplan-Meier estimate :math:`\hat G` of the censoring survival function, kept only at
    the times where it drops.

    Attributes:
        times: the times at which :math:`\hat G` drops (times with at least one censored
            subject), ascending, shape ``(m,)``; may be empty.
        survival: :math:`\hat G` just after each of ``times``, shape ``(m,)``.
        max_time: the largest time of the data; :math:`\hat G` is undefined after it unless it
            is 0.

    Its times are patients' times: it is estimated where it is used, on the evaluated set, and
    never stored.
    """

    times: np.ndarray
    survival: np.ndarray
    max_time: float

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        self.survival = np.asarray(self.survival, dtype=np.float64).reshape(-1)
        self.max_time = float(self.max_time)
        if self.times.shape != self.survival.shape:
            raise ValueError("censoring times and survival must have the same length")

    @classmethod
    def fit(cls, time: Any, event: Any) -> CensoringCurve:
        """Kaplan-Meier of the censoring times, as scikit-survival's ``kaplan_meier_estimator(
        ..., reverse=True)`` (an event at a censoring's time leaves the risk set first), without
        its input checks: bootstrap loops fit one per resample."""
        time = as_numpy(time)
        event = as_numpy(event) != 0
        unique_time, inverse = np.unique(time, return_inverse=True)
        m = unique_time.shape[0]
        events = np.bincount(inverse, weights=event.astype(np.float64), minlength=m)
        total = np.bincount(inverse, minlength=m).astype(np.float64)
        censored = total - events
        at_risk = time.shape[0] - (np.cumsum(total) - total) - events
        ratio = np.divide(censored, at_risk, out=np.zeros(m), where=censored > 0)
        prob = np.cumprod(1.0 - ratio)
        drops = censored > 0
        return cls(unique_time[drops], prob[drops], time.max())

    def __call__(self, times: Any) -> np.ndarray:
        r""":math:`\hat G` at ``times`` (right-continuous step function), shape ``(k,)``."""
        times = as_numpy(times)
        index = np.searchsorted(self.times, times, side="right")
        values = np.concatenate(([1.0], self.survival))[index]
        beyond = times > self.max_time
        if beyond.any():
            if values[beyond][0] > 0:
                raise ValueError(
                    "the censoring distribution is undefined after the largest time "
                    f"{self.max_time:g} of the data it was estimated on"
                )
            values[beyond] = 0.0
        return values


def _check_times(time: np.ndarray, times: Any) -> np.ndarray:
    times = np.unique(as_numpy(times))
    if times.shape[0] == 0 or times.max() >= time.max() or times.min() < time.min():
        raise ValueError(
            f"all times must be within the follow-up of the evaluated set: "
            f"[{time.min():g}; {time.max():g}["
        )
    return times


def _event_weights(censoring: CensoringCurve, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """``1 / G(T_i)`` for events, 0 for censored subjects."""
    g = censoring(time[event])
    if (g == 0).any():
        raise ValueError("censoring survival function is zero at one or more event times")
    weights = np.zeros(time.shape[0])
    weights[event] = 1.0 / g
    return weights


def uno_concordance(
    time: Any,
    event: Any,
    risk: Any,
    censoring: CensoringCurve,
    tau: float,
    tied_tol: float = TIED_TOL,
    counts: ConcordanceCounts | None = None,
) -> float:
    """Uno's C truncated at ``tau`` (formula in the module docstring).

    ``counts``: the :func:`concordance_counts` of these arrays when the caller has them (for
    Harrell's C), so that they are not counted twice.

    Raises:
        NoComparablePairException: no pair with a positive weight.
    """
    time = as_numpy(time)
    event = as_numpy(event) != 0
    risk = as_numpy(risk)
    before = event & (time < tau)
    weights = _event_weights(censoring, time, before) ** 2
    # c_ij and the scores are Harrell's pairs: weighted per-event counts, O(n log n).
    if counts is None:
        counts = concordance_counts(event, time, risk, tied_tol)
    w = weights[counts.index]
    if not (w @ counts.comparable) > 0:
        raise NoComparablePairException("no comparable pair: cannot estimate Uno's C")
    return weighted_concordance(counts, w)


def cause_uno_concordance(
    time: Any,
    cause: Any,
    risk: Any,
    c: int,
    censoring: CensoringCurve,
    tau: float,
    tied_tol: float = TIED_TOL,
) -> float:
    r"""Censoring-weighted concordance of cause ``c`` truncated at ``tau`` (competing risks;
    module docstring), :math:`O(n \log n)`.

    Args:
        cause: 0 (censored) or the cause 1..K of each subject's first event.
        risk: higher = more likely to fail from ``c``, and sooner.
        censoring: Kaplan-Meier of the censoring times, any cause counting as an event.

    Raises:
        NoComparablePairException: no pair with a positive weight.
    """
    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    risk = as_numpy(risk)
    event = cause == c
    case = event & (time < tau)
    inv_g = _event_weights(censoring, time, case)  # 1 / G(T_i) of the scored cases, else 0
    # Later subjects (and other-cause failures at the same time): Harrell's pairs of the
    # cause-c failures, weight G(T_i)^-2.
    counts = concordance_counts(event, time, risk, tied_tol)
    w = inv_g[counts.index] ** 2
    numerator = float(w @ (counts.concordant + 0.5 * counts.tied_risk))
    denominator = float(w @ counts.comparable)
    # Other-cause failures before T_i: weight 1 / (G(T_i) G(T_j)); only those before tau can
    # be before a scored case.
    other = (cause != 0) & ~event & (time < tau)
    if other.any() and case.any():
        total, concordant, tied = weighted_pairs_before(
            time[other],
            risk[other],
            _event_weights(censoring, time[other], np.ones(int(other.sum()), dtype=bool)),
            time[case],
            risk[case],
            tied_tol,
        )
        numerator += float(inv_g[case] @ (concordant + 0.5 * tied))
        denominator += float(inv_g[case] @ total)
    if not denominator > 0:
        raise NoComparablePairException(f"no comparable pair for cause {c}")
    return numerator / denominator


def cumulative_dynamic_auc(
    time: Any,
    event: Any,
    risk: Any,
    times: Any,
    censoring: CensoringCurve,
    tied_tol: float = TIED_TOL,
) -> tuple[np.ndarray, float]:
    """AUC at each of the sorted unique ``times`` and their mean (module docstring).

    Returns:
        ``(auc, mean_auc)``: ``auc`` follows ``np.unique(times)``.
    """
    time = as_numpy(time)
    event = as_numpy(event) != 0
    risk = as_numpy(risk)
    times = _check_times(time, times)
    weights = _event_weights(censoring, time, event)

    auc = np.empty(times.shape[0])
    for k, t in enumerate(times):
        case = event & (time <= t)
        controls = np.sort(risk[time > t])
        lower = np.searchsorted(controls, risk[case] - tied_tol, side="left")
        upper = np.searchsorted(controls, risk[case] + tied_tol, side="right")
        wins = lower + 0.5 * (upper - lower)
        w = weights[case]
        auc[k] = float(w @ wins) / (w.sum() * controls.shape[0])

    if times.shape[0] == 1:
        return auc, float(auc[0])
    surv = kaplan_meier_at(time, event, times)
    drop = -np.diff(surv, prepend=1.0)
    return auc, float((auc * drop).sum() / (1.0 - surv[-1]))


def cause_dynamic_auc(
    time: Any,
    cause: Any,
    marker: Any,
    c: int,
    times: Any,
    censoring: CensoringCurve,
    tied_tol: float = TIED_TOL,
) -> np.ndarray:
    """Cumulative/dynamic AUC of cause ``c`` at each of the sorted unique ``times`` (competing
    risks; module docstring); NaN at a time without a case or without a control.

    Args:
        cause: 0 (censored) or the cause 1..K of each subject's first event.
        marker: ``(n, len(unique times))``, higher = more likely to fail from ``c`` by the time
            (e.g. the predicted CIF there), or ``(n,)`` for one marker at every time.
        censoring: Kaplan-Meier of the censoring times, any cause counting as an event.
    """
    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    times = _check_times(time, times)
    marker = np.asarray(marker, dtype=np.float64)
    if marker.ndim == 1:
        marker = np.repeat(marker[:, None], times.shape[0], axis=1)
    if marker.shape != (time.shape[0], times.shape[0]):
        raise ValueError(f"expected markers of shape {(time.shape[0], times.shape[0])}")
    failed = cause != 0
    # 1 / G(T) of the failures a time can reach.
    inv_g = _event_weights(censoring, time, failed & (time <= times.max()))
    auc = np.full(times.shape[0], np.nan)
    for k, t in enumerate(times):
        case = failed & (cause == c) & (time <= t)
        other = failed & (cause != c) & (time <= t)
        later = time > t
        if not case.any() or not (other.any() or later.any()):
            continue
        g_t = float(censoring([t])[0])
        control_marker = np.concatenate([marker[other, k], marker[later, k]])
        control_weight = np.concatenate([inv_g[other], np.full(int(later.sum()), 1.0 / g_t)])
        order = np.argsort(control_marker, kind="stable")
        sorted_marker = control_marker[order]
        below = np.concatenate([[0.0], np.cumsum(control_weight[order])])
        lower = np.searchsorted(sorted_marker, marker[case, k] - tied_tol, side="left")
        upper = np.searchsorted(sorted_marker, marker[case, k] + tied_tol, side="right")
        wins = below[lower] + 0.5 * (below[upper] - below[lower])
        w = inv_g[case]
        auc[k] = float(w @ wins) / (w.sum() * below[-1])
    return auc


def kaplan_meier_at(time: np.ndarray, event: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Kaplan-Meier survival of ``(time, event)`` at ``times`` (right-continuous), as
    scikit-survival's ``SurvivalFunctionEstimator`` without its input checks (bootstrap loops
    call this thousands of times)."""
    unique_time = np.unique(time)
    inverse = np.searchsorted(unique_time, time)
    deaths = np.bincount(inverse, weights=event.astype(np.float64), minlength=unique_time.shape[0])
    total = np.bincount(inverse, minlength=unique_time.shape[0])
    at_risk = time.shape[0] - (np.cumsum(total) - total)
    surv = np.cumprod(1.0 - deaths / at_risk)
    index = np.searchsorted(unique_time, times, side="right")
    return np.concatenate(([1.0], surv))[index]


def aalen_johansen(time: Any, cause: Any, times: Any, causes: int) -> np.ndarray:
    """Aalen-Johansen CIF of causes 1..``causes`` at ``times``, ``(causes, len(times))``.

    scikit-survival's ``cumulative_incidence_competing_risks`` read as a right-continuous step
    function (0 before the first time); a cause without events in these cases has CIF 0.
    """
    from sksurv.nonparametric import cumulative_incidence_competing_risks

    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    times = as_numpy(times)
    out = np.zeros((causes, times.shape[0]))
    if not (cause != 0).any():
        return out
    unique, cif = cumulative_incidence_competing_risks(cause, time)
    position = np.searchsorted(unique, times, side="right") - 1
    for c in range(1, min(causes, cif.shape[0] - 1) + 1):
        out[c - 1] = np.where(position >= 0, cif[c, np.maximum(position, 0)], 0.0)
    return out


def _ipcw_brier(
    time: np.ndarray,
    event: np.ndarray,
    outcome: np.ndarray,
    predicted: Any,
    times: Any,
    censoring: CensoringCurve,
) -> tuple[np.ndarray, np.ndarray]:
    """IPCW Brier score of ``predicted`` ``P(outcome by t)`` at each of ``times``: a subject with
    an event (of any kind) by ``t`` weighs ``1 / G(T_i)`` and its target is ``outcome``; one
    still event-free after ``t`` weighs ``1 / G(t)`` with target 0; one censored before ``t``
    weighs nothing."""
    times = _check_times(time, times)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(time.shape[0], -1)
    if predicted.shape[1] != times.shape[0]:
        raise ValueError(f"expected {times.shape[0]} prediction columns, got {predicted.shape[1]}")
    with np.errstate(divide="ignore"):
        inv_g_times = np.where(censoring(times) > 0, 1.0 / censoring(times), 0.0)
        g_subjects = censoring(time)
        inv_g_subjects = np.where(g_subjects > 0, 1.0 / g_subjects, 0.0)
    case = event[:, None] & (time[:, None] <= times[None, :])
    control = time[:, None] > times[None, :]
    target = case & outcome[:, None]
    weights = case * inv_g_subjects[:, None] + control * inv_g_times[None, :]
    return times, ((target - predicted) ** 2 * weights).mean(axis=0)


def _integrate(times: np.ndarray, scores: np.ndarray) -> float:
    if times.shape[0] < 2:
        raise ValueError("at least two time points are needed for the integrated Brier score")
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def brier_scores(
    time: Any, event: Any, survival: Any, times: Any, censoring: CensoringCurve
) -> tuple[np.ndarray, np.ndarray]:
    """Brier score at each of the sorted unique ``times`` (module docstring).

    Args:
        survival: predicted survival probabilities, shape ``(n, len(unique times))``.

    Returns:
        ``(times, scores)``.
    """
    time = as_numpy(time)
    event = as_numpy(event) != 0
    survival = np.asarray(survival, dtype=np.float64).reshape(time.shape[0], -1)
    return _ipcw_brier(time, event, event, 1.0 - survival, times, censoring)


def integrated_brier_score(
    time: Any, event: Any, survival: Any, times: Any, censoring: CensoringCurve
) -> float:
    """Trapezoidal integral of :func:`brier_scores` over ``times``, divided by its length."""
    return _integrate(*brier_scores(time, event, survival, times, censoring))


def cause_brier_scores(
    time: Any, cause: Any, cif: Any, c: int, times: Any, censoring: CensoringCurve
) -> tuple[np.ndarray, np.ndarray]:
    """Brier score of cause ``c``'s predicted cumulative incidence at each of ``times``
    (competing risks; module docstring).

    Args:
        cause: 0 (censored) or the cause 1..K of each subject's first event.
        cif: predicted cumulative incidence of cause ``c``, shape ``(n, len(unique times))``.
        censoring: Kaplan-Meier of the censoring times, any cause counting as an event.

    Returns:
        ``(times, scores)``.
    """
    time = as_numpy(time)
    cause = np.rint(as_numpy(cause)).astype(np.int64)
    return _ipcw_brier(time, cause != 0, cause == c, cif, times, censoring)


def integrated_cause_brier_score(
    time: Any, cause: Any, cif: Any, c: int, times: Any, censoring: CensoringCurve
) -> float:
    """Trapezoidal integral of :func:`cause_brier_scores` over ``times``, divided by its
    length."""
    return _integrate(*cause_brier_scores(time, cause, cif, c, times, censoring))
