r"""Linear Cox model fitted on tensors: where the linear term of a tabular DeepSurv starts.

A Cox head with a linear term (``model.linear``; see :mod:`nervus_lightning.models.net`) has the
log hazard ratio :math:`\eta = f(x) + w^\top x` with the network path :math:`f` starting at zero.
Before training, :math:`w` is set to the penalised partial-likelihood estimate on the training
split,

.. math:: \hat w = \arg\min_w\; -\log L(w) + \tfrac{\alpha}{2} \lVert w \rVert^2,

(:math:`\log L` of :mod:`nervus_lightning.survival.loss`, Efron or Breslow ties), the same
estimate as scikit-survival's ``CoxPHSurvivalAnalysis(alpha=alpha)`` (checked in the tests). The
deep model then starts as the fitted linear Cox model, and the checkpoint kept by validation loss
is at worst a few optimiser steps away from it. The small ridge ``alpha`` keeps the estimate
finite when an input separates the events (a rare one-hot level).

Why hand-written: the objective is convex and tiny (one weight per input); torch's L-BFGS on
the library's own loss fits it in float64 without a new dependency or a round trip through numpy
estimators, on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nervus_lightning.survival.loss import cox_partial_log_likelihood

__all__ = ["fit_linear_cox"]


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
    weight = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    n_events = int(event.sum())
    if n_events == 0 or x.shape[1] == 0:
        return weight.detach().float()
    optimizer = torch.optim.LBFGS(
        [weight],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        # Per event, so that the tolerances mean the same for small and large splits.
        loss = (
            -cox_partial_log_likelihood(x @ weight, time, event, ties)
            + 0.5 * alpha * weight.square().sum()
        ) / n_events
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach().float()
