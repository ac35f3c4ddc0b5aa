"""Heads: the output layer of one label, fed with the (fused) features.

A head is any ``nn.Module`` built as ``Head(in_features, out_features, **options)`` that maps
``(B, in_features)`` features to ``(B, out_features)`` raw outputs (class logits, one
standardised value, one log hazard); the task turns those into what users read. The built-in
heads are entries of ``conf/model/head/``; a user's own class plugs in the same way, from a YAML
with ``_target_: their_pkg.TheirHead`` in their config folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nervus_lightning.models.tabular import mlp


class LinearHead(nn.Linear):
    """One linear layer (Nervus's head)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)


class MLPHead(nn.Module):
    """A small MLP per label before its output layer (label-specific features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.1,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.body = mlp(in_features, hidden, dropout, norm)
        self.out = nn.Linear(hidden[-1] if hidden else in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(features))


HEADS = {"linear": LinearHead, "mlp": MLPHead}
