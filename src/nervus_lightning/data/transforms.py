"""Resize and augmentation pipelines for image tensors, built from torchvision.transforms.v2.

This module owns what happens to an image between :func:`~nervus_lightning.data.images.read_image`
and the model: resizing to a square ``image_size x image_size`` and, for training, one of the
named augmentation presets in :data:`TRAIN_TRANSFORMS`. Every pipeline works on float tensors
(``C x H x W``, 1 or 3 channels, values in ``[0, 1]``) so that 16-bit radiographs keep their
precision, and returns float32 clamped to ``[0, 1]``.

Presets:

* ``none``: the evaluation transform (resize only).
* ``xray``: mild, radiograph-appropriate augmentation: a random resized crop covering 85-100 % of
  the image, a small rotation/translation, and slight brightness/contrast changes. There is no
  horizontal flip: laterality carries meaning in radiographs (the heart is on the patient's left,
  side markers, situs inversus), and a mirrored chest is not a plausible image.
* ``randaug``: RandAugment (Cubuk et al. 2020) after resizing.
* ``trivialaugwide``: TrivialAugmentWide (Mueller & Hutter 2021) after resizing.

torchvision's RandAugment and TrivialAugmentWide accept float tensors, and all their operations
work on floats, but ``Equalize`` converts the image to uint8 to build its histogram, which would
throw away the extra bits of a 16-bit image. Here that one operation is replaced by a histogram
equalization on 4096 bins computed in floating point (:func:`equalize_float`). ``Posterize``
reduces the image to at most 256 levels on purpose; that is what the operation is for, so it is
kept as torchvision implements it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "TRAIN_TRANSFORMS",
    "HighPrecisionRandAugment",
    "HighPrecisionTrivialAugmentWide",
    "build_eval_transform",
    "build_train_transform",
    "equalize_float",
]

# Histogram resolution of equalize_float: 12 bits, finer than the 8 bits of torchvision's version
# yet with enough pixels per bin on small (e.g. 224 x 224) images.
_EQUALIZE_BINS = 4096


class _ClampUnitInterval(v2.Transform):
    """Clamp to ``[0, 1]``: interpolation and colour jitter can step slightly outside it."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return inpt.clamp(0.0, 1.0)


def equalize_float(image: torch.Tensor, bins: int = _EQUALIZE_BINS) -> torch.Tensor:
    """Histogram-equalize a float image in ``[0, 1]`` channel by channel, without going to uint8.

    The mapping is the one Pillow's ``ImageOps.equalize`` (and torchvision's ``equalize``) use,
    computed in floating point on ``bins`` bins instead of 256: a value in bin
    ``k = floor(v * bins)`` becomes ``min(1, below[k] / (n - top))``, where ``below[k]`` counts
    the pixels in bins lower than ``k``, ``n`` is the number of pixels of the channel and ``top``
    the count of its highest occupied bin. A channel whose pixels all fall in one bin is
    returned unchanged.

    Args:
        image: ``... x C x H x W`` float tensor in ``[0, 1]``.
        bins: number of histogram bins.
    """
    if not image.is_floating_point():
        raise TypeError(f"equalize_float needs a float image, got {image.dtype}")
    height, width = image.shape[-2:]
    flat = image.reshape(-1, height * width)
    index = (flat.clamp(0.0, 1.0) * bins).long().clamp_(max=bins - 1)
    hist = torch.zeros(flat.shape[0], bins, dtype=torch.float64, device=image.device)
    hist.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    below = hist.cumsum(dim=1) - hist
    top_bin = index.max(dim=1, keepdim=True).values
    denominator = float(height * width) - hist.gather(1, top_bin)
    lut = (below / denominator.clamp(min=1.0)).clamp_(max=1.0)
    equalized = lut.gather(1, index).to(image.dtype)
    constant = (denominator == 0).expand_as(flat)
    return torch.where(constant, flat, equalized).reshape(image.shape)


class _HighPrecisionEqualizeMixin:
    """Route the auto-augment ``Equalize`` operation to :func:`equalize_float` for float input."""

    def _apply_image_or_video_transform(
        self, image: Any, transform_id: str, magnitude: float, interpolation: Any, fill: Any
    ) -> Any:
        if transform_id == "Equalize" and image.is_floating_point():
            result = equalize_float(image.as_subclass(torch.Tensor))
            return (
                tv_tensors.wrap(result, like=image)
                if isinstance(image, tv_tensors.TVTensor)
                else result
            )
        return super()._apply_image_or_video_transform(  # type: ignore[misc]
            image, transform_id, magnitude, interpolation, fill
        )


class HighPrecisionRandAugment(_HighPrecisionEqualizeMixin, v2.RandAugment):
    """:class:`torchvision.transforms.v2.RandAugment` with a float ``Equalize``."""


class HighPrecisionTrivialAugmentWide(_HighPrecisionEqualizeMixin, v2.TrivialAugmentWide):
    """:class:`torchvision.transforms.v2.TrivialAugmentWide` with a float ``Equalize``."""


def _as_float() -> v2.Transform:
    # Integer tensors (uint8, uint16) are rescaled to [0, 1]; float input passes unchanged.
    return v2.ToDtype(torch.float32, scale=True)


def _resize(image_size: int) -> v2.Transform:
    return v2.Resize((image_size, image_size), antialias=True)


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def build_eval_transform(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize to ``image_size x image_size`` (bilinear, antialiased); float32 in ``[0, 1]``.

    The aspect ratio is not kept: the whole image is used, stretched if it is not square.
    """
    _check_size(image_size)
    return v2.Compose([_as_float(), _resize(image_size), _ClampUnitInterval()])


def _build_xray(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return v2.Compose(
        [
            _as_float(),
            v2.RandomResizedCrop(
                (image_size, image_size), scale=(0.85, 1.0), ratio=(0.9, 1.1), antialias=True
            ),
            v2.RandomAffine(
                degrees=7.0,
                translate=(0.03, 0.03),
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=0.0,
            ),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
            _ClampUnitInterval(),
        ]
    )


def _build_randaug(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return v2.Compose(
        [
            _as_float(),
            _resize(image_size),
            HighPrecisionRandAugment(interpolation=v2.InterpolationMode.BILINEAR),
            _ClampUnitInterval(),
        ]
    )


def _build_trivialaugwide(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return v2.Compose(
        [
            _as_float(),
            _resize(image_size),
            HighPrecisionTrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR),
            _ClampUnitInterval(),
        ]
    )


#: Training augmentation presets: name -> builder taking ``image_size``.
TRAIN_TRANSFORMS: dict[str, Callable[[int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": build_eval_transform,
    "xray": _build_xray,
    "randaug": _build_randaug,
    "trivialaugwide": _build_trivialaugwide,
}


def build_train_transform(name: str, image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build the training transform called ``name`` (a key of :data:`TRAIN_TRANSFORMS`).

    Args:
        name: ``none``, ``xray``, ``randaug`` or ``trivialaugwide`` (see the module docstring).
        image_size: side of the square output.

    Returns:
        A picklable callable mapping a ``C x H x W`` float (or uint8/uint16) tensor to a float32
        ``C x image_size x image_size`` tensor in ``[0, 1]``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones) or bad ``image_size``.
    """
    try:
        builder = TRAIN_TRANSFORMS[name]
    except KeyError:
        valid = ", ".join(sorted(TRAIN_TRANSFORMS))
        raise ValueError(
            f"unknown augmentation preset {name!r}; valid presets are: {valid}"
        ) from None
    _check_size(image_size)
    return builder(image_size)
