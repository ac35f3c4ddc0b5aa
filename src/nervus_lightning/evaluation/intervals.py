"""Closed-form confidence intervals: proportions and the AUROC.

This module owns the intervals of the metrics that are a count out of a count (sensitivity,
specificity, PPV, NPV, accuracy at the operating threshold) and of the AUROC. A percentile
bootstrap (:mod:`nervus_lightning.evaluation.bootstrap`) collapses to zero width at the boundary:
91 of 91 positives found resample to 91 of 91 every time, which says nothing about the 92nd case.
The intervals below are score intervals, whose width is set by the variance at the candidate
value rather than at the estimate, so they stay open at 0 and 1.

- Proportions (``k`` of ``n``), ``method="wilson"`` (default): the Wilson score interval, the set
  of ``p`` with ``|k/n - p| <= z sqrt(p (1 - p) / n)``, i.e. ``(k + z²/2) / (n + z²) ± z sqrt(n)
  / (n + z²) sqrt(p̂ (1 - p̂) + z² / (4 n))``. Its coverage is close to nominal for small ``n``
  and at ``k = 0`` or ``k = n`` (Brown, Cai and DasGupta, Stat Sci 2001). ``method="exact"``:
  Clopper-Pearson, the beta quantiles ``B(α/2; k, n - k + 1)`` and ``B(1 - α/2; k + 1, n - k)``,
  which never under-cover and are wider. Both agree with
  ``scipy.stats.binomtest(k, n).proportion_ci(method=...)`` (the tests check this).
- AUROC with ``m`` positive and ``n`` negative cases: Newcombe's score interval (Stat Med 2006;
  25:559-573), the set of ``θ`` with ``(Â - θ)² <= z² V(θ)``, where ``V`` is the Hanley-McNeil
  variance (Radiology 1982; 143:29-36) of the exponential model,
  ``V(θ) = θ (1 - θ) / (m n) · [1 + N* ((1 - θ) / (2 - θ) + θ / (1 + θ))]``, with Newcombe's
  ``N* = (m + n) / 2 - 1`` in place of Hanley and McNeil's ``m - 1`` and ``n - 1``. ``V`` vanishes
  at 0 and 1 but not in between, so an AUROC of 1.000 on 91 cases gets a lower limit well below 1
  (and an upper limit of 1). Chosen over a DeLong interval because DeLong's variance is 0 when
  the classes are separated, and over a logit-DeLong because that is undefined there without an
  ad-hoc correction; Newcombe's method needs only the two class sizes and is established (it is
  among the asymptotic methods he evaluated and found to cover well). Ties in the scores are
  counted as half, as in the point estimate; the variance assumes no ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

#: Methods for proportions (``evaluation.proportion_ci``).
PROPORTION_METHODS = ("wilson", "exact")

#: The words the report and ``metrics.csv`` (``ci_method``) use for each kind of interval.
METHOD_NAMES = {
    "wilson": "Wilson score",
    "exact": "Clopper-Pearson exact",
    "newcombe": "Newcombe score (Hanley-McNeil variance)",
    "bootstrap": "percentile bootstrap",
}


@dataclass(frozen=True)
class Interval:
    """A closed-form interval; ``lower``/``upper`` are ``None`` where it is undefined."""

    lower: float | None
    upper: float | None
    method: str
    reason: str | None = None

    def __iter__(self):
        return iter((self.lower, self.upper))


def _z(ci: float) -> float:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    return float(stats.norm.ppf((1.0 + ci) / 2.0))


def proportion_interval(k: int, n: int, ci: float = 0.95, method: str = "wilson") -> Interval:
    """Interval of the proportion ``k / n`` (see the module docstring); no cases: empty."""
    if method not in PROPORTION_METHODS:
        raise ValueError(f"method must be one of {PROPORTION_METHODS}, got {method!r}")
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(None, None, method, "no cases, no interval")
    if method == "exact":
        alpha = 1.0 - ci
        _z(ci)  # checks ci
        lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2.0, k, n - k + 1))
        upper = 1.0 if k == n else float(stats.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
        return Interval(lower, upper, method)
    z = _z(ci)
    p = k / n
    z2 = z * z
    centre = (k + z2 / 2.0) / (n + z2)
    half = z * math.sqrt(n) / (n + z2) * math.sqrt(p * (1.0 - p) + z2 / (4.0 * n))
    # At k = 0 (k = n) the lower (upper) limit is exactly 0 (1), up to rounding.
    lower = 0.0 if k == 0 else max(0.0, centre - half)
    upper = 1.0 if k == n else min(1.0, centre + half)
    return Interval(lower, upper, method)


def hanley_mcneil_variance(
    auc: float, n_positive: int, n_negative: int, n_star: float | None = None
) -> float:
    """Variance of the AUROC under Hanley and McNeil's exponential model.

    ``n_star=None``: their formula, ``[A(1-A) + (m-1)(Q1-A²) + (n-1)(Q2-A²)] / (m n)`` with
    ``Q1 = A/(2-A)``, ``Q2 = 2A²/(1+A)``. A number: Newcombe's version, ``n_star`` in place of
    both ``m - 1`` and ``n - 1``.
    """
    a = float(auc)
    m, n = int(n_positive), int(n_negative)
    q1_term = a * (1.0 - a) ** 2 / (2.0 - a)  # Q1 - A²
    q2_term = a * a * (1.0 - a) / (1.0 + a)  # Q2 - A²
    wm, wn = (m - 1, n - 1) if n_star is None else (n_star, n_star)
    return (a * (1.0 - a) + wm * q1_term + wn * q2_term) / (m * n)


def auroc_interval(auc: float, n_positive: int, n_negative: int, ci: float = 0.95) -> Interval:
    """Newcombe's score interval of an AUROC (see the module docstring)."""
    m, n = int(n_positive), int(n_negative)
    if m < 1 or n < 1:
        return Interval(None, None, "newcombe", "needs cases of both classes")
    a = float(auc)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"auc must be in [0, 1], got {auc}")
    z2 = _z(ci) ** 2
    n_star = (m + n) / 2.0 - 1.0

    def spread(theta: float) -> float:  # V(theta) / (theta (1 - theta))
        return (1.0 + n_star * ((1.0 - theta) / (2.0 - theta) + theta / (1.0 + theta))) / (m * n)

    def excess(theta: float) -> float:
        return (a - theta) ** 2 - z2 * theta * (1.0 - theta) * spread(theta)

    # excess(0) = a² and excess(1) = (1 - a)², excess(a) < 0 inside (0, 1): one root on each
    # side. At a = 1 (a = 0) the root at the estimate itself is divided out, leaving the other.
    if a == 1.0:
        lower = optimize.brentq(lambda t: (1.0 - t) - z2 * t * spread(t), 0.0, 1.0, xtol=1e-14)
    elif a == 0.0:
        lower = 0.0
    else:
        lower = optimize.brentq(excess, 0.0, a, xtol=1e-14)
    if a == 0.0:
        upper = optimize.brentq(lambda t: t - z2 * (1.0 - t) * spread(t), 0.0, 1.0, xtol=1e-14)
    elif a == 1.0:
        upper = 1.0
    else:
        upper = optimize.brentq(excess, a, 1.0, xtol=1e-14)
    return Interval(float(lower), float(upper), "newcombe")


def wilson_bin_intervals(
    events: np.ndarray, counts: np.ndarray, ci: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson limits of ``events / counts`` per bin (NaN where a bin is empty)."""
    limits = [
        proportion_interval(int(k), int(c), ci) if c > 0 else Interval(None, None, "wilson")
        for k, c in zip(events, counts, strict=True)
    ]
    lower = np.array([np.nan if x.lower is None else x.lower for x in limits])
    upper = np.array([np.nan if x.upper is None else x.upper for x in limits])
    return lower, upper
