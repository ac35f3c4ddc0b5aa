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

Why hand-written: the objective is convex and tiny (one weight per input); torch's L-BFGS on
the library's own loss fits it in float64 without a new dependency or a round trip through numpy
estimators, on any device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nervus_lightning.models.penalty import PenaltyChoice, choose_penalty, minimise_lbfgs
from nervus_lightning.survival.loss import cox_partial_log_likelihood

__all__ = ["MIN_VAL_EVENTS", "choose_linear_cox", "fit_linear_cox"]

#: Validation events needed to choose the linear start's penalty on the validation rows;
#: with fewer, it is chosen by cross-validation within the training rows.
MIN_VAL_EVENTS = 20


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
    n_events = max(int(event.sum()), 1)

    def objective(weight: Tensor) -> Tensor:
        log_l = cox_partial_log_likelihood(x @ weight[0], time, event, ties)
        return -log_l / n_events + 0.5 * penalty * weight.square().sum()

    return objective


def choose_linear_cox(
    inputs: Tensor,
    time: Tensor,
    event: Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    ties: str = "efron",
    min_val_events: int = MIN_VAL_EVENTS,
    seed: int = 0,
) -> PenaltyChoice:
    r"""The ridge-penalised linear Cox start with its penalty chosen on held-out rows.

    ``inputs``, ``time``, ``event``: every row with a known target (training and validation);
    ``train_rows``/``val_rows`` index them. The penalty :math:`\lambda` (per event, the scale of
    the training loss :func:`~nervus_lightning.survival.loss.cox_loss`) is chosen on the path of
    :func:`nervus_lightning.models.penalty.penalty_path` by the held-out partial likelihood of
    Verweij and Van Houwelingen (1993): :math:`\log L_{fit \cup held}(w) - \log L_{fit}(w)`, the
    held-out rows' contribution with risk sets that also hold the fitted rows (glmnet's
    ``grouped`` cross-validation for Cox), which stays informative with few held-out events. On
    the validation rows when they hold at least ``min_val_events`` events, otherwise on the
    folds of the training rows. Returns the choice; its ``weight`` is ``(1, n_inputs)``.
    """
    x = inputs.detach().to(torch.float64).cpu()
    time = time.detach().to(torch.float64).cpu()
    event = (event.detach() != 0).cpu()

    def fit(rows: np.ndarray, penalty: float, start: Tensor | None) -> Tensor:
        rows_t = torch.as_tensor(rows)
        weight = torch.zeros(1, x.shape[1], dtype=torch.float64) if start is None else start
        if not bool(event[rows_t].any()) or x.shape[1] == 0:
            return weight
        objective = _per_event_objective(x[rows_t], time[rows_t], event[rows_t], ties, penalty)
        return minimise_lbfgs(weight, objective)

    def held_out_loss(weight: Tensor, fit_rows: np.ndarray, held_rows: np.ndarray) -> float:
        both = torch.as_tensor(np.concatenate([fit_rows, held_rows]))
        fitted = torch.as_tensor(fit_rows)
        risk = x @ weight[0]
        with torch.no_grad():
            whole = cox_partial_log_likelihood(risk[both], time[both], event[both], ties)
            part = cox_partial_log_likelihood(risk[fitted], time[fitted], event[fitted], ties)
        return float(-(whole - part))

    use_val = (
        int(event[torch.as_tensor(val_rows)].sum()) >= min_val_events if len(val_rows) else False
    )
    return choose_penalty(
        fit, held_out_loss, np.asarray(train_rows), np.asarray(val_rows), use_val, seed=seed
    )
