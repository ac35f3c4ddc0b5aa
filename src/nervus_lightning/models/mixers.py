"""Feature mixers: fuse the feature vectors of several extractors into one."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nervus_lightning.models.tabular import mlp


class ConcatMixer(nn.Module):
    """Concatenate the feature vectors, then an MLP (Nervus's fusion)."""

    def __init__(
        self,
        in_features: Sequence[int],
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        total = sum(in_features)
        self.net = mlp(total, hidden, dropout, norm)
        self.out_features = hidden[-1] if hidden else total

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat(features, dim=1))


MIXERS = {"concat": ConcatMixer}
