"""``NervusNet``: extractors + mixer + one head per label, a plain ``nn.Module``.

It knows nothing of Lightning, losses or label meanings: it maps a batch of images and/or raw
tabular inputs to one output tensor per label (logits, standardised values or log hazards).

The forward pass is split in two public steps, so that a tool (e.g. an explanation) can run one
part live and keep the others fixed:

* :meth:`NervusNet.feature_blocks` -> one (B, F) tensor per *feature block*: each image view in
  view order (:meth:`NervusNet.view_features`), then the tabular block
  (:meth:`NervusNet.tabular_features`);
* :meth:`NervusNet.fuse` -> the mixer (when there is more than one block) and the heads.

``forward(image, tabular, view_mask)`` is ``fuse(feature_blocks(image, tabular, view_mask),
tabular)``.

With ``linear=True`` each head's output also gets a linear term of the standardised tabular
inputs, ``output = head(mixed features) + W x_std + b`` (a skip connection beside the network),
and the last linear layer of every head starts at zero: at initialisation the network's path
adds exactly nothing, so the model *is* a linear model (for a Cox head, linear Cox; the module
sets ``W`` to the training split's fit) and training adds what the network learns on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class NervusNet(nn.Module):
    """Feature extractors, a mixer that fuses them, and parallel heads.

    Args:
        head_sizes: output size of each head (classes, or 1 for regression / survival).
        image_extractor: maps (B, C, H, W) to (B, F_img), with an ``out_features`` attribute.
            With ``views``, it is shared by every view; or give a sequence of extractors, one
            per view, in view order.
        tabular_extractor: maps (B, n_inputs) to (B, F_tab), with ``out_features``.
        mixer: fuses the list of feature blocks (image views in order, then tabular); used
            whenever there is more than one block. Without one, the blocks are concatenated.
        head: builds one head as ``head(in_features, out_features)`` (default ``nn.Linear``).
        views: view names for several images per case: ``image`` is then (B, V, C, H, W).
            None (default): one image per case, (B, C, H, W).
        missing_views: learn one "missing" feature vector per view, used in place of the
            view's features where ``view_mask`` is False.
        linear: add a linear term of the standardised tabular inputs to every head's output
            and zero the heads' last linear layer (module docstring). Needs a tabular extractor
            with a ``standardise`` method (``TabularMLP``) and heads that end in ``nn.Linear``.
    """

    def __init__(
        self,
        head_sizes: Sequence[int],
        image_extractor: nn.Module | Sequence[nn.Module] | None = None,
        tabular_extractor: nn.Module | None = None,
        mixer: nn.Module | None = None,
        head: Callable[[int, int], nn.Module] | None = None,
        views: Sequence[str] | None = None,
        missing_views: bool = False,
        linear: bool = False,
    ) -> None:
        super().__init__()
        if image_extractor is None and tabular_extractor is None:
            raise ValueError("NervusNet needs an image extractor, a tabular extractor, or both")
        self.views = list(views) if views else None
        per_view = isinstance(image_extractor, Sequence) and not isinstance(
            image_extractor, nn.Module
        )
        if per_view and (self.views is None or len(image_extractor) != len(self.views)):
            raise ValueError("one image extractor per view needs views of the same length")
        # Single-view nets keep the attribute name of earlier versions (checkpoint keys).
        self.image_extractor = None if per_view else image_extractor
        self.view_extractors = nn.ModuleList(image_extractor) if per_view else None
        self.tabular_extractor = tabular_extractor

        sizes = self.block_sizes()
        self.mixer = mixer if len(sizes) > 1 else None
        if missing_views and self.views:
            self.missing_view_features = nn.ParameterList(
                nn.Parameter(torch.zeros(size)) for size in sizes[: len(self.views)]
            )
        else:
            self.missing_view_features = None
        features = self.mixer.out_features if self.mixer is not None else sum(sizes)
        head = head or nn.Linear
        self.heads = nn.ModuleList(head(features, size) for size in head_sizes)
        self.linear_terms = self._linear_terms(head_sizes) if linear else None

    def _linear_terms(self, head_sizes: Sequence[int]) -> nn.ModuleList:
        """One ``nn.Linear(n_inputs, head_size)`` per head, starting at zero, and each head's
        last linear layer zeroed, so that the initial output is exactly 0."""
        standardise = getattr(self.tabular_extractor, "standardise", None)
        if standardise is None:
            raise ValueError(
                "linear=True needs a tabular extractor with a standardise method (TabularMLP)"
            )
        n_inputs = int(self.tabular_extractor.mean.numel())
        terms = nn.ModuleList()
        for head, size in zip(self.heads, head_sizes, strict=True):
            last = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if not last:
                raise ValueError(
                    f"linear=True needs heads that end in nn.Linear; {type(head).__name__} has none"
                )
            nn.init.zeros_(last[-1].weight)
            if last[-1].bias is not None:
                nn.init.zeros_(last[-1].bias)
            term = nn.Linear(n_inputs, size)
            nn.init.zeros_(term.weight)
            nn.init.zeros_(term.bias)
            terms.append(term)
        return terms

    # -- blocks ---------------------------------------------------------------------------
    def image_extractors(self) -> list[nn.Module]:
        """The image extractor of each view (the same module repeated when shared); one for a
        single-view net; empty without images."""
        if self.view_extractors is not None:
            return list(self.view_extractors)
        if self.image_extractor is None:
            return []
        return [self.image_extractor] * (len(self.views) if self.views else 1)

    def block_sizes(self) -> list[int]:
        """Feature size of each block: image views in order, then tabular."""
        sizes = [int(e.out_features) for e in self.image_extractors()]
        if self.tabular_extractor is not None:
            sizes.append(int(self.tabular_extractor.out_features))
        return sizes

    def modalities(self) -> list[str]:
        """Name of each block: ``image/<view>`` (``image/image`` for one image), ``tabular``."""
        names = [f"image/{v}" for v in (self.views or ["image"])] if self.image_extractors() else []
        return names + (["tabular"] if self.tabular_extractor is not None else [])

    def view_features(
        self, image: torch.Tensor, view_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """One (B, F) feature tensor per view, in view order (one tensor for a single view).

        ``image`` is (B, C, H, W) for a single-view net, (B, V, C, H, W) otherwise. Where
        ``view_mask`` (B, V) is False, the view's learned "missing" embedding replaces its
        features.
        """
        if not self.views:
            return [self.image_extractor(image).flatten(1)]
        n = len(self.views)
        if image.ndim not in (5, 6) or image.shape[1] != n:  # 6: volumes (B, V, 1, D, H, W)
            raise ValueError(
                f"expected images of shape (B, {n}, C, H, W) for the views {self.views}, "
                f"got {tuple(image.shape)}"
            )
        if self.view_extractors is None:
            # One pass over every view of every case through the shared extractor.
            flat = self.image_extractor(image.flatten(0, 1)).flatten(1)
            feats = list(flat.unflatten(0, (image.shape[0], n)).unbind(1))
        else:
            feats = [
                extract(image[:, v]).flatten(1) for v, extract in enumerate(self.view_extractors)
            ]
        if view_mask is not None and self.missing_view_features is not None:
            # torch.where, not indexing: the graph keeps static shapes (export) and the
            # embedding gets its gradient from the cases that miss the view.
            feats = [
                torch.where(view_mask[:, v : v + 1], f, self.missing_view_features[v].to(f.dtype))
                for v, f in enumerate(feats)
            ]
        return feats

    def tabular_features(self, tabular: torch.Tensor) -> torch.Tensor:
        """(B, F_tab) features of the raw tabular inputs."""
        return self.tabular_extractor(tabular)

    def feature_blocks(
        self,
        image: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Every feature block, in the order the mixer takes them (views, then tabular)."""
        blocks = self.view_features(image, view_mask) if self.image_extractors() else []
        if self.tabular_extractor is not None:
            blocks.append(self.tabular_features(tabular))
        return blocks

    # -- fusion and heads -----------------------------------------------------------------
    def mix(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The shared representation the heads read: the mixer's output, or the only block."""
        if self.mixer is not None:
            return self.mixer(blocks)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)

    def fuse(
        self, blocks: list[torch.Tensor], tabular: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Mixer and heads: feature blocks (as :meth:`feature_blocks` gives) -> one output per
        label. ``tabular``: the raw tabular inputs, needed by a net with linear terms."""
        shared = self.mix(blocks)
        outputs = [head(shared) for head in self.heads]
        if self.linear_terms is None:
            return outputs
        if tabular is None:
            raise ValueError("this net has linear terms: fuse needs the raw tabular inputs")
        x = self.tabular_extractor.standardise(tabular)
        return [out + term(x) for out, term in zip(outputs, self.linear_terms, strict=True)]

    def features(
        self,
        image: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The shared representation (the heads' input) of a batch."""
        return self.mix(self.feature_blocks(image, tabular, view_mask))

    def forward(
        self,
        image: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        return self.fuse(self.feature_blocks(image, tabular, view_mask), tabular)
