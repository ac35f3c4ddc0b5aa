"""Where the linear terms of a net start, and the penalty that keeps them there in training.

A net built with ``linear=True`` (:mod:`nervus_lightning.models.net`) has one linear term of the
standardised tabular inputs per head. :func:`start_linear_terms` sets every ensemble member's
terms to the task's penalised linear fit (:meth:`nervus_lightning.tasks.base.Task.linear_start`:
ridge or elastic-net Cox, multinomial logistic or ridge regression, its penalty chosen on the
validation rows, :mod:`nervus_lightning.models.penalty`); :func:`linear_penalty` is the same
penalty added to the training loss. Both work on plain modules, without Lightning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nervus_lightning.errors import SPLIT_COLUMN, TRAIN, VAL, NervusInputError
from nervus_lightning.models.ensemble import member_nets
from nervus_lightning.models.penalty import describe_choice, inputs_in_use
from nervus_lightning.models.solvers import elastic_net_term

__all__ = [
    "linear_penalty",
    "linear_term_by_default",
    "resolve_linear",
    "start_linear_terms",
]

log = logging.getLogger(__name__)


def linear_term_by_default(schema: Any, task: Any) -> bool:
    """``model.tabular.linear=auto``: a linear term on tabular inputs alone, for Cox survival,
    classification and regression heads.

    The penalised linear model (Cox, multinomial logistic, ridge; its penalty chosen on the
    validation rows, :mod:`nervus_lightning.models.penalty`) is the reference every tabular
    model is judged against; with the term the deep model starts as that model and training
    adds the network on top. Discrete-time
    heads (``logistic_hazard``, ``pmf``, ``deephit``) do not get it by default: their linear
    special case (one logistic model per time interval) is not the reference model; they start
    as the training Kaplan-Meier curve instead (:func:`start_heads`). Runs with
    images keep their fusion as it was (set ``model.tabular.linear=true`` to add the term there).
    """
    return task.linear_by_default and bool(schema.input_columns) and not schema.has_images


def resolve_linear(linear: bool | str, schema: Any, task: Any) -> bool:
    """``model.tabular.linear`` (true, false or auto) as a yes/no for this schema and task."""
    if linear == "auto":
        return linear_term_by_default(schema, task)
    if not isinstance(linear, bool):
        raise NervusInputError(f"model.tabular.linear must be true, false or auto, got {linear!r}.")
    if linear and not schema.input_columns:
        raise NervusInputError(
            "model.tabular.linear=true adds a linear term of the input_* columns, and the "
            "data have none; set model.tabular.linear=false (or auto)."
        )
    return linear


@torch.no_grad()
def start_linear_terms(
    net: nn.Module,
    task: Any,
    labels: Sequence[Any],
    input_columns: Sequence[str],
    frame: pd.DataFrame,
) -> dict[str, dict[str, Any]]:
    """Set the linear terms of every member of ``net`` to ``task``'s start, fitted on the
    ``train`` rows of ``frame`` with its penalty chosen on its ``val`` rows; return each label's
    choice (:meth:`~nervus_lightning.models.penalty.PenaltyChoice.summary`) by label name."""
    frame = frame.reset_index(drop=True)
    split = frame[SPLIT_COLUMN].to_numpy()
    train_rows = np.flatnonzero(split == TRAIN)
    val_rows = np.flatnonzero(split == VAL)
    raw = torch.as_tensor(frame[list(input_columns)].to_numpy(np.float32))
    first = member_nets(net)[0]
    device = first.linear_terms[0].weight.device
    inputs = first.tabular_extractor.standardise(raw.to(device)).cpu()
    choices = [
        task.linear_start(inputs, frame, train_rows, val_rows, j)
        for j in range(len(first.linear_terms))
    ]
    summaries = {}
    for spec, choice in zip(labels, choices, strict=True):
        if choice is not None:
            summary = {**choice.summary(), **inputs_in_use(choice.weight, len(input_columns))}
            summaries[spec.name] = summary
            log.info("label '%s': linear start with %s", spec.name, describe_choice(summary))
    for member in member_nets(net):  # every ensemble member starts from the same fit
        for term, choice in zip(member.linear_terms, choices, strict=True):
            if choice is None:
                continue
            weight = choice.weight.to(term.weight)
            if weight.shape[1] == term.weight.shape[1] + 1:  # the intercept last
                term.bias.copy_(weight[:, -1])
                weight = weight[:, :-1]
            term.weight.copy_(weight)
    return summaries


def linear_penalty(
    net: nn.Module, choices: Mapping[str, Mapping[str, Any]], labels: Sequence[Any]
) -> torch.Tensor | float:
    """Each label's chosen penalty (``choices``, as :func:`start_linear_terms` returns them) of
    its linear term, summed over the terms of every member of ``net``: ridge
    ``lambda_j / 2 ||w_j||^2``, or the elastic net's
    (:func:`~nervus_lightning.models.penalty.elastic_net_term`), its ridge part centred where the
    choice says (a start scaled on held-out rows:
    :func:`~nervus_lightning.models.penalty.linear_penalty_center`). Added to the training loss,
    it keeps each term at its start instead of letting it drift to the unpenalised fit (which,
    with more inputs than events, does not exist)."""
    if not choices:
        return 0.0
    chosen = [choices.get(spec.name, {}) for spec in labels]
    total: torch.Tensor | float = 0.0
    for member in member_nets(net):
        if member.linear_terms is None:
            continue
        for term, choice in zip(member.linear_terms, chosen, strict=True):
            if choice.get("penalty"):
                l1_ratio = float(choice.get("l1_ratio") or 0.0)
                center = choice.get("center")
                if center is not None:
                    center = torch.as_tensor(center, dtype=torch.float32)
                term_penalty = elastic_net_term(
                    term.weight.float(), choice["penalty"], l1_ratio, center
                )
                total = total + term_penalty
    return total


@torch.no_grad()
def start_heads(net: nn.Module, task: Any, n_labels: int, train: pd.DataFrame) -> None:
    """Start each head's output layer at the task's start on the training rows
    (``Task.head_start``; discrete-time survival: the Kaplan-Meier curve) before the first
    epoch, in every ensemble member: its bias set to the start and its weights to zero, so that
    the first output is exactly the start, as a linear term's head starts at its fit. A resumed
    run then loads its checkpoint's weights over it."""
    for j in range(n_labels):
        bias = task.head_start(train, j)
        if bias is None:
            continue
        for member in member_nets(net):
            layers = [m for m in member.heads[j].modules() if isinstance(m, nn.Linear)]
            if layers and layers[-1].bias is not None:
                nn.init.zeros_(layers[-1].weight)
                layers[-1].bias.copy_(bias.to(layers[-1].bias))
