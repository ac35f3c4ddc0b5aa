"""Shrink an overfitted Cox model's log hazards by their calibration slope on the validation rows.

A model that fits its training rows too closely spreads its log hazard ratios too far: high
risks too high, low risks too low, and its survival curves too extreme, so that on new patients
they can be less accurate than the Kaplan-Meier curve given to everyone (an IPA below 0). The
textbook remedy (van Houwelingen and le Cessie, 1990; Steyerberg, *Clinical Prediction Models*,
ch. 13) is the *calibration slope*: a Cox model on held-out rows with the log hazard as its only
input; a slope below 1 says the log hazards are too spread, and multiplying them by the slope
calibrates them. A positive factor keeps every patient's rank, so the C-index and the
time-dependent AUC do not change; only the survival curves (and the Brier score, the IBS and
the IPA) do.

:func:`calibration_slope` fits the slope on the validation rows (after the checkpoint was
chosen, on the same rows), and :func:`shrink_factor` turns it into the factor applied: the
slope when it is below 1, floored at :data:`SLOPE_FLOOR` (a slope at or below 0, a model with no
signal on validation, still keeps its ranks), and 1 (nothing changed) when validation holds
fewer than :data:`MIN_SLOPE_EVENTS` events (the usual ten events per estimated coefficient), or
the slope is 1 or more (the model is never stretched). :func:`scale_outputs`
multiplies each member's last layer of the head and its linear term by the factor, so the
network itself outputs the shrunk log hazard: the checkpoint, ``predict`` and the ONNX export
need nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nervus_lightning.models.ensemble import member_nets
from nervus_lightning.survival.linear import fit_linear_cox

__all__ = [
    "MIN_SLOPE_EVENTS",
    "SLOPE_FLOOR",
    "Shrinkage",
    "calibration_slope",
    "scale_outputs",
    "shrink_factor",
    "shrink_net",
]

log = logging.getLogger(__name__)

#: Validation events needed to estimate the slope: ten events per estimated coefficient (one).
MIN_SLOPE_EVENTS = 10

#: Smallest factor applied: a model whose validation slope is at or below this keeps its ranks.
SLOPE_FLOOR = 0.01


@dataclass
class Shrinkage:
    """One Cox label's calibration slope on validation and the factor applied to its log
    hazards (aggregates only: two numbers and a count)."""

    slope: float | None
    factor: float
    val_events: int

    def summary(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.slope is None:
            return (
                f"not shrunk: {self.val_events} validation event(s), fewer than the "
                f"{MIN_SLOPE_EVENTS} needed to estimate the calibration slope"
            )
        if self.factor >= 1.0:
            return f"not shrunk: calibration slope on val {self.slope:.3g} (not below 1)"
        return (
            f"log hazards multiplied by {self.factor:.3g}, the calibration slope on val "
            f"({self.val_events} events; ranks and C-index unchanged)"
        )


def calibration_slope(risk: np.ndarray, time: np.ndarray, event: np.ndarray, ties: str) -> float:
    """The coefficient of a Cox model on these rows with ``risk`` (the log hazard) as its only
    input (unpenalised but for a negligible ridge, ``ties`` as the task's)."""
    x = torch.as_tensor(np.asarray(risk, np.float64) - np.mean(risk)).reshape(-1, 1)
    slope = fit_linear_cox(
        x,
        torch.as_tensor(np.asarray(time, np.float64)),
        torch.as_tensor(np.asarray(event) != 0),
        ties=ties,
        alpha=1e-6,
    )
    return float(slope[0])


def shrink_factor(risk: np.ndarray, time: np.ndarray, event: np.ndarray, ties: str) -> Shrinkage:
    """The factor for one label's log hazards from its validation rows (module docstring)."""
    events = int((np.asarray(event) != 0).sum())
    if events < MIN_SLOPE_EVENTS or np.ptp(risk) == 0:
        return Shrinkage(slope=None, factor=1.0, val_events=events)
    slope = calibration_slope(risk, time, event, ties)
    return Shrinkage(slope=slope, factor=float(np.clip(slope, SLOPE_FLOOR, 1.0)), val_events=events)


def _last_linear(head: nn.Module) -> nn.Linear:
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(head).__name__} has no nn.Linear layer to scale")
    return layers[-1]


@torch.no_grad()
def scale_outputs(net: nn.Module, j: int, factor: float) -> None:
    """Multiply output ``j`` of every member of ``net`` by ``factor``: the last linear layer of
    its head ``j`` and its linear term ``j`` (when it has one). The caller checks that the output
    did scale (a head ending in a non-linear layer would not)."""
    for member in member_nets(net):
        last = _last_linear(member.heads[j])
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)
        if member.linear_terms is not None:
            term = member.linear_terms[j]
            term.weight.mul_(factor)
            if term.bias is not None:
                term.bias.mul_(factor)


@torch.no_grad()
def shrink_net(
    net: nn.Module,
    infer_val: Callable[[], list[np.ndarray]],
    val: pd.DataFrame,
    labels: Sequence[Any],
    task: Any,
) -> dict[str, Shrinkage]:
    """Shrink every label ``j`` of ``net`` that ``task.shrinks(j)`` by :func:`shrink_factor` of
    its validation rows ``val`` (``labels``: the schema's label specs; ``infer_val``: the net's
    outputs on those rows, one array per label). Checks that each output did scale (a head
    ending in a non-linear layer would not) and logs each label's choice."""
    shrunk = [j for j in range(len(labels)) if task.shrinks(j)]
    if not shrunk:
        return {}
    before = infer_val()
    chosen: dict[str, Shrinkage] = {}
    for j in shrunk:
        spec = labels[j]
        time = pd.to_numeric(val[spec.period], errors="coerce").to_numpy(np.float64)
        event = pd.to_numeric(val[spec.name], errors="coerce").to_numpy(np.float64)
        risk = before[j][:, 0].astype(np.float64)
        known = np.isfinite(time) & np.isfinite(event) & np.isfinite(risk)
        choice = shrink_factor(risk[known], time[known], event[known], task.ties)
        if choice.factor < 1.0:
            scale_outputs(net, j, choice.factor)
        chosen[spec.name] = choice
    after = infer_val()
    for j, name in zip(shrunk, chosen, strict=True):
        if not np.allclose(after[j], before[j] * chosen[name].factor, rtol=1e-4, atol=1e-5):
            raise RuntimeError(
                f"label '{name}': scaling the head's last layer did not scale its output "
                "(a head that ends in a non-linear layer); set task.shrink=false."
            )
    for name, choice in chosen.items():
        log.info("label '%s': %s", name, choice.describe())
    return chosen
