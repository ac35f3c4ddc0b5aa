"""Tabular feature extractor: standardisation with training statistics, then an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": None}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    dropout: float = 0.0,
    norm: str = "batch",
) -> nn.Sequential:
    """Linear -> norm -> ReLU -> dropout, once per hidden size."""
    if norm not in NORMS:
        raise ValueError(f"norm '{norm}' is not one of {list(NORMS)}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if NORMS[norm] is not None:
            layers.append(NORMS[norm](size))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers)


class TabularMLP(nn.Module):
    """Standardises raw inputs with stored training mean/std (buffers, saved in checkpoints)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        hidden: Sequence[int] = (64, 64),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        self.net = mlp(len(mean), hidden, dropout, norm)
        self.out_features = hidden[-1] if hidden else len(mean)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs on the training scale: ``(x - mean) / std``, as the MLP sees them; 0 for an
        input whose training sd is 0 (one value on every training row: nothing to learn from,
        so another value later must not reach the network; see ``_fit_inputs`` in
        :mod:`nervus_lightning.data.schema`). Checkpoints saved before 2026-12-08 hold sd 1
        there and are read as they were."""
        varies = self.std > 0
        return (x - self.mean) / torch.where(varies, self.std, 1.0) * varies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(x))
