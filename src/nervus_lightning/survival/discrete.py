r"""Discrete-time survival models that do not assume proportional hazards, on pycox.

This module owns what ``task.model=logistic_hazard | pmf | deephit`` changes with respect to
DeepSurv (``task.model=cox``): the time grid, the loss, the survival curve a head's output stands
for, the risk score derived from it, and the curve-based metrics (Antolini's time-dependent
C-index and pycox's integrated Brier score). The likelihoods, label transform and metrics are
pycox's (``pycox.models.loss``, ``LabTransDiscreteTime``, ``EvalSurv``); nothing of them is
re-implemented here (``tests/test_survival_discrete.py`` compares every number with pycox).

Time grid
    ``num_durations`` cut points :math:`0 = \tau_0 < \dots < \tau_{m-1}` from the Kaplan-Meier
    quantiles of the *training* split (pycox's ``LabTransDiscreteTime(m, scheme="quantiles")``),
    rounded to the time step of :mod:`nervus_lightning.survival.reference` so that no cut is a
    patient's time (the last cut is the largest training time rounded up). Only these
    aggregates are kept (checkpoint and ``schema.json``). pycox's transform moves an event to
    the next cut and a censoring to the previous one; a time beyond the last cut (validation,
    test, an external CSV) is *censored at the last cut* (pycox's ``right_censor=True``), so it
    counts as "event-free up to the end of the grid".
Head
    ``m`` outputs :math:`\phi`. ``logistic_hazard``: discrete hazards
    :math:`h_k = \sigma(\phi_k)`, :math:`S(\tau_k) = \prod_{l \le k}(1 - h_l)`. ``pmf`` and
    ``deephit``: :math:`f = \mathrm{softmax}([\phi, 0])` without its last entry (the mass left
    beyond the grid), :math:`S(\tau_k) = 1 - \sum_{l \le k} f_l`. DeepHit's loss is
    ``alpha * nll_pmf + (1 - alpha) * rank loss(sigma)`` (pycox's ``DeepHitSingleLoss``).
Start
    A single-event head starts as the training Kaplan-Meier curve on the grid
    (:func:`start_logits`: the bias of the head's output layer when training starts, its
    weights zero): the maximum of the likelihood without inputs, so training starts from the
    null model (IPA 0) and only has to learn what the inputs change, as a Cox head starts from
    linear Cox. Outputs near zero are no neutral start for ``logistic_hazard``: a hazard of 1/2
    in every interval, a curve below 1 % after seven cuts, which the default training (150
    full-batch steps) could not undo (issue 19).
Curve between the cuts
    Linear in time (pycox's ``interpolate(scheme="const_pdf")``: constant density within an
    interval), and constant after the last cut (the model says nothing beyond the largest
    training time). Non-increasing and in [0, 1].
Risk score
    ``risk = 1 - RMST(tau_max) / tau_max``: the cumulative event probability averaged over
    :math:`[0, \tau_{m-1}]` (one minus the restricted mean survival time of the interpolated
    curve, as a fraction of the grid). In [0, 1], higher = worse; it orders patients for
    Harrell's C, the risk groups and the IPCW statistics like Cox's log hazard ratio does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from nervus_lightning.errors import NervusInputError
from nervus_lightning.models.ensemble import mean_probability_logits
from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.metrics import ibs_time_grid
from nervus_lightning.survival.reference import round_to_step, time_step

__all__ = [
    "DISCRETE_MODELS",
    "MODELS",
    "combine_outputs",
    "deephit_alpha",
    "describe_model",
    "curve_metrics",
    "discrete_loss",
    "discretize",
    "fit_grid",
    "grid_column",
    "grid_survival",
    "interpolate_survival",
    "model_survival",
    "risk_score",
    "start_logits",
]

MODELS = ("cox", "logistic_hazard", "pmf", "deephit")
DISCRETE_MODELS = MODELS[1:]
#: DeepHit's likelihood weight ``alpha`` for a single event when ``task.alpha`` is not set:
#: pycox's and the DeepHit paper's 0.2 (the rank loss weighs 0.8). ``pmf`` is the same model
#: with the likelihood alone (``alpha = 1``); competing causes default to that
#: (:data:`COMPETING_ALPHA`).
DEEPHIT_ALPHA = 0.2
#: DeepHit's likelihood weight with competing causes when ``task.alpha`` is not set: the
#: likelihood alone (:mod:`nervus_lightning.survival.competing`, "Loss weight").
COMPETING_ALPHA = 1.0


def deephit_alpha(alpha: float | None, causes: int | None) -> float:
    """DeepHit's likelihood weight: ``alpha`` when set (``task.alpha``), else
    :data:`COMPETING_ALPHA` with competing causes and :data:`DEEPHIT_ALPHA` for one event."""
    if alpha is not None:
        return alpha
    return COMPETING_ALPHA if causes else DEEPHIT_ALPHA


def fit_grid(time: Any, event: Any, num_durations: int, where: str = "") -> np.ndarray:
    """``num_durations`` cut points at Kaplan-Meier quantiles of the training times, rounded to
    the time step (no cut point is a patient's time).

    pycox's ``LabTransDiscreteTime(n, scheme="quantiles")`` takes ``n`` evenly spaced levels of
    the Kaplan-Meier curve; its cut points are training times. They are rounded to the time
    step of :func:`~nervus_lightning.survival.reference.time_step` (the last one, the largest
    training time, rounded up) and the ones that coincide are dropped, so fewer than ``n`` may
    remain. The head size is fixed before the grid is known, so the number of levels is raised
    from ``num_durations`` until exactly ``num_durations`` distinct cut points come out (still
    pycox's quantiles, of a finer level grid), with a step 2, 5 or 10 times finer when the
    time step allows no such grid.

    Raises:
        NervusInputError: when no number of levels gives ``num_durations`` distinct cut points
            (too few distinct training times).
    """
    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    time = as_numpy(time)
    event = as_numpy(event)
    found = 0
    coarse = time_step(time.max())
    for step in (coarse, coarse / 2, coarse / 5, coarse / 10):
        for levels in range(num_durations, 20 * num_durations + 1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "cuts are not unique": handled
                cuts = LabTransDiscreteTime(levels, scheme="quantiles").fit(time, event).cuts
            cuts = np.unique(
                np.r_[round_to_step(cuts[:-1], step), round_to_step(cuts[-1:], step, up=True)]
            )
            found = max(found, len(cuts))
            if len(cuts) == num_durations:
                return np.asarray(cuts, dtype=np.float64)
            if len(cuts) > num_durations:
                break
    raise NervusInputError(
        f"{where}task.num_durations={num_durations}, but the training times give no grid of "
        f"that many distinct Kaplan-Meier quantile cut points (at most {found} found). Set "
        "task.num_durations lower."
    )


def discretize(cuts: np.ndarray, time: Any, event: Any) -> tuple[np.ndarray, np.ndarray]:
    """Interval index and event indicator of each case (pycox's ``LabTransDiscreteTime``)."""
    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    cuts = np.asarray(cuts, dtype=np.float64)
    time, event = as_numpy(time), as_numpy(event)
    # pycox 0.3.0's transform fails on cases without an event inside the grid (the max of an
    # empty array), e.g. a validation batch that is all censored: one event at the first cut
    # is added for it and dropped from the result.
    inside = (event != 0) & (time <= cuts[-1])
    if inside.any():
        return LabTransDiscreteTime(cuts).transform(time, event)
    idx, events = LabTransDiscreteTime(cuts).transform(
        np.append(time, cuts[0]).astype(time.dtype), np.append(event, 1.0).astype(event.dtype)
    )
    return idx[:-1], events[:-1]


#: Interval hazards of the start are kept in [HAZARD_FLOOR, 1 - HAZARD_FLOOR] (finite logits).
HAZARD_FLOOR = 1e-4


def start_logits(model: str, cuts: np.ndarray, time: Any, event: Any) -> np.ndarray:
    r"""Head outputs ``(m,)`` whose curve (:func:`grid_survival`) is the Kaplan-Meier curve of
    ``time`` and ``event`` discretised on ``cuts`` (module docstring, "Start").

    With :func:`discretize`'s interval index :math:`j_i` and indicator :math:`e_i`, the hazard
    of interval ``k`` is :math:`h_k = d_k / n_k`, :math:`d_k = \#\{j_i = k, e_i = 1\}` events
    among the :math:`n_k = \#\{j_i \ge k\}` cases still followed: the maximum of pycox's
    likelihoods without inputs, for ``logistic_hazard`` (:math:`\phi_k = \mathrm{logit}\,
    h_k`) as for ``pmf`` and ``deephit`` (:math:`\phi_k = \log f_k - \log S_{m-1}`, with
    :math:`f_k = S_{k-1} h_k` and the mass left beyond the grid, :math:`S_{m-1}`, the fixed
    zero logit). Hazards are kept in ``[HAZARD_FLOOR, 1 - HAZARD_FLOOR]`` so every logit is
    finite (e.g. the first interval, :math:`[0, 0]`, holds no event).

    Only grid-level counts enter (the curve on the cut points, as the stored Kaplan-Meier
    curves): no time of a patient.
    """
    cuts = np.asarray(cuts, dtype=np.float64)
    idx, events = discretize(cuts, time, event)
    m = cuts.shape[0]
    at_risk = np.bincount(idx, minlength=m)[::-1].cumsum()[::-1].astype(np.float64)
    deaths = np.bincount(idx, weights=(events != 0).astype(np.float64), minlength=m)
    hazard = np.divide(deaths, at_risk, out=np.zeros(m), where=at_risk > 0)
    hazard = np.clip(hazard, HAZARD_FLOOR, 1.0 - HAZARD_FLOOR)
    if model == "logistic_hazard":
        return np.log(hazard) - np.log1p(-hazard)
    if model in ("pmf", "deephit"):
        log_surv = np.cumsum(np.log1p(-hazard))
        before = np.r_[0.0, log_surv[:-1]]
        return before + np.log(hazard) - log_surv[-1]
    raise ValueError(f"not a discrete-time model: {model!r}")


def describe_model(
    model: str, num_durations: int, causes: int | None, alpha: float | None, sigma: float
) -> str:
    """One line for the report's model table: the discrete-time model, its grid, its loss and
    where its head started (``"DeepHit with 2 competing causes on 20 time cuts; loss: the
    likelihood alone (task.alpha unset); started at the training Aalen-Johansen incidences"``)."""
    name = {"logistic_hazard": "logistic hazard", "pmf": "PMF", "deephit": "DeepHit"}[model]
    kind = f" with {causes} competing causes" if causes else ""
    text = f"{name}{kind} on {num_durations} time cuts"
    if model == "deephit":
        weight = deephit_alpha(alpha, causes)
        unset = " (task.alpha unset)" if alpha is None else ""
        loss = (
            "the likelihood alone"
            if weight == 1
            else f"{weight:g} × likelihood + {1 - weight:g} × rank loss (sigma {sigma:g})"
        )
        text += f"; loss: {loss}{unset}"
    start = "Aalen-Johansen incidences" if causes else "Kaplan-Meier curve"
    return f"{text}; started at the training {start}"


def discrete_loss(
    model: str,
    phi: Tensor,
    cuts: np.ndarray,
    time: Tensor,
    event: Tensor,
    alpha: float | None = None,
    sigma: float = 0.1,
) -> Tensor:
    """pycox's mean negative log-likelihood (``deephit``: with its rank loss, likelihood weight
    ``alpha``, :data:`DEEPHIT_ALPHA` when None) of one batch.

    ``time`` and ``event`` are the observed times and 0/1 indicators of the cases with both
    known; they are discretised on ``cuts`` on the CPU (pycox's transform is numpy).
    """
    from pycox.models.loss import DeepHitSingleLoss, nll_logistic_hazard, nll_pmf

    idx, events = discretize(cuts, time.detach().cpu().numpy(), event.detach().cpu().numpy())
    idx_t = torch.from_numpy(idx).to(phi.device)
    events_t = torch.from_numpy(events).to(device=phi.device, dtype=phi.dtype)
    if model == "logistic_hazard":
        return nll_logistic_hazard(phi, idx_t, events_t)
    if model == "pmf":
        return nll_pmf(phi, idx_t, events_t)
    if model == "deephit":
        from pycox.models.data import pair_rank_mat

        rank_mat = torch.from_numpy(pair_rank_mat(idx, events)).to(phi.device, phi.dtype)
        return DeepHitSingleLoss(deephit_alpha(alpha, None), sigma)(phi, idx_t, events_t, rank_mat)
    raise ValueError(f"not a discrete-time model: {model!r}")


def grid_survival(model: str, phi: Tensor) -> Tensor:
    """Survival probabilities at the cut points, shape ``(n, m)``, in [0, 1], non-increasing."""
    phi = phi.float()
    if model == "logistic_hazard":
        # prod(1 - sigmoid(phi)) in log space: log(1 - sigmoid(x)) = logsigmoid(-x).
        surv = torch.exp(torch.cumsum(F.logsigmoid(-phi), dim=1))
    elif model in ("pmf", "deephit"):
        padded = torch.cat([phi, torch.zeros_like(phi[:, :1])], dim=1)
        pmf = torch.softmax(padded, dim=1)[:, :-1]
        surv = 1.0 - torch.cumsum(pmf, dim=1)
    else:
        raise ValueError(f"not a discrete-time model: {model!r}")
    return surv.clamp(0.0, 1.0)


def combine_outputs(model: str, outputs: list[Tensor]) -> Tensor:
    """Raw outputs of an ensemble (``model.ensemble``) whose :func:`grid_survival` is the mean of
    the members' curves."""
    if model == "logistic_hazard":
        return _mean_survival_hazard_logits(outputs)
    if model in ("pmf", "deephit"):
        return _padded_mean_probability_logits(outputs)
    raise ValueError(f"not a discrete-time model: {model!r}")


def _padded_mean_probability_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
    """As :func:`mean_probability_logits` for heads whose softmax runs over their outputs and a
    fixed zero logit appended (pycox's PMF and DeepHit): the returned ``(n, m)`` logits, with
    the zero appended again, give the mean of the members' ``m + 1`` probabilities."""
    padded = [
        torch.cat([o.float(), torch.zeros_like(o[:, :1], dtype=torch.float32)], 1) for o in outputs
    ]
    logits = mean_probability_logits(padded)
    return logits[:, :-1] - logits[:, -1:]


def _mean_survival_hazard_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Logistic-hazard logits ``(n, m)`` whose survival curve ``prod(1 - sigmoid)`` is the mean
    of the members' curves: with the mean curve ``S``, each interval's hazard is
    ``1 - S_k / S_(k-1)``, i.e. ``log(1 - h_k) = -d_k`` with ``d_k = log S_(k-1) - log S_k``,
    and its logit is ``log(expm1(d_k))``."""
    log_surv = torch.stack([torch.cumsum(F.logsigmoid(-o.float()), dim=1) for o in outputs])
    mean_log = torch.logsumexp(log_surv, dim=0) - torch.log(torch.tensor(float(len(outputs))))
    previous = torch.cat([torch.zeros_like(mean_log[:, :1]), mean_log[:, :-1]], dim=1)
    # The mean of non-increasing curves is non-increasing; the floor keeps the log finite
    # where an interval's mean hazard is 0 to float precision.
    drop = (previous - mean_log).clamp_min(1e-12)
    return torch.log(torch.expm1(drop))


def interpolate_survival(surv: np.ndarray, cuts: np.ndarray, times: Any) -> np.ndarray:
    """The grid curves at ``times``: linear between cuts, constant after the last one.

    Shape ``(n, len(times))``; ``surv`` is ``(n, len(cuts))``.
    """
    surv = np.asarray(surv, dtype=np.float64)
    cuts = as_numpy(cuts)
    times = as_numpy(times)
    left = np.clip(np.searchsorted(cuts, times, side="right") - 1, 0, len(cuts) - 2)
    weight = np.clip((times - cuts[left]) / (cuts[left + 1] - cuts[left]), 0.0, 1.0)
    return surv[:, left] * (1.0 - weight) + surv[:, left + 1] * weight


def risk_score(surv: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """``1 - RMST / grid length`` of the interpolated curves (module docstring), shape ``(n,)``."""
    surv = np.asarray(surv, dtype=np.float64)
    cuts = as_numpy(cuts)
    # The trapezoid rule is exact for the piecewise-linear curve.
    rmst = np.sum(np.diff(cuts) * (surv[:, 1:] + surv[:, :-1]) / 2.0, axis=1)
    return 1.0 - rmst / (cuts[-1] - cuts[0])


#: Points per grid interval of the curves the pycox metrics read (pycox's ``interpolate(10)``).
SUBGRID = 10


def subgrid(cuts: np.ndarray, sub: int = SUBGRID) -> np.ndarray:
    """``sub`` evenly spaced times per interval of ``cuts`` (pycox's ``make_subgrid``)."""
    from pycox.models.utils import make_subgrid

    return np.asarray(make_subgrid(as_numpy(cuts), sub), dtype=np.float64)


def grid_column(name: str, k: int) -> str:
    """Column of ``predictions.csv`` with label ``name``'s survival at the ``k``-th cut."""
    return f"surv_{name}_grid{k}"


# --------------------------------------------------------------------------------------------
# Curve-based metrics (pycox's EvalSurv), next to scikit-survival's risk-based ones


def pycox_metrics(
    surv: np.ndarray,
    times: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    ibs_grid: Sequence[float],
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Antolini's C and the integrated Brier score of pycox's ``EvalSurv`` on these curves.

    ``surv`` ``(n, len(times))`` is read as a right-continuous step function of ``times``
    (EvalSurv's ``steps="post"``); the censoring distribution of the Brier score is the
    Kaplan-Meier curve of the *evaluated* set (``censor_surv="km"``, pycox's convention; the
    ``ibs`` of scikit-survival's family uses the same curve).

    Keys: ``c_index_antolini``, ``ibs_pycox`` (None, with a reason, when not computable).
    """
    from pycox.evaluation import EvalSurv

    why: dict[str, str] = {}
    out: dict[str, float | None] = {"c_index_antolini": None, "ibs_pycox": None}
    event = as_numpy(event) != 0
    time = as_numpy(time)
    if time.shape[0] < 2 or not event.any():
        why = dict.fromkeys(out, "fewer than 2 subjects or no event in the evaluated set")
    else:
        frame = pd.DataFrame(np.asarray(surv, dtype=np.float64).T, index=as_numpy(times))
        evaluator = EvalSurv(frame, time, event.astype(np.float64), censor_surv="km")
        with np.errstate(divide="ignore", invalid="ignore"):
            c_index = float(evaluator.concordance_td("antolini"))
        if np.isfinite(c_index):
            out["c_index_antolini"] = c_index
        else:
            why["c_index_antolini"] = "no comparable pair"
        grid = as_numpy(ibs_grid)
        if grid.shape[0] < 2:
            why["ibs_pycox"] = "fewer than 2 grid times inside the evaluated follow-up"
        else:
            # EvalSurv.integrated_brier_score (pycox 0.3.0) calls scipy.integrate.simps, removed
            # in SciPy 1.14; its per-time Brier scores integrated by simps' successor instead.
            from scipy.integrate import simpson

            scores = evaluator.brier_score(grid).to_numpy()
            out["ibs_pycox"] = float(simpson(scores, x=grid) / (grid[-1] - grid[0]))
    if reasons is not None:
        reasons.update(why)
    return out


def curve_metrics(
    rows: pd.DataFrame,
    label: Mapping[str, Any],
    reference: Any,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Antolini's C and pycox's IBS of a discrete-time label on the rows of ``predictions.csv``
    (``{}`` for Cox, or when the ``surv_<label>_grid<k>`` columns are missing).

    The curves are the model's own, from the ``surv_<label>_grid<k>`` columns at the cuts of
    ``label["grid"]``, interpolated as in ``predictions.csv`` on :data:`SUBGRID` points per
    interval (pycox's ``interpolate(SUBGRID)``, what pycox evaluates its discrete models on:
    otherwise every event of the first interval would read the survival at time 0). The IBS
    grid is the one of scikit-survival's ``ibs``
    (:func:`nervus_lightning.survival.metrics.ibs_time_grid`), so the two are comparable.

    Cox is left out: the Breslow baseline a checkpoint keeps is a coarse time grid (no training
    event times), and before its first positive time every curve is 1, which would count most
    early events as ties in Antolini's C.
    """
    cuts = label.get("grid")
    times = subgrid(np.asarray(cuts, dtype=np.float64)) if cuts else np.zeros(0)
    surv = model_survival(rows, label, times)
    if surv is None:
        return {}
    time = rows[label["period"]].to_numpy(dtype=np.float64)
    event = rows[label["name"]].to_numpy(dtype=np.float64)
    return pycox_metrics(surv, times, time, event, ibs_time_grid(reference, time), reasons)


def model_survival(rows: pd.DataFrame, label: Mapping[str, Any], times: Any) -> np.ndarray | None:
    """A discrete-time label's own curves at ``times``, shape ``(len(rows), len(times))``.

    Read from the ``surv_<label>_grid<k>`` columns of ``predictions.csv`` at the cuts of
    ``label["grid"]`` and interpolated as :func:`interpolate_survival` does. ``None`` for Cox
    (``survival_model`` absent or ``cox``) or when the grid columns are missing: the caller then
    falls back on the Breslow baseline.
    """
    grid = label.get("grid")
    if label.get("survival_model", "cox") == "cox" or not grid:
        return None
    columns = [grid_column(label["name"], k) for k in range(len(grid))]
    if not set(columns) <= set(rows.columns):
        return None
    return interpolate_survival(
        rows[columns].to_numpy(dtype=np.float64), np.asarray(grid, dtype=np.float64), times
    )
