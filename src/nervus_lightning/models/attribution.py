"""Grad-CAM and Integrated Gradients of a network's head outputs: where did the model look, and
how much did each input matter.

captum does the attribution arithmetic; what is written here is the choice of layer, of the
forward whose output is explained, and of the baseline. Plain ``nn.Module`` work, no Lightning;
which cases are explained and the files written are :mod:`nervus_lightning.workflows.explain`'s.

* **Grad-CAM** (:func:`grad_cam`: captum's ``LayerGradCam``, upsampled to the image's size with
  ``LayerAttribution.interpolate``, bilinear), negative evidence cut
  (``relu_attributions=True``), as in Selvaraju et al.
* **The layer** (:func:`find_gradcam_layer`) is chosen per torchvision family: ResNet ``layer4``;
  DenseNet ``features`` (the final norm, after which DenseNet's forward applies its ReLU in place,
  so the maps weigh the ReLU's output); EfficientNet, EfficientNetV2, ConvNeXt (its last stage),
  MobileNet ``features[-1]``; RegNet ``trunk_output``; an extractor that names its own layer in a
  ``gradcam_layer`` attribute (a module path inside it), that layer (``small_cnn``: its last
  stage). A ViT has no spatial feature map, and its
  last block's patch tokens do not reach the class token that the head reads; its maps are
  Grad-CAM on the *input* of the last encoder block's attention (``encoder.layers[-1].ln_1``,
  whose patch tokens feed that attention), reshaped to the patch grid (as the pytorch-grad-cam
  project recommends; attention rollout would ignore the gradient, i.e. which label is
  explained). Another extractor needs ``explain.layer=<module path>`` inside it (a module whose
  output is ``(B, C, h, w)``).
* **Several views**: each view's Grad-CAM comes from a forward that runs that view live through
  its extractor with the other views' and the tabular features fixed (:func:`view_forward`).
* **Per-input attribution** (:func:`input_attributions`): Integrated Gradients of the same
  target, from a baseline of a black image per view and the training mean of every tabular input.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nervus_lightning.errors import NervusInputError


# -- the layer Grad-CAM weighs -------------------------------------------------------------------
def _last_child(path: str) -> Callable[[nn.Module], str]:
    def child(backbone: nn.Module) -> str:
        *_, (name, _) = backbone.get_submodule(path).named_children()
        return f"{path}.{name}"

    return child


def _gradcam_paths() -> dict[type, Callable[[nn.Module], str]]:
    """torchvision class -> the layer's path inside that backbone."""
    from torchvision import models

    return {
        models.ResNet: lambda _: "layer4",
        models.DenseNet: lambda _: "features",
        models.EfficientNet: _last_child("features"),
        models.ConvNeXt: _last_child("features"),
        models.MobileNetV2: _last_child("features"),
        models.MobileNetV3: _last_child("features"),
        models.RegNet: lambda _: "trunk_output",
        models.VisionTransformer: lambda b: _last_child("encoder.layers")(b) + ".ln_1",
    }


class _PatchGrid(nn.Module):
    """Identity on ViT patch tokens viewed as a ``(B, D, h, w)`` map: the layer captum hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass
class GradCamLayer:
    """The module whose output Grad-CAM weighs, and its path inside the image extractor.

    ``tokens``: the module returns ViT tokens ``(B, 1 + h*w, D)`` (class token first); while
    :meth:`attached` is active they pass through a ``(B, D, h, w)`` view that captum hooks.
    """

    module: nn.Module
    path: str
    tokens: bool = False
    #: The map's own size (h, w), known after the first :func:`grad_cam`.
    grid: tuple[int, ...] | None = None

    @contextlib.contextmanager
    def attached(self) -> Iterator[nn.Module]:
        """The module to give ``LayerGradCam`` (for tokens: a grid view hooked in meanwhile)."""
        if not self.tokens:
            yield self.module
            return
        grid = _PatchGrid()

        def to_grid(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            cls, patches = output[:, :1], output[:, 1:]
            b, n, d = patches.shape
            side = math.isqrt(n)
            view = grid(patches.transpose(1, 2).reshape(b, d, side, side))
            return torch.cat([cls, view.flatten(2).transpose(1, 2)], dim=1)

        handle = self.module.register_forward_hook(to_grid)
        try:
            yield grid
        finally:
            handle.remove()


def find_gradcam_layer(extractor: nn.Module, layer: str | None = None) -> GradCamLayer:
    """The Grad-CAM layer of an image extractor (``NervusNet.image_extractor``).

    Args:
        extractor: a :class:`~nervus_lightning.models.extractors.TorchvisionExtractor`, or any
            image extractor when ``layer`` is given.
        layer: a module path inside ``extractor`` (e.g. ``backbone.layer3``, or ``features.4`` of
            your own extractor) whose output is a ``(B, C, h, w)`` map; ``None``: the
            extractor's own ``gradcam_layer`` attribute if it has one, else chosen by the
            torchvision family (see the module docstring).

    Raises:
        NervusInputError: ``layer`` names no module, or no family rule fits and ``layer`` is not
            given (the message lists the extractor's modules to choose from).
    """
    if layer:
        try:
            return GradCamLayer(extractor.get_submodule(str(layer)), str(layer))
        except AttributeError:
            raise NervusInputError(
                f"explain.layer={layer!r} is not a module of the image extractor "
                f"({type(extractor).__name__}); its modules are: {_module_list(extractor)}."
            ) from None
    own = getattr(extractor, "gradcam_layer", None)
    if isinstance(own, str) and own:
        return GradCamLayer(extractor.get_submodule(own), own)
    backbone = getattr(extractor, "backbone", None)
    if isinstance(backbone, nn.Module):
        for cls, path_of in _gradcam_paths().items():
            if isinstance(backbone, cls):
                path = path_of(backbone)
                tokens = isinstance(backbone, _vit_class())
                return GradCamLayer(backbone.get_submodule(path), f"backbone.{path}", tokens)
    name = type(backbone if isinstance(backbone, nn.Module) else extractor).__name__
    raise NervusInputError(
        f"explain: no Grad-CAM layer is known for the image extractor {name}. Name one with "
        f"explain.layer=<module path>, a module whose output is (batch, channels, h, w), "
        f"usually the last convolutional stage; the extractor's modules are: "
        f"{_module_list(extractor)}."
    )


def _vit_class() -> type:
    from torchvision.models import VisionTransformer

    return VisionTransformer


def _module_list(extractor: nn.Module, limit: int = 12) -> str:
    names = [n for n, _ in extractor.named_modules() if n and n.count(".") <= 1]
    shown = names[-limit:]
    return ("..., " if len(names) > limit else "") + ", ".join(shown)


# -- the maps ------------------------------------------------------------------------------------
def require_captum() -> None:
    """A clear error when captum (the ``explain`` extra) is not installed."""
    if importlib.util.find_spec("captum") is None:
        raise NervusInputError(
            "explanations need the Python package 'captum', which is not installed; install it "
            'with: pip install "nervus-lightning[explain]"'
        )


def grad_cam(
    forward: Callable[..., torch.Tensor],
    image: torch.Tensor,
    layer: GradCamLayer,
    target: torch.Tensor | int,
    forward_args: tuple = (),
) -> torch.Tensor:
    """Grad-CAM maps of ``image`` at its own size: ``(B, H, W)`` (a volume: ``(B, D, H, W)``),
    float32, non-negative.

    Args:
        forward: maps ``(image, *forward_args)`` to the head output ``(B, K)`` to explain (for
            several views: a function that puts ``image`` in place of one view).
        image: ``(B, C, H, W)`` as the network takes it, or a volume ``(B, C, D, H, W)`` (the
            map then upsampled trilinearly).
        layer: from :func:`find_gradcam_layer`.
        target: the output column explained, one per case or one for all.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    with layer.attached() as module, torch.enable_grad():
        cam = LayerGradCam(forward, module).attribute(
            image,
            target=target,
            additional_forward_args=forward_args or None,
            relu_attributions=True,
        )
        spatial = image.dim() - 2
        layer.grid = tuple(cam.shape[-spatial:])
        mode = "trilinear" if spatial == 3 else "bilinear"
        cam = LayerAttribution.interpolate(cam.detach(), tuple(image.shape[-spatial:]), mode)
    # Linear interpolation of a non-negative map stays non-negative but for rounding.
    return cam[:, 0].clamp_min(0.0).float()


def head_forward(net: nn.Module, j: int, has_image: bool) -> Callable[..., torch.Tensor]:
    """``(image, tabular)`` (or ``(tabular,)`` without images) -> raw output of head ``j``."""
    if has_image:
        return lambda image, tabular=None: net(image=image, tabular=tabular)[j]
    return lambda tabular: net(image=None, tabular=tabular)[j]


def view_forward(
    net: nn.Module,
    j: int,
    blocks: list[torch.Tensor],
    v: int,
    view_mask: torch.Tensor | None = None,
    tabular: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, C, H, W)`` image of view ``v`` -> raw output of head ``j``, every other feature
    block fixed at ``blocks`` (from ``net.feature_blocks``, detached): only view ``v`` passes
    through its extractor. Where ``view_mask`` is False the view's "missing" embedding is used,
    as the network does, so the output is the network's own (``tabular``: the raw inputs, for
    a net with linear terms)."""
    extractor = net.image_extractors()[v]
    fixed = [b.detach() for b in blocks]

    def forward(image: torch.Tensor) -> torch.Tensor:
        live = extractor(image).flatten(1)
        if view_mask is not None and net.missing_view_features is not None:
            missing = net.missing_view_features[v].to(live.dtype)
            live = torch.where(view_mask[:, v : v + 1], live, missing)
        return net.fuse([*fixed[:v], live, *fixed[v + 1 :]], tabular)[j]

    return forward


def view_grad_cams(
    net: nn.Module,
    j: int,
    image: torch.Tensor,
    tabular: torch.Tensor | None,
    layers: list[GradCamLayer],
    target: torch.Tensor | int,
    view_mask: torch.Tensor | None = None,
    volume: bool = False,
) -> list[torch.Tensor]:
    """Grad-CAM of head ``j`` for each view: ``V`` maps ``(B, H, W)`` (one for a single image;
    volumes: ``(B, D, H, W)``).

    Args:
        image: ``(B, C, H, W)`` for a single-view net, ``(B, V, C, H, W)`` otherwise (volumes:
            ``(B, C, D, H, W)`` and ``(B, V, C, D, H, W)``).
        layers: the Grad-CAM layer of each view's extractor (see :func:`gradcam_layers`).
        view_mask: ``(B, V)``; the maps of a missing view are zero (not meaningful).
        volume: ``image`` holds volumes (three spatial axes).
    """
    with torch.no_grad():
        blocks = net.feature_blocks(image, tabular, view_mask)
    views = image_views(image, volume)
    return [
        grad_cam(view_forward(net, j, blocks, v, view_mask, tabular), pixels, layers[v], target)
        for v, pixels in enumerate(views)
    ]


def input_attributions(
    net: nn.Module,
    j: int,
    image: torch.Tensor | None,
    tabular: torch.Tensor | None,
    tabular_mean: torch.Tensor,
    target: torch.Tensor | int,
    n_steps: int = 32,
    view_mask: torch.Tensor | None = None,
    volume: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients of head ``j``'s ``target`` per input: ``(B, V + n_inputs)`` (each
    image view summed over its pixels first, ``V`` = 1 for a single image; then each tabular
    column), and the completeness error per case (sum of attributions minus the output's change
    from the baseline). Baseline: a black image per view and the training mean of each tabular
    input; ``view_mask`` (``(B, V)``) is the same at the input and the baseline, so a missing
    view's attribution is zero. ``volume``: ``image`` holds volumes (see
    :func:`view_grad_cams`)."""
    from captum.attr import IntegratedGradients

    views = [] if image is None else image_views(image, volume)
    stacked = image is not None and image.ndim == (6 if volume else 5)
    n_views = len(views)

    def forward(*parts: torch.Tensor) -> torch.Tensor:
        *inputs, mask = parts
        pixels = None
        if n_views:
            pixels = torch.stack(inputs[:n_views], 1) if stacked else inputs[0]
        table = inputs[n_views] if tabular is not None else None
        return net(image=pixels, tabular=table, view_mask=mask)[j]

    inputs = tuple(v.contiguous() for v in views)
    baselines = tuple(torch.zeros_like(v) for v in inputs)
    if tabular is not None:
        inputs += (tabular,)
        baselines += (tabular_mean.to(tabular).expand_as(tabular),)
    with torch.enable_grad():
        attributions, delta = IntegratedGradients(forward).attribute(
            inputs,
            baselines=baselines,
            target=target,
            additional_forward_args=(view_mask,),
            n_steps=n_steps,
            internal_batch_size=len(inputs[0]),
            return_convergence_delta=True,
        )
    parts = [a.flatten(1).sum(1, keepdim=True) for a in attributions[:n_views]]
    if tabular is not None:
        parts.append(attributions[-1])
    per_input = torch.cat(parts, dim=1).detach().double().cpu().numpy()
    return per_input, delta.detach().double().cpu().numpy()


def image_views(image: torch.Tensor, volume: bool = False) -> list[torch.Tensor]:
    """The views of a batch, each ``(B, C, *spatial)``: ``image`` unbound along its view axis
    (``(B, V, C, *spatial)``), or ``[image]`` for a single-view batch; ``volume``: three
    spatial axes, else two."""
    stacked = image.ndim == (6 if volume else 5)
    return list(image.unbind(1)) if stacked else [image]


def gradcam_layers(net: nn.Module, layer: str | None) -> list[GradCamLayer]:
    """The Grad-CAM layer of each view's extractor (one for a single image; one object for
    every view when the extractor is shared); empty for a model without images."""
    found: dict[int, GradCamLayer] = {}
    return [
        found.setdefault(id(extractor), find_gradcam_layer(extractor, layer))
        for extractor in net.image_extractors()
    ]
