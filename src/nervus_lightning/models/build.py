"""Network assembly: a :class:`~nervus_lightning.models.net.NervusNet` (or an ensemble of them)
from a data schema and plain component choices, without Lightning.

This module owns turning the ``model.*`` choices (names, option dicts with ``name`` or
``_target_``, or a ready ``nn.Module`` image extractor) into modules: the image extractor(s)
(one shared by every view, or one per view), the tabular MLP, the mixer when there is more than
one feature block, and one head per label. :class:`~nervus_lightning.module.NervusModule` calls
it with the sizes its task gives each head; another project can call it directly::

    net = build_net(schema, head_sizes=[2], extractor="resnet18", tabular="mlp")
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nervus_lightning.data.schema import DataSchema
from nervus_lightning.errors import NervusInputError
from nervus_lightning.models.ensemble import EnsembleNet
from nervus_lightning.models.heads import HEADS
from nervus_lightning.models.mixers import MIXERS
from nervus_lightning.models.net import NervusNet
from nervus_lightning.models.plugins import TARGET_KEY, build_component, resolve_class
from nervus_lightning.models.tabular import TabularMLP
from nervus_lightning.options import check_choice

TORCHVISION_EXTRACTOR = "nervus_lightning.models.extractors.TorchvisionExtractor"
#: ``model.extractor.shared``: one extractor for every view (true) or one per view (false).
SHARED_KEY = "shared"


def component_options(value: Any, default_name: str | None) -> dict[str, Any]:
    """Accept a name, a dict of options (with ``name``) or None for a component choice."""
    if value is None:
        return {"name": "none"}
    if isinstance(value, str):
        return {"name": value}
    out = dict(value)
    out.setdefault("name", default_name)
    return out


def infer_features(
    module: nn.Module,
    in_channels: int,
    image_size: int,
    volume_shape: Sequence[int] | None = None,
) -> int:
    """The feature size of an image extractor: its ``out_features``, else probed on zeros
    (``(2, 1, D, H, W)`` for volumes of ``volume_shape``)."""
    if hasattr(module, "out_features"):
        return int(module.out_features)
    was_training = module.training
    module.eval()
    shape = (1, *volume_shape) if volume_shape else (in_channels, image_size, image_size)
    with torch.no_grad():
        out = module(torch.zeros(2, *shape))
    module.train(was_training)
    return int(out.flatten(1).shape[1])


def _tabular_extractor(
    schema: DataSchema, tabular: str | Mapping[str, Any] | None, linear: bool
) -> nn.Module:
    """The tabular MLP (or a user's ``_target_``) over the schema's inputs, which it
    standardises with their training statistics."""
    opts = component_options(tabular, "mlp")
    check_choice("model.tabular.name", opts["name"], ("mlp",))
    if linear and TARGET_KEY in opts:
        raise NervusInputError(
            "model.tabular.linear needs the built-in tabular MLP (it standardises the "
            "inputs the linear term reads); set model.tabular.linear=false with your own "
            "tabular extractor."
        )
    return build_component(
        "model.tabular",
        opts,
        {"mlp": TabularMLP},
        mean=schema.input_mean,
        std=schema.input_std,
    )


def _mixer(
    image: nn.Module | list[nn.Module] | None,
    table: nn.Module | None,
    views: Sequence[str] | None,
    mixer: str | Mapping[str, Any] | None,
) -> nn.Module | None:
    """The mixer of the feature blocks (each view's image features, then the tabular ones);
    None for a single block."""
    if image is None:
        per_view = []
    elif isinstance(image, list):
        per_view = image
    else:
        per_view = [image] * len(views or ["image"])
    sizes = [int(e.out_features) for e in per_view]
    names = [f"image/{v}" for v in (views or ["image"])] if per_view else []
    if table is not None:
        sizes.append(int(table.out_features))
        names.append("tabular")
    if len(sizes) <= 1:
        return None
    # ``modalities`` reaches mixers that take it (build_component drops it otherwise).
    return build_component(
        "model.mixer",
        component_options(mixer, "concat"),
        MIXERS,
        in_features=sizes,
        modalities=names,
    )


def build_net(
    schema: DataSchema,
    head_sizes: Sequence[int],
    *,
    extractor: str | Mapping[str, Any] | nn.Module | None = "resnet18",
    tabular: str | Mapping[str, Any] | None = "mlp",
    mixer: str | Mapping[str, Any] | None = "concat",
    head: str | Mapping[str, Any] | None = "linear",
    in_channels: int = 1,
    image_size: int = 64,
    linear: bool = False,
) -> NervusNet:
    """The network of one model: extractors for the schema's inputs, a mixer when there is more
    than one feature block, and one head per label of ``head_sizes`` outputs.

    Args:
        schema: the data schema (image views, tabular input columns and their training
            statistics, missing-view policy).
        head_sizes: the output size of each label's head (the task's ``head_size(j)``).
        extractor, tabular, mixer, head: component choices as in
            :class:`~nervus_lightning.module.NervusModule` (a name, options with ``name`` or
            ``_target_``, or an ``nn.Module`` image extractor).
        in_channels, image_size: image geometry (used to build and probe the extractor).
        linear: a linear term of the standardised tabular inputs in every head (the caller
            decides; see ``model.tabular.linear``).

    Raises:
        NervusInputError: an unknown or ill-formed component choice.
    """
    views = schema.views or None
    image = (
        build_image_extractors(schema, extractor, in_channels, image_size)
        if schema.has_images
        else None
    )
    table = _tabular_extractor(schema, tabular, linear) if schema.input_columns else None
    fusion = _mixer(image, table, views, mixer)
    head_opts = component_options(head, "linear")
    resolve_class("model.head", head_opts, HEADS)  # fails before the net is built

    def build_head(in_features: int, out_features: int) -> nn.Module:
        return build_component(
            "model.head", head_opts, HEADS, in_features=in_features, out_features=out_features
        )

    return NervusNet(
        list(head_sizes),
        image_extractor=image,
        tabular_extractor=table,
        mixer=fusion,
        head=build_head,
        views=views,
        missing_views=schema.missing_views == "allow",
        linear=linear,
    )


def build_image_extractors(
    schema: DataSchema,
    extractor: str | Mapping[str, Any] | nn.Module | None,
    in_channels: int,
    image_size: int,
) -> nn.Module | list[nn.Module]:
    """The image extractor; with several views and ``shared: false``, one per view."""
    if isinstance(extractor, nn.Module):
        first, shared = extractor, True
    else:
        opts = component_options(extractor, None)
        shared = opts.pop(SHARED_KEY, True)
        if not isinstance(shared, bool):
            raise NervusInputError(
                f"model.extractor.{SHARED_KEY} must be true (one extractor for every view) "
                f"or false (one per view), got {shared!r}."
            )
        if TARGET_KEY not in opts and not opts.get("name"):
            opts["name"] = "resnet18"
        if opts.get("name") == "none" and TARGET_KEY not in opts:
            raise NervusInputError(
                "the data have images but model.extractor is 'none'; choose an extractor "
                "or leave the images out (no imgpath column)."
            )
        # A bare name is a torchvision model (the built-in YAMLs say so with _target_).
        opts.setdefault(TARGET_KEY, TORCHVISION_EXTRACTOR)
        check_extractor_dims(resolve_class("model.extractor", opts, {}), opts, schema)

        def build() -> nn.Module:
            return build_component(
                "model.extractor", opts, {}, in_channels=in_channels, image_size=image_size
            )

        first = build()
    if isinstance(extractor, nn.Module):
        check_extractor_dims(type(first), {"name": type(first).__name__}, schema)
    if not hasattr(first, "out_features"):
        volume_shape = schema.volume["shape"] if schema.is_volume else None
        first.out_features = infer_features(first, in_channels, image_size, volume_shape)
    if shared or len(schema.views) < 2:
        return first
    others = [build() for _ in schema.views[1:]]
    for other in others:
        other.out_features = first.out_features
    return [first, *others]


def check_extractor_dims(cls: type, options: Mapping[str, Any], schema: DataSchema) -> None:
    """A 3D extractor (class attribute ``spatial_dims = 3``) for volumes, a 2D one for images;
    anything else is refused before the network is built."""
    dims = int(getattr(cls, "spatial_dims", 2))
    name = options.get("name") or cls.__name__
    if schema.is_volume and dims != 3:
        raise NervusInputError(
            f"the images are 3D volumes (data.volume_size={schema.volume['shape']}), but "
            f"model.extractor '{name}' is a 2D network. Choose a 3D extractor: "
            "model/extractor=small_cnn_3d, resnet18_3d or densenet121_3d (your own declares "
            "spatial_dims = 3)."
        )
    if not schema.is_volume and dims == 3:
        raise NervusInputError(
            f"model.extractor '{name}' reads 3D volumes, but data.volume_size is not set (the "
            "images are read as 2D). Set data.volume_size=[D,H,W] if imgpath names volumes, "
            "or choose a 2D extractor (model/extractor=small_cnn, resnet18, ...)."
        )


def build_ensemble(
    members: int,
    schema: DataSchema,
    head_sizes: Sequence[int],
    combine: Callable[[list[torch.Tensor], int], torch.Tensor],
    *,
    extractor: str | Mapping[str, Any] | nn.Module | None = "resnet18",
    **options: Any,
) -> NervusNet | EnsembleNet:
    """``members`` independently initialised networks of :func:`build_net` combined into one
    model by ``combine`` (the task's, see :class:`~nervus_lightning.models.ensemble.EnsembleNet`);
    one member: the plain :class:`NervusNet`. A module instance given as the extractor is copied:
    every member starts from it."""
    if members == 1:
        return build_net(schema, head_sizes, extractor=extractor, **options)
    custom = isinstance(extractor, nn.Module)
    return EnsembleNet(
        [
            build_net(
                schema,
                head_sizes,
                extractor=copy.deepcopy(extractor) if custom else extractor,
                **options,
            )
            for _ in range(members)
        ],
        combine,
    )
