r"""Convex solvers of the penalised linear starts (:mod:`nervus_lightning.models.penalty`,
:mod:`nervus_lightning.survival.linear`): L-BFGS for smooth objectives (ridge), accelerated
proximal gradient for the elastic net's lasso part, the elastic-net term itself and the
penalty at which the elastic net zeroes every weight. Tiny problems (one weight per input and
class), float64, any device; no dependency beyond torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["elastic_net_term", "largest_useful_penalty", "minimise_lbfgs", "minimise_proximal"]


def minimise_lbfgs(
    weight: Tensor,
    objective: Callable[[Tensor], Tensor],
    max_iter: int = 100,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-10,
) -> Tensor:
    """Minimise the convex ``objective(weight)`` from ``weight`` with L-BFGS (strong Wolfe line
    search); returns the minimiser (detached)."""
    weight = weight.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = objective(weight)
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach()


def elastic_net_term(
    weight: Tensor, penalty: float, l1_ratio: float, center: Tensor | None = None
) -> Tensor:
    r"""The elastic-net penalty :math:`\lambda (a \lVert w \rVert_1 + \tfrac{1-a}{2}
    \lVert w - c \rVert^2)` of ``weight`` (glmnet's and scikit-survival's Coxnet's form; ``a`` =
    ``l1_ratio``, 0 is ridge; ``center`` :math:`c`, default 0:
    :func:`~nervus_lightning.models.penalty.linear_penalty_center`)."""
    offset = weight if center is None else weight - center.to(weight)
    ridge = 0.5 * (1.0 - l1_ratio) * offset.square().sum()
    return penalty * (l1_ratio * weight.abs().sum() + ridge)


def minimise_proximal(
    weight: Tensor,
    smooth: Callable[[Tensor], Tensor],
    l1: float,
    max_iter: int = 2000,
    tolerance: float = 1e-8,
    l1_mask: Tensor | None = None,
) -> Tensor:
    r"""Minimise ``smooth(w) + l1 * ||m * w||_1`` (``smooth`` convex and differentiable) from
    ``weight`` by accelerated proximal gradient (FISTA, Beck and Teboulle 2009) with a
    backtracking step: the lasso part sets weights exactly to zero, which L-BFGS cannot. Stops
    when no weight moves by more than ``tolerance`` in a step; returns the minimiser (detached).
    ``l1_mask`` ``m`` (1 penalised, 0 free; default all 1) leaves intercepts unpenalised.
    """
    scale = torch.ones_like(weight) if l1_mask is None else l1_mask.to(weight)

    def value_and_grad(w: Tensor) -> tuple[Tensor, Tensor]:
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            value = smooth(w)
            (grad,) = torch.autograd.grad(value, w)
        return value.detach(), grad

    def shrink(w: Tensor, amount: float) -> Tensor:
        return torch.sign(w) * torch.clamp(w.abs() - amount * scale, min=0.0)

    current = weight.detach().clone()
    ahead, momentum, step = current, 1.0, 1.0
    for _ in range(max_iter):
        value, grad = value_and_grad(ahead)
        while True:  # backtracking: the quadratic model must bound smooth at the new point
            proposal = shrink(ahead - step * grad, step * l1)
            moved = proposal - ahead
            bound = value + (grad * moved).sum() + moved.square().sum() / (2 * step)
            if float(smooth(proposal)) <= float(bound) + 1e-12 or step < 1e-12:
                break
            step *= 0.5
        next_momentum = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
        ahead = proposal + (momentum - 1) / next_momentum * (proposal - current)
        change = float((proposal - current).abs().max())
        current, momentum = proposal, next_momentum
        step *= 1.5  # let the step grow back after a cautious stretch
        if change <= tolerance:
            break
    return current.detach()


def largest_useful_penalty(grad_at_zero: Tensor, l1_ratio: float) -> float:
    r"""The smallest elastic-net penalty at which every weight is exactly zero:
    :math:`\max_k |\partial \ell / \partial w_k (0)| / a` (glmnet's :math:`\lambda_{max}`)."""
    return float(grad_at_zero.abs().max()) / max(l1_ratio, 1e-12)
