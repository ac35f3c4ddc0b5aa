r"""Cox partial likelihood on tensors: the loss of survival (DeepSurv) heads.

This module owns the Cox proportional-hazards partial log-likelihood with Efron's or Breslow's
handling of tied event times, and the per-event loss built on it. Both are pure, vectorised,
differentiable functions of tensors; they know nothing about models or Lightning.

Notation: subject :math:`i` has log hazard ratio :math:`\eta_i` (``risk``), observed time
:math:`T_i` and event indicator :math:`\delta_i`. Let :math:`t_1 < \dots < t_J` be the distinct
event times, :math:`D_j = \{i: T_i = t_j, \delta_i = 1\}` the :math:`d_j` events at :math:`t_j` and
:math:`R_j = \{i: T_i \ge t_j\}` its risk set (subjects censored at :math:`t_j` are at risk).

Breslow:

.. math::

    \log L = \sum_j \Big[\sum_{i \in D_j} \eta_i
             - d_j \log \sum_{i \in R_j} e^{\eta_i}\Big]

Efron:

.. math::

    \log L = \sum_j \Big[\sum_{i \in D_j} \eta_i
             - \sum_{l=0}^{d_j - 1} \log\Big(\sum_{i \in R_j} e^{\eta_i}
             - \frac{l}{d_j} \sum_{i \in D_j} e^{\eta_i}\Big)\Big]

Without ties (all :math:`d_j = 1`) both reduce to Cox's partial likelihood.

Why hand-written: pycox's ``cox_ph_loss`` orders tied times arbitrarily (neither Breslow nor
Efron) and torchsurv is not a dependency; this implementation is checked against
scikit-survival's ``CoxPHOptimizer`` in ``tests/test_survival_loss.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TIES", "cox_loss", "cox_partial_log_likelihood", "efron_log_likelihood"]

TIES = ("efron", "breslow")


def _check_inputs(risk: Tensor, time: Tensor, event: Tensor, ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if risk.ndim != 1 or time.ndim != 1 or event.ndim != 1:
        raise ValueError(
            "risk, time and event must be 1-D tensors, got shapes "
            f"{tuple(risk.shape)}, {tuple(time.shape)}, {tuple(event.shape)}"
        )
    if not (risk.shape[0] == time.shape[0] == event.shape[0]):
        raise ValueError(
            f"risk, time and event must have the same length, got {risk.shape[0]}, "
            f"{time.shape[0]}, {event.shape[0]}"
        )
    if not torch.is_floating_point(risk):
        raise ValueError(f"risk must be a floating point tensor, got {risk.dtype}")


def cox_partial_log_likelihood(
    risk: Tensor, time: Tensor, event: Tensor, ties: str = "efron"
) -> Tensor:
    r"""Cox partial log-likelihood :math:`\log L` (a scalar sum over events; see module docstring).

    Args:
        risk: log hazard ratios :math:`\eta`, shape ``(n,)``, floating point.
        time: observed times (event or censoring), shape ``(n,)``.
        event: event indicators (bool or 0/1), shape ``(n,)``; 0 means right-censored.
        ties: ``"efron"`` or ``"breslow"``: how tied event times are handled.

    Returns:
        0-d tensor, differentiable with respect to ``risk``; 0 when there is no event.

    Risk-set sums are computed in log space (reverse ``logcumsumexp`` and a per-time-group
    log-sum-exp), so risks of any magnitude give finite values and gradients.
    """
    _check_inputs(risk, time, event, ties)
    event = event.to(device=risk.device) != 0
    time = time.to(device=risk.device)

    time_sorted, order = torch.sort(time, stable=True)
    eta = risk[order]
    is_event = event[order]
    if not bool(is_event.any()):
        return risk.sum() * 0.0

    # Tie groups: consecutive equal times after sorting.
    _, group, group_size = torch.unique_consecutive(
        time_sorted, return_inverse=True, return_counts=True
    )
    group_start = torch.cumsum(group_size, 0) - group_size

    # log sum_{k >= i} exp(eta_k) for every sorted position; the risk set of a tie group starts
    # at the group's first member so subjects tied in time share one risk set.
    log_tail = torch.flip(torch.logcumsumexp(torch.flip(eta, (0,)), 0), (0,))
    log_risk_set = log_tail[group_start]

    eta_e = eta[is_event]
    group_e = group[is_event]
    log_risk_e = log_risk_set[group_e]
    if ties == "breslow":
        return (eta_e - log_risk_e).sum()

    # Efron: the l-th of d tied events (l = 0..d-1) sees the risk set minus l/d of the tied
    # events' total hazard:  log(S_R - c S_D) = log S_R + log1p(-c exp(log S_D - log S_R)).
    _, event_group, n_tied = torch.unique_consecutive(
        group_e, return_inverse=True, return_counts=True
    )
    first = torch.cumsum(n_tied, 0) - n_tied
    rank = torch.arange(eta_e.shape[0], device=eta.device) - first[event_group]
    fraction = rank.to(eta.dtype) / n_tied[event_group].to(eta.dtype)

    return efron_log_likelihood(eta_e, log_risk_e, event_group, n_tied.shape[0], fraction)


def efron_log_likelihood(
    eta_e: Tensor, log_risk_e: Tensor, event_group: Tensor, n_groups: int, fraction: Tensor
) -> Tensor:
    """Efron's log partial likelihood from the events' log hazards ``eta_e``, their risk sets'
    log sums ``log_risk_e``, their tie group (``event_group``, ``0..n_groups-1``) and their
    ``fraction`` ``l/d`` (the l-th of d tied events)."""
    # Log-sum-exp over the events of each group; the shift is detached because the result does
    # not depend on it mathematically.
    shift = torch.full((n_groups,), float("-inf"), dtype=eta_e.dtype, device=eta_e.device)
    shift = shift.scatter_reduce(0, event_group, eta_e.detach(), reduce="amax")
    summed = torch.zeros(n_groups, dtype=eta_e.dtype, device=eta_e.device)
    summed = summed.index_add(0, event_group, torch.exp(eta_e - shift[event_group]))
    log_tied = torch.log(summed) + shift

    ratio = torch.exp(log_tied[event_group] - log_risk_e)
    log_denominator = log_risk_e + torch.log1p(-fraction * ratio)
    return (eta_e - log_denominator).sum()


def cox_loss(risk: Tensor, time: Tensor, event: Tensor, ties: str = "efron") -> Tensor:
    r"""Negative Cox partial log-likelihood per event: :math:`-\log L / \sum_i \delta_i`.

    Dividing by the number of events (not subjects) keeps the loss scale comparable across
    batches with different censoring. A batch without any event carries no information for the
    partial likelihood: the result is then ``risk.sum() * 0.0``, a zero that keeps the autograd
    graph (so optimisers and DDP see a gradient of exactly zero) instead of NaN.

    Args and ``ties``: as in :func:`cox_partial_log_likelihood`.
    """
    _check_inputs(risk, time, event, ties)
    n_events = (event != 0).sum()
    if int(n_events) == 0:
        return risk.sum() * 0.0
    return -cox_partial_log_likelihood(risk, time, event, ties) / n_events.to(risk.dtype)
