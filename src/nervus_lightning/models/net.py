"""``NervusNet``: extractors + mixer + one head per label, a plain ``nn.Module``.

It knows nothing of Lightning, losses or label meanings: it maps a batch of images and/or raw
tabular inputs to one output tensor per label (logits, standardised values or log hazards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class NervusNet(nn.Module):
    """Feature extractors, a mixer that fuses them, and parallel heads.

    Args:
        image_extractor: maps (B, C, H, W) to (B, F_img), with an ``out_features`` attribute.
        tabular_extractor: maps (B, n_inputs) to (B, F_tab), with ``out_features``.
        mixer: fuses the list of feature vectors (needed only with two extractors).
        head_sizes: output size of each head (classes, or 1 for regression / survival).
        head: builds one head as ``head(in_features, out_features)`` (default ``nn.Linear``).
    """

    def __init__(
        self,
        head_sizes: Sequence[int],
        image_extractor: nn.Module | None = None,
        tabular_extractor: nn.Module | None = None,
        mixer: nn.Module | None = None,
        head: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if image_extractor is None and tabular_extractor is None:
            raise ValueError("NervusNet needs an image extractor, a tabular extractor, or both")
        self.image_extractor = image_extractor
        self.tabular_extractor = tabular_extractor
        both = image_extractor is not None and tabular_extractor is not None
        self.mixer = mixer if both else None
        if self.mixer is not None:
            features = self.mixer.out_features
        elif both:
            features = image_extractor.out_features + tabular_extractor.out_features
        else:
            features = (image_extractor or tabular_extractor).out_features
        head = head or nn.Linear
        self.heads = nn.ModuleList(head(features, size) for size in head_sizes)

    def features(
        self, image: torch.Tensor | None = None, tabular: torch.Tensor | None = None
    ) -> torch.Tensor:
        feats = []
        if self.image_extractor is not None:
            feats.append(self.image_extractor(image))
        if self.tabular_extractor is not None:
            feats.append(self.tabular_extractor(tabular))
        if self.mixer is not None:
            return self.mixer(feats)
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)

    def forward(
        self, image: torch.Tensor | None = None, tabular: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        shared = self.features(image, tabular)
        return [head(shared) for head in self.heads]
