"""Image feature extractors: any torchvision classification model, classifier removed; and
the 3D extractors of volumes (:class:`SmallCNN3d`, MONAI's networks by :class:`MonaiExtractor`).

An extractor says which inputs it reads with its class attribute ``spatial_dims``: 2 (images,
the default when absent) or 3 (volumes, ``(B, 1, D, H, W)``); a user's 3D extractor sets
``spatial_dims = 3``.

Rules, chosen so that one code path serves every torchvision family:

* The classifier is the **last ``nn.Linear``** registered in the model (``fc`` of ResNets,
  ``classifier[-1]`` of DenseNet/EfficientNet/ConvNeXt, ``heads.head`` of ViT). Its ``in_features``
  is the feature size, read before it is replaced by ``nn.Identity`` -- the model is built once.
* The first convolution (the first ``nn.Conv2d`` registered) is rebuilt for ``in_channels``. For a
  grayscale input it becomes a :class:`GrayStem`, which folds the per-channel ImageNet
  normalisation into the convolution: a 1-channel image ``x`` in ``[0, 1]`` then produces exactly
  the activations the RGB network gives for ``(x, x, x)`` normalised per channel, as it was
  trained, border pixels included. (Summing the R, G, B kernels alone, with one averaged
  mean/std, is exact only when the three channel statistics are equal, which they are not.)
* Pretrained weights are never downloaded: they come from torchvision's cache
  (``$TORCH_HOME/hub/checkpoints``) or from ``weights_path``; if neither has them the error says
  which file to put where.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from nervus_lightning.errors import NervusInputError

# ImageNet statistics of torchvision's pretrained weights (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GrayStem(nn.Module):
    """A network's first (RGB) convolution for a gray ``[0, 1]`` image, normalisation folded in.

    The RGB network sees ``z_c = (x - m_c) / s_c`` for each channel ``c`` (ImageNet mean ``m``
    and std ``s``) and computes ``conv(z, W) + b``, the padding of ``z`` filled with zeros.
    Because convolution is linear this equals

        conv(x, sum_c W_c / s_c)  -  conv(1, sum_c W_c m_c / s_c)  +  b

    where ``1`` is an image of ones of the input's size, padded like ``x``. The second term is
    what turns the padded zeros of ``x`` into the padded zeros of ``z`` (a different raw value per
    channel): it is a constant map, computed at batch size 1 and broadcast over the batch.
    Both kernels (``gray.weight``, ``offset.weight``) and the bias remain trainable.

    Args:
        conv: the pretrained 3-channel convolution (``groups=1``).
        mean: the per-channel mean the RGB network's inputs were normalised with.
        std: the per-channel standard deviation the RGB network's inputs were normalised with.
    """

    def __init__(self, conv: nn.Conv2d, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if conv.in_channels != 3 or conv.groups != 1:
            raise ValueError(
                f"GrayStem needs a 3-channel convolution with groups=1, got in_channels="
                f"{conv.in_channels}, groups={conv.groups}"
            )
        options = {
            "kernel_size": conv.kernel_size,
            "stride": conv.stride,
            "padding": conv.padding,
            "dilation": conv.dilation,
            "padding_mode": conv.padding_mode,
            "device": conv.weight.device,
            "dtype": conv.weight.dtype,
        }
        self.gray = nn.Conv2d(1, conv.out_channels, bias=conv.bias is not None, **options)
        self.offset = nn.Conv2d(1, conv.out_channels, bias=False, **options)
        weight = conv.weight.detach()
        scale = torch.tensor(std, dtype=weight.dtype).view(1, 3, 1, 1)
        shift = torch.tensor(mean, dtype=weight.dtype).view(1, 3, 1, 1)
        with torch.no_grad():
            self.gray.weight.copy_((weight / scale).sum(dim=1, keepdim=True))
            self.offset.weight.copy_((weight * shift / scale).sum(dim=1, keepdim=True))
            if conv.bias is not None:
                self.gray.bias.copy_(conv.bias)

    @property
    def in_channels(self) -> int:
        return 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before this stem existed hold a plain 1-channel conv (``weight``,
        # ``bias``) trained on images normalised with the averaged ImageNet mean and std;
        # conv((x - m) / s, W) = conv(x, W / s) - conv(1, W m / s), so they load exactly.
        old = state_dict.pop(prefix + "weight", None)
        if old is not None and prefix + "gray.weight" not in state_dict:
            mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
            state_dict[prefix + "gray.weight"] = old / std
            state_dict[prefix + "offset.weight"] = old * (mean / std)
            if prefix + "bias" in state_dict:
                state_dict[prefix + "gray.bias"] = state_dict.pop(prefix + "bias")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def out_channels(self) -> int:
        return self.gray.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each term is several times larger than their difference, so under bf16/fp16 autocast
        # the stem would lose about 4x more precision than the RGB network's first layer: it
        # runs in its weights' dtype (float32 unless the whole model was cast), a few % of FLOPs.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(self.gray.weight.dtype)
            ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
            return self.gray(x) - self.offset(ones)


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to remove.")
    return found[-1]


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d to adapt to the input channels.")


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Fit the first convolution to ``in_channels``: a :class:`GrayStem` for one channel.

    After this a 1-channel model takes gray ``[0, 1]`` images *unnormalised* (the stem holds the
    ImageNet normalisation); a 3-channel model is left as it is and takes normalised input.
    """
    name, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return
    if conv.in_channels != 3 or in_channels != 1:
        raise ValueError(
            f"cannot adapt a {conv.in_channels}-channel conv to {in_channels} channels"
        )
    _replace(model, name, GrayStem(conv, IMAGENET_MEAN, IMAGENET_STD))


def pretrained_weights_file(name: str) -> tuple[Path, str]:
    """Where torchvision's cache keeps the default weights of ``name``, and their download URL."""
    weights = get_model_weights(name).DEFAULT
    url = weights.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return cache, url


def load_pretrained(model: nn.Module, name: str, weights_path: str | None) -> None:
    """Load torchvision's default weights for ``name`` from a local file; never download."""
    cache, url = pretrained_weights_file(name)
    path = Path(weights_path) if weights_path else cache
    if not path.is_file():
        raise NervusInputError(
            f"pretrained weights for '{name}' not found at {path}. This tool never downloads at "
            f"run time: fetch {url} on a machine with internet and put it at {cache} "
            "(torchvision's "
            "cache), or pass model.extractor.weights_path=/path/to/file.pth, or set "
            "model.extractor.pretrained=false to train from scratch."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)


def build_image_extractor(
    name: str,
    in_channels: int = 1,
    pretrained: bool = False,
    weights_path: str | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, int]:
    """A torchvision model without its classifier, and its feature size.

    Args:
        name: any torchvision classification model name (``torchvision.models.list_models``).
        in_channels: channels of the input images (1 or 3).
        pretrained: load torchvision's default ImageNet weights (from a local file only).
        weights_path: explicit weights file (a torchvision state dict) instead of the cache.
        image_size: input size, needed by vision transformers (``vit_*``), whose position
            embeddings fix it (224 for the pretrained weights).
    """
    available = list_models(module=__import__("torchvision").models)
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, 3)
        raise NervusInputError(
            f"unknown image extractor '{name}'. Close names: {close}. Any torchvision "
            "classification model name works (torchvision.models.list_models())."
        )
    kwargs = {}
    if name.startswith("vit_") and image_size:
        if (pretrained or weights_path) and image_size != 224:
            raise NervusInputError(
                f"pretrained {name} needs data.image_size=224 (got {image_size}): its position "
                "embeddings are fixed to 224x224 inputs."
            )
        kwargs["image_size"] = image_size
    model = get_model(name, weights=None, **kwargs)
    if pretrained or weights_path:
        load_pretrained(model, name, weights_path)
    linear_name, linear = _last_linear(model)
    features = linear.in_features
    _replace(model, linear_name, nn.Identity())
    adapt_first_conv(model, in_channels)
    return model, features


class ImageExtractor(nn.Module):
    """Runs a backbone of :func:`build_image_extractor` on ``[0, 1]`` images; flat features.

    Three-channel images are normalised per channel with the ImageNet statistics here; for
    one-channel images the backbone's :class:`GrayStem` does the same normalisation exactly, so
    they are passed as they are.
    """

    def __init__(self, backbone: nn.Module, out_features: int, in_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_features = out_features
        self.normalise = in_channels == 3
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.mean) / self.std
        return self.backbone(x).flatten(1)


class TorchvisionExtractor(ImageExtractor):
    """A torchvision classification model as an image extractor, built from its config entry
    (``conf/model/extractor/<name>.yaml``: ``_target_`` this class, ``name``, ``pretrained``,
    ``weights_path``); ``in_channels`` and ``image_size`` come from the data.

    Args:
        name: any torchvision classification model name (``torchvision.models.list_models``).
        in_channels: channels of the input images (1 or 3).
        image_size: input size (fixes a ViT's position embeddings).
        pretrained: start from torchvision's ImageNet weights (local file only, never downloaded).
        weights_path: explicit weights file instead of torchvision's cache.
    """

    def __init__(
        self,
        name: str = "resnet18",
        in_channels: int = 1,
        image_size: int | None = None,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        backbone, features = build_image_extractor(
            name,
            in_channels=in_channels,
            pretrained=bool(pretrained),
            weights_path=weights_path,
            image_size=image_size,
        )
        super().__init__(backbone, features, in_channels)


class SmallCNN(ImageExtractor):
    """A small convolutional network trained from scratch, for small images.

    For patches, thumbnails and low-resolution inputs (about 8 to 64 pixels a side) where a
    torchvision backbone is far too large: a ResNet18 divides its input by 32, so a 16-pixel
    image is a single pixel after its third stage, and its 11 million weights overfit a few
    hundred cases. Here every stage keeps a real spatial map. Stage ``i`` is ``convs_per_stage``
    blocks of 3 x 3 convolution (padding 1), batch norm and ReLU with ``widths[i]`` channels;
    every stage but the first starts with a 2 x 2 max pool, and the features are the global
    average of the last stage (``widths[-1]`` values per image). With the defaults (32, 64, 128)
    it has about 0.29 million weights. There are no pretrained weights.

    Images come in ``[0, 1]``; three-channel images are normalised per channel with the
    ImageNet statistics (as for every extractor), one-channel images are passed as they are
    (the first batch norm standardises them). Grad-CAM uses the last stage's output
    (:attr:`gradcam_layer`).

    Args:
        in_channels: channels of the input images (1 or 3).
        widths: channels of each stage; the number of stages is its length.
        convs_per_stage: convolution blocks per stage.
    """

    #: Module path, inside this extractor, whose (B, C, h, w) output Grad-CAM weighs.
    gradcam_layer: str

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] | list[int] = (32, 64, 128),
        convs_per_stage: int = 2,
    ) -> None:
        backbone, features = _small_cnn(in_channels, widths, convs_per_stage, 2)
        super().__init__(backbone, features, int(in_channels))
        self.gradcam_layer = f"backbone.stage{len(backbone) - 1}"


#: The layers of a small CNN in 2 or 3 dimensions.
_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d),
}


def _small_cnn(
    in_channels: int, widths: tuple[int, ...] | list[int], convs_per_stage: int, dims: int
) -> tuple[nn.Sequential, int]:
    """The stages of :class:`SmallCNN` (``dims=2``) or :class:`SmallCNN3d` (``dims=3``), and
    the feature size."""
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be a non-empty list of positive integers, got {widths}")
    if int(convs_per_stage) < 1:
        raise ValueError(f"convs_per_stage must be at least 1, got {convs_per_stage}")
    conv, norm, pool, global_pool = _LAYERS[dims]
    layers: dict[str, nn.Module] = {}
    channels = int(in_channels)
    for i, width in enumerate(widths):
        blocks: list[nn.Module] = [pool(2)] if i else []
        for _ in range(int(convs_per_stage)):
            blocks += [
                conv(channels, width, 3, padding=1, bias=False),
                norm(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers[f"stage{i + 1}"] = nn.Sequential(*blocks)
    layers["pool"] = global_pool(1)
    return nn.Sequential(OrderedDict(layers)), widths[-1]


class SmallCNN3d(ImageExtractor):
    """:class:`SmallCNN` in three dimensions, for small volumes (about 8 to 64 voxels a side):
    stages of 3 x 3 x 3 convolution, batch norm and ReLU, a 2 x 2 x 2 max pool before every
    stage but the first, global average pooling. With the defaults (16, 32, 64) it has about
    0.17 million weights; no pretrained weights. Volumes come as ``(B, 1, D, H, W)`` in
    ``[0, 1]`` (the first batch norm standardises them). Grad-CAM uses the last stage's output
    (:attr:`gradcam_layer`).

    Args:
        in_channels: channels of the volumes (1).
        widths: channels of each stage; the number of stages is its length.
        convs_per_stage: convolution blocks per stage.
    """

    spatial_dims = 3

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        convs_per_stage: int = 2,
    ) -> None:
        backbone, features = _small_cnn(in_channels, widths, convs_per_stage, 3)
        super().__init__(backbone, features, int(in_channels))
        self.gradcam_layer = f"backbone.stage{len(backbone) - 1}"


def _monai_nets():
    try:
        from monai.networks import nets
    except ImportError:
        raise NervusInputError(
            "the 3D extractors resnet18_3d and densenet121_3d are MONAI's networks: pip install "
            '"nervus-lightning[volumes]" (or pip install "monai>=1.3"), or use '
            "model/extractor=small_cnn_3d."
        ) from None
    return nets


class MonaiExtractor(ImageExtractor):
    """A MONAI network (``monai.networks.nets``) in three dimensions as a volume extractor,
    built empty (no pretrained weights, nothing downloaded), its classifier removed.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` (MONAI's ResNets, ``feed_forward=False``:
            the pooled features), or ``densenet121``, ``densenet169`` (their ``class_layers.out``
            linear layer replaced by the identity).
        in_channels: channels of the volumes (1).
    """

    spatial_dims = 3
    NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "densenet169")

    def __init__(self, name: str = "resnet18", in_channels: int = 1) -> None:
        if name not in self.NAMES:
            raise NervusInputError(
                f"model.extractor.name={name!r} is not a MONAI 3D network this extractor "
                f"builds; use one of {list(self.NAMES)}."
            )
        nets = _monai_nets()
        if name.startswith("resnet"):
            backbone = getattr(nets, name)(
                spatial_dims=3, n_input_channels=int(in_channels), feed_forward=False
            )
            features = int(backbone.in_planes)
        else:
            builder = {"densenet121": nets.DenseNet121, "densenet169": nets.DenseNet169}[name]
            backbone = builder(spatial_dims=3, in_channels=int(in_channels), out_channels=1)
            features = int(backbone.class_layers.out.in_features)
            backbone.class_layers.out = nn.Identity()
        super().__init__(backbone, features, int(in_channels))
        # Grad-CAM's layer: the last convolutional stage (ResNet layer4; DenseNet's features).
        self.gradcam_layer = "backbone.layer4" if name.startswith("resnet") else "backbone.features"
