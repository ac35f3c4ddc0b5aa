"""Feature mixers: fuse the feature vectors of several extractors into one.

This module owns the built-in fusion choices of ``model/mixer=`` (:data:`MIXERS`) and the
contract every mixer, built-in or a user's, follows:

* built as ``Mixer(in_features, modalities=None, **options)``. ``in_features`` are the widths of
  the feature blocks in the order the model passes them: the image views first, in view order,
  then the tabular block last when the data have one. ``modalities`` names each block,
  ``"image/<view>"`` (or plain ``"image"``) or ``"tabular"``.
* ``forward(features)`` takes one ``(B, F_i)`` tensor per block and returns ``(B, out_features)``;
  ``out_features`` is an attribute.

When ``modalities`` is ``None`` (a caller that predates several views), the blocks are read as the
model has always passed them: with two or more blocks, every block but the last is an image
view (``image/0``, ``image/1``, ...) and the last is the tabular block; a single block is an image
(see :func:`default_modalities`). Only ``film`` gives the names a meaning beyond labelling; the
other mixers treat every block alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nervus_lightning.errors import NervusInputError
from nervus_lightning.models.tabular import mlp

TABULAR = "tabular"
IMAGE_PREFIX = "image"


def default_modalities(n_blocks: int) -> list[str]:
    """Names of ``n_blocks`` blocks when the caller gives none: images first, tabular last."""
    if n_blocks <= 1:
        return [f"{IMAGE_PREFIX}/0"] * n_blocks
    return [f"{IMAGE_PREFIX}/{i}" for i in range(n_blocks - 1)] + [TABULAR]


def check_blocks(in_features: Sequence[int], modalities: Sequence[str] | None) -> list[str]:
    """The block names, checked against ``in_features`` (one positive width per block)."""
    widths = list(in_features)
    if not widths or any(int(w) != w or w < 1 for w in widths):
        raise ValueError(f"in_features must be one positive width per block, got {widths}")
    names = default_modalities(len(widths)) if modalities is None else list(modalities)
    if len(names) != len(widths):
        raise ValueError(
            f"{len(names)} modalities {names} for {len(widths)} feature blocks {widths}"
        )
    for name in names:
        if name != TABULAR and name != IMAGE_PREFIX and not name.startswith(IMAGE_PREFIX + "/"):
            raise ValueError(f"modality {name!r} is neither 'tabular' nor 'image/<view>'")
    return names


def _mlp_out(width: int, hidden: Sequence[int]) -> int:
    return hidden[-1] if hidden else width


class ConcatMixer(nn.Module):
    """Concatenate the feature vectors, then an MLP (Nervus's fusion).

    Args:
        in_features: width of each feature block.
        modalities: block names (unused: every block is treated alike).
        hidden: the hidden widths of the MLP after the concatenation.
        dropout: the MLP's dropout.
        norm: the MLP's normalisation: batch, layer or none.
    """

    def __init__(
        self,
        in_features: Sequence[int],
        modalities: Sequence[str] | None = None,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.modalities = check_blocks(in_features, modalities)
        total = sum(in_features)
        self.net = mlp(total, hidden, dropout, norm)
        self.out_features = _mlp_out(total, hidden)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat(features, dim=1))


class GatedMixer(nn.Module):
    """Project each block to a common width, weigh it by a learned per-sample gate, then an MLP.

    Block ``i`` becomes ``p_i = W_i x_i + b_i`` (``width`` wide). The gates are
    ``g = sigmoid(A [p_1, ..., p_n] + c)``, one per block and per sample, computed from all blocks
    together, so a case can lean on its radiograph or on its clinical inputs. The gates are
    independent sigmoids in (0, 1): they do not sum to one, so a block can be turned down without
    turning another up. ``A`` and ``c`` start at zero, so every gate starts at 0.5 (an even mix).

    Args:
        in_features: width of each feature block.
        modalities: block names (every block is gated alike; kept for the contract).
        width: common width of the projected blocks.
        combine: ``sum`` gives ``sum_i g_i p_i`` (``width`` wide); ``concat`` gives
            ``[g_1 p_1, ..., g_n p_n]`` (``n * width`` wide).
        hidden: the hidden widths of the MLP after the combination.
        dropout: the MLP's dropout.
        norm: the MLP's normalisation: batch, layer or none.
    """

    def __init__(
        self,
        in_features: Sequence[int],
        modalities: Sequence[str] | None = None,
        width: int = 128,
        combine: str = "sum",
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if combine not in ("sum", "concat"):
            raise ValueError(f"combine '{combine}' is not one of ['sum', 'concat']")
        self.modalities = check_blocks(in_features, modalities)
        self.combine = combine
        n = len(self.modalities)
        self.projections = nn.ModuleList(nn.Linear(f, width) for f in in_features)
        self.gate = nn.Linear(n * width, n)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        fused = width if combine == "sum" else n * width
        self.net = mlp(fused, hidden, dropout, norm)
        self.out_features = _mlp_out(fused, hidden)

    def _project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(x) for proj, x in zip(self.projections, features, strict=True)]

    def gates(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The (B, n_blocks) gates in (0, 1), one per block and sample."""
        return torch.sigmoid(self.gate(torch.cat(self._project(features), dim=1)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        projected = self._project(features)
        gates = torch.sigmoid(self.gate(torch.cat(projected, dim=1)))
        weighted = [g.unsqueeze(1) * p for g, p in zip(gates.unbind(1), projected, strict=True)]
        fused = torch.stack(weighted).sum(0) if self.combine == "sum" else torch.cat(weighted, 1)
        return self.net(fused)


class FiLMMixer(nn.Module):
    """Clinical inputs scale and shift the image features (feature-wise linear modulation).

    Each image block is projected to ``width`` channels, ``p_v = W_v x_v + b_v``; the tabular
    block(s) ``t`` give, per view and channel, ``gamma_v = 1 + G_v t`` and ``beta_v = B_v t``, and
    the view becomes ``gamma_v * p_v + beta_v``. ``G`` and ``B`` start at zero, so the mixer
    starts as the identity modulation (gamma = 1, beta = 0) and learns how far the clinical
    inputs should bend the image features. The MLP then sees the modulated views followed by the
    tabular features themselves, so the clinical inputs also act directly (and receive gradients
    from the first step, while ``G`` and ``B`` are still zero).

    It needs at least one image block and a tabular block: without clinical inputs there is
    nothing to modulate with, and this mixer refuses to be built rather than quietly becoming
    ``concat`` (choose ``concat``, ``gated`` or ``attention`` for images alone).

    Args:
        in_features: width of each feature block.
        modalities: block names; ``tabular`` blocks modulate the ``image/...`` blocks.
        width: channels of each projected image view (gamma and beta are this wide).
        hidden: the hidden widths of the MLP after the modulation.
        dropout: the MLP's dropout.
        norm: the MLP's normalisation: batch, layer or none.
    """

    def __init__(
        self,
        in_features: Sequence[int],
        modalities: Sequence[str] | None = None,
        width: int = 128,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.modalities = check_blocks(in_features, modalities)
        self.image_blocks = [i for i, m in enumerate(self.modalities) if m != TABULAR]
        self.tabular_blocks = [i for i, m in enumerate(self.modalities) if m == TABULAR]
        if not self.tabular_blocks or not self.image_blocks:
            raise NervusInputError(
                f"model/mixer=film needs image features and tabular (input_*) features, since the "
                f"clinical inputs scale and shift the image features; got blocks "
                f"{self.modalities}. Add input_* columns, or choose model/mixer=concat, gated or "
                "attention."
            )
        self.width = width
        tab = sum(in_features[i] for i in self.tabular_blocks)
        n_views = len(self.image_blocks)
        self.projections = nn.ModuleList(
            nn.Linear(in_features[i], width) for i in self.image_blocks
        )
        self.film = nn.Linear(tab, 2 * width * n_views)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        fused = n_views * width + tab
        self.net = mlp(fused, hidden, dropout, norm)
        self.out_features = _mlp_out(fused, hidden)

    def modulate(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The MLP's input: modulated image views, then the tabular features."""
        tab = torch.cat([features[i] for i in self.tabular_blocks], dim=1)
        delta_gamma, beta = self.film(tab).view(tab.shape[0], 2, -1, self.width).unbind(1)
        views = [
            (1 + delta_gamma[:, k]) * proj(features[i]) + beta[:, k]
            for k, (i, proj) in enumerate(zip(self.image_blocks, self.projections, strict=True))
        ]
        return torch.cat([*views, tab], dim=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.net(self.modulate(features))


class AttentionMixer(nn.Module):
    """One token per block, a small Transformer encoder across them, then pooled.

    Block ``i`` becomes the token ``W_i x_i + e_i`` (``d_model`` wide), where ``e_i`` is a learned
    embedding of that block (view or tabular). The encoder has no positional encoding: its result
    depends on the tokens, not on the order they are listed in. Which block a token came from is
    carried by its own projection and embedding, so swapping two views' features does change the
    output (the model knows frontal from lateral). ``pool=cls`` reads a learned summary token
    that attends to all blocks; ``pool=mean`` averages the block tokens. An MLP follows.

    Args:
        in_features: width of each feature block.
        modalities: block names (each block has its own embedding whatever its name).
        d_model: the encoder's token width (pre-norm, feed-forward ``4 * d_model``); it must be
            divisible by ``heads``.
        heads: the encoder's attention heads.
        layers: the encoder's layers.
        dropout: the encoder's dropout.
        pool: ``cls`` or ``mean``.
        hidden: the hidden widths of the MLP after pooling (``hidden=[]`` returns the pooled
            ``d_model`` features).
        norm: the MLP's normalisation: batch, layer or none.
    """

    def __init__(
        self,
        in_features: Sequence[int],
        modalities: Sequence[str] | None = None,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 1,
        dropout: float = 0.1,
        pool: str = "cls",
        hidden: Sequence[int] = (256,),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool '{pool}' is not one of ['cls', 'mean']")
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.modalities = check_blocks(in_features, modalities)
        self.pool = pool
        self.projections = nn.ModuleList(nn.Linear(f, d_model) for f in in_features)
        self.embedding = nn.Parameter(torch.randn(len(in_features), d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if pool == "cls" else None
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=4 * d_model,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.net = mlp(d_model, hidden, dropout, norm)
        self.out_features = _mlp_out(d_model, hidden)

    def tokens(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The (B, n_blocks, d_model) block tokens, embeddings added."""
        projected = [proj(x) for proj, x in zip(self.projections, features, strict=True)]
        return torch.stack(projected, dim=1) + self.embedding

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode block tokens (in any order) and pool them to (B, d_model)."""
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        encoded = self.encoder(tokens)
        return encoded[:, 0] if self.cls is not None else encoded.mean(dim=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.net(self.encode(self.tokens(features)))


MIXERS = {
    "concat": ConcatMixer,
    "gated": GatedMixer,
    "film": FiLMMixer,
    "attention": AttentionMixer,
}
