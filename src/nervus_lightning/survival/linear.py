r"""Linear Cox model fitted on tensors: where the linear term of a tabular DeepSurv starts.

A Cox head with a linear term (``model.linear``; see :mod:`nervus_lightning.models.net`) has the
log hazard ratio :math:`\eta = f(x) + w^\top x` with the network path :math:`f` starting at zero.
Before training, :math:`w` is set to the penalised partial-likelihood estimate on the training
split,

.. math:: \hat w = \arg\min_w\; -\log L(w) + \tfrac{\alpha}{2} \lVert w \rVert^2,

(:math:`\log L` of :mod:`nervus_lightning.survival.loss`, Efron or Breslow ties), the same
estimate as scikit-survival's ``CoxPHSurvivalAnalysis(alpha=alpha)`` (checked in the tests). The
penalty is chosen on held-out rows (:func:`choose_linear_cox`, on the path of
:mod:`nervus_lightning.models.penalty`): with more inputs than events the unpenalised fit does
not exist, and a weak fixed penalty fits the training rows perfectly. The deep model then
starts as the fitted linear Cox model, and the checkpoint kept by validation loss is at worst a
few optimiser steps away from it.

Two kinds of penalty compete on the same held-out rows: ridge (every input kept, shrunk) and
the elastic net with lasso share :data:`L1_RATIO` (glmnet's ``alpha``, scikit-survival's
``CoxnetSurvivalAnalysis(l1_ratio=0.5)``), which sets the weights of useless inputs exactly to
zero: where few of many inputs matter (60 inputs, 5 with an effect, 79 events) the sparse fit
wins; where all matter a little, ridge does. The one with the lower held-out partial likelihood
loss at its best penalty is the start; the report names both. Each fit is scored at the best
scale of its linear predictor on the held-out rows, and the start is that fit times that factor
(:func:`choose_linear_cox`).

Why hand-written: the objective is convex and tiny (one weight per input); torch's L-BFGS (ridge)
and accelerated proximal gradient (elastic net) on the library's own loss fit it in float64
without a new dependency or a round trip through numpy estimators, on any device.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from nervus_lightning.models.penalty import (
    HELD_OUT_CV_AND_VAL,
    HELD_OUT_VAL,
    L1_RATIO,
    PenaltyChoice,
    choose_ridge_or_elastic_net,
    elastic_net_path,
    linear_penalty_center,
)
from nervus_lightning.models.solvers import minimise_lbfgs, minimise_proximal
from nervus_lightning.survival.loss import efron_log_likelihood

__all__ = [
    "FIT_TOLERANCE",
    "FOLD_DRAWS",
    "L1_RATIO",
    "MIN_VAL_EVENTS",
    "choose_linear_cox",
    "fit_linear_cox",
]

#: Validation events needed to choose the linear start's penalty on the validation rows;
#: with fewer, it is chosen by cross-validation within the training rows, the validation rows
#: held out beside the folds.
MIN_VAL_EVENTS = 20
#: Fold draws whose held-out losses are summed when the penalty is chosen on the folds of the
#: training rows (:func:`choose_linear_cox`): with few events one draw of 5 folds decides.
FOLD_DRAWS = 5
#: The elastic-net fits of the path stop once no weight moves by more than this in a step (a
#: millionth of a log hazard ratio per sd of an input). The solver's default, 1e-8, chose the
#: same penalty and kind, a scale within 0.01 %, and the same test C to 5 decimals on 40 splits
#: (5 seeds of 8 ``benchmarks/defaults.py`` survival sets), in 1.6-3.4x the time.
FIT_TOLERANCE = 1e-6


def fit_linear_cox(
    inputs: Tensor,
    time: Tensor,
    event: Tensor,
    ties: str = "efron",
    alpha: float = 1e-4,
    max_iter: int = 200,
) -> Tensor:
    """Penalised linear Cox coefficients (module docstring): ``(n_inputs,)``, float32.

    Args:
        inputs: ``(n, p)`` inputs as the model sees them (standardised).
        time, event: ``(n,)`` observed times and event indicators (rows with a missing value
            must be left out by the caller).
        ties: ``"efron"`` or ``"breslow"``.
        alpha: ridge penalty on the summed (not per-event) negative log-likelihood.

    Returns zeros when there is no event (nothing to fit).
    """
    x = inputs.detach().to(torch.float64)
    time = time.detach().to(torch.float64)
    event = event.detach() != 0
    weight = torch.zeros(1, x.shape[1], dtype=torch.float64, device=x.device)
    n_events = int(event.sum())
    if n_events == 0 or x.shape[1] == 0:
        return weight[0].float()
    # Per event, so that the tolerances mean the same for small and large splits.
    objective = _per_event_objective(x, time, event, ties, alpha / n_events)
    fitted = minimise_lbfgs(
        weight, objective, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14
    )
    return fitted[0].float()


def _per_event_objective(x: Tensor, time: Tensor, event: Tensor, ties: str, penalty: float):
    """Per event: the negative log partial likelihood plus ``penalty / 2 * ||w||^2``."""
    n_events = max(int(event.sum()), 1)
    log_likelihood = _fixed_data_log_likelihood(x, time, event, ties)

    def objective(weight: Tensor) -> Tensor:
        return -log_likelihood(weight[0]) / n_events + 0.5 * penalty * weight.square().sum()

    return objective


def _fixed_data_log_likelihood(x: Tensor, time: Tensor, event: Tensor, ties: str):
    """``w -> log L(x @ w)``, equal to :func:`~nervus_lightning.survival.loss.
    cox_partial_log_likelihood`, with the sorting and the tie groups of the fixed rows worked
    out once: a penalty path calls it thousands of times, and the per-call sort and
    ``unique_consecutive`` were most of its cost."""
    event = event.to(x.device) != 0
    time = time.to(x.device)
    if not bool(event.any()):
        return lambda weight: (x @ weight).sum() * 0.0
    time_sorted, order = torch.sort(time, stable=True)
    x_sorted, is_event = x[order], event[order]
    _, group, group_size = torch.unique_consecutive(
        time_sorted, return_inverse=True, return_counts=True
    )
    group_start = (torch.cumsum(group_size, 0) - group_size)[group[is_event]]
    _, event_group, n_tied = torch.unique_consecutive(
        group[is_event], return_inverse=True, return_counts=True
    )
    first = torch.cumsum(n_tied, 0) - n_tied
    rank = torch.arange(len(event_group), device=x.device) - first[event_group]
    fraction = rank.to(x.dtype) / n_tied[event_group].to(x.dtype)
    x_events = x_sorted[is_event]
    n_groups = len(n_tied)
    tied = bool((n_tied > 1).any()) and ties == "efron"

    def log_likelihood(weight: Tensor) -> Tensor:
        eta = x_sorted @ weight
        log_tail = torch.flip(torch.logcumsumexp(torch.flip(eta, (0,)), 0), (0,))
        eta_e = x_events @ weight
        log_risk = log_tail[group_start]
        if not tied:
            return (eta_e - log_risk).sum()
        return efron_log_likelihood(eta_e, log_risk, event_group, n_groups, fraction)

    return log_likelihood


def choose_linear_cox(
    inputs: Tensor,
    time: Tensor,
    event: Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    ties: str = "efron",
    min_val_events: int = MIN_VAL_EVENTS,
    seed: int = 0,
    held_out: str | None = None,
    profile_scale: bool = True,
    fold_draws: int = FOLD_DRAWS,
) -> PenaltyChoice:
    r"""The penalised linear Cox start, ridge or elastic net, with its penalty chosen on held-out
    rows (module docstring).

    ``inputs``, ``time``, ``event``: every row with a known target (training and validation);
    ``train_rows``/``val_rows`` index them. The penalty :math:`\lambda` (per event, the scale of
    the training loss :func:`~nervus_lightning.survival.loss.cox_loss`) is chosen on the path of
    :func:`nervus_lightning.models.penalty.penalty_path` by the held-out partial likelihood of
    Verweij and Van Houwelingen (1993): :math:`\log L_{fit \cup held}(w) - \log L_{fit}(w)`, the
    held-out rows' contribution with risk sets that also hold the fitted rows (glmnet's
    ``grouped`` cross-validation for Cox), which stays informative with few held-out events. On
    the validation rows when they hold at least ``min_val_events`` events, otherwise on the
    folds of the training rows and the few validation rows together
    (:data:`~nervus_lightning.models.penalty.HELD_OUT_CV_AND_VAL`: over 10 splits of the three
    benchmark sets whose validation rows hold 10-19 events, the start's test C moved by +0.008
    (aids), +0.028 (an 82-input breast-cancer set) and -0.006 (a 60-input simulation) against
    the folds alone; ``benchmarks/linear_start_choice.py``). The folds are drawn ``fold_draws``
    times (:data:`FOLD_DRAWS`) from the generator seeded by ``seed`` and the held-out losses
    of every draw summed, the validation rows counted once per draw: with one draw, the same
    split gave a start whose test C moved by 0.009 (aids), 0.020 (larynx), 0.016 (a 60-input
    simulation) and 0.018 (an 82-input set) on average between fold seeds 0 and 1 (up to
    0.034), with five by 0.001, 0.010, 0.012 and 0.010, the mean test C level (8 split seeds;
    ``benchmarks/README.md``).

    ``profile_scale`` (the default): each penalty's fits are scored at the best factor of their
    linear predictors on the held-out rows
    (:func:`~nervus_lightning.models.penalty.held_out_scale`), the start is the chosen fit times
    its factor, and the choice's ``center`` (where the factor is not 1) centres the ridge part of
    the penalty kept in training so that the start is stationary there
    (:func:`~nervus_lightning.models.penalty.linear_penalty_center`). A strong penalty turns the
    fit toward the inputs' univariate scores as it shrinks it; scored at its shrunken scale it
    loses on the partial likelihood even where it ranks held-out patients better. Over 20 split
    seeds of six sets with 20 validation events or more, the start's test C against the better
    of ridge Cox and Coxnet (alpha by validation C) went from -0.0034 to -0.0012 on average
    (rossi -0.012 to -0.006, lung -0.006 to +0.001, whas500 +0.003 to -0.002;
    ``benchmarks/README.md``). Returns the choice; its ``weight`` is ``(1, n_inputs)``.
    """
    x = inputs.detach().to(torch.float64).cpu()
    time = time.detach().to(torch.float64).cpu()
    event = (event.detach() != 0).cpu()

    def fitter(l1_ratio: float):
        """``fit(rows, penalty, start)`` of :func:`~nervus_lightning.models.penalty.
        choose_penalty`: ridge by L-BFGS, the elastic net by proximal gradient."""

        def fit(rows: np.ndarray, penalty: float, start: Tensor | None) -> Tensor:
            rows_t = torch.as_tensor(rows)
            weight = torch.zeros(1, x.shape[1], dtype=torch.float64) if start is None else start
            if not bool(event[rows_t].any()) or x.shape[1] == 0:
                return weight
            smooth = _per_event_objective(
                x[rows_t], time[rows_t], event[rows_t], ties, penalty * (1 - l1_ratio)
            )
            if not l1_ratio:
                return minimise_lbfgs(weight, smooth)
            return minimise_proximal(weight, smooth, penalty * l1_ratio, tolerance=FIT_TOLERANCE)

        return fit

    likelihoods: dict[tuple[bytes, bytes], tuple] = {}  # per split: sorted once, scored often

    def held_out_loss(weight: Tensor, fit_rows: np.ndarray, held_rows: np.ndarray) -> float:
        key = (fit_rows.tobytes(), held_rows.tobytes())
        if key not in likelihoods:
            both = torch.as_tensor(np.concatenate([fit_rows, held_rows]))
            fitted = torch.as_tensor(fit_rows)
            likelihoods[key] = tuple(
                _fixed_data_log_likelihood(x[rows], time[rows], event[rows], ties)
                for rows in (both, fitted)
            )
        whole, part = likelihoods[key]
        with torch.no_grad():
            return float(-(whole(weight[0]) - part(weight[0])))

    if held_out is None:  # another design (models.penalty.held_out_splits): for benchmarks
        enough = len(val_rows) and int(event[torch.as_tensor(val_rows)].sum()) >= min_val_events
        held_out = HELD_OUT_VAL if enough else HELD_OUT_CV_AND_VAL
    train_rows, val_rows = np.asarray(train_rows), np.asarray(val_rows)
    path = None  # one input, or no training event: nothing to select
    if x.shape[1] >= 2 and bool(event[torch.as_tensor(train_rows)].any()):
        rows_t = torch.as_tensor(train_rows)
        path = _elastic_net_path(x[rows_t], time[rows_t], event[rows_t], ties)
    choice = choose_ridge_or_elastic_net(
        fitter,
        held_out_loss,
        train_rows,
        val_rows,
        held_out,
        path,
        seed,
        profile_scale,
        fold_draws,
    )
    if choice.scale == 1.0 or not bool(event[torch.as_tensor(train_rows)].any()):
        return choice
    rows_t = torch.as_tensor(train_rows)
    weight = choice.weight.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        data_loss = _per_event_objective(x[rows_t], time[rows_t], event[rows_t], ties, 0.0)
        (gradient,) = torch.autograd.grad(data_loss(weight), weight)
    center = linear_penalty_center(choice.weight, gradient, choice.penalty, choice.l1_ratio)
    return replace(choice, center=center)


def _elastic_net_path(x: Tensor, time: Tensor, event: Tensor, ties: str) -> list[float]:
    """The elastic net's penalties on these rows
    (:func:`~nervus_lightning.models.penalty.elastic_net_path`): from the one that zeroes every
    weight down."""
    zero = torch.zeros(1, x.shape[1], dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        unpenalised = _per_event_objective(x, time, event, ties, 0.0)
        (grad,) = torch.autograd.grad(unpenalised(zero), zero)
    return elastic_net_path(grad)
