"""Training-split augmentation of 3D volumes (``augmentation=volume``): a small random affine,
an intensity jitter, and flips only where the user names them.

This module owns the ``volume`` preset: :class:`VolumeAugmentation` maps one ``(1, D, H, W)``
float volume in ``[0, 1]`` (axes superior, posterior, left: the LPS grid of
:mod:`~nervus_lightning.data.volume_input`) to another of the same shape and dtype, in
``[0, 1]``, with a fresh random draw per call; :func:`check_augmentation` says which presets go
with volumes and which with 2D images.

Each call, in this order:

* **Affine** about the volume's centre: a rotation about each of the three axes (each angle
  uniform in ``[-rotate_degrees, rotate_degrees]``), one isotropic scale factor (uniform in
  ``scale``) and a translation along each axis (uniform in ``[-translate, translate]`` times
  that side's extent). The geometry is in millimetres when ``data.spacing`` gives the voxel
  size (a rotation then stays a rotation of the patient, also with anisotropic voxels), else
  in voxels. Resampled trilinearly (``torch.nn.functional.grid_sample``); what comes from
  outside the volume repeats its edge voxels (``padding: border``) or is 0, the bottom of the
  window (``padding: zeros``).
* **Intensity**: ``v ** gamma`` (``gamma`` uniform in ``gamma``; off when None), then
  ``v * a + b`` with ``a`` uniform in ``[1 - intensity_scale, 1 + intensity_scale]`` and ``b``
  uniform in ``[-intensity_shift, intensity_shift]``, clipped to ``[0, 1]``.
* **Flips**: each axis named in ``flip_axes`` (``superior``, ``posterior``, ``left``) is
  reversed with probability ``flip_probability``. None by default: a left-right flip swaps the
  patient's laterality (a left lung lesion becomes a right one, a heart on the right), so the
  user must ask for it.

Hand-written with torch rather than MONAI's transforms: MONAI is an optional extra, and every
draw here comes from torch's global generator, which ``seed`` (``lightning.seed_everything``)
and the data loader's per-worker seeds make reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nervus_lightning.data.transforms import (
    TRAIN_TRANSFORMS,
    build_eval_transform,
    build_train_transform,
)
from nervus_lightning.errors import NervusInputError
from nervus_lightning.options import check_choice, check_keys, keyword_names

__all__ = [
    "AUGMENTATIONS",
    "FLIP_AXES",
    "VOLUME_AUGMENTATIONS",
    "VolumeAugmentation",
    "build_transforms",
    "build_volume_train_transform",
    "check_augmentation",
    "resample_volume",
]

#: The presets volume mode accepts; every other one is for 2D images, and ``volume`` for volumes
#: only.
VOLUME_AUGMENTATIONS = ("none", "volume")
#: Every ``augmentation`` preset: the 2D ones and ``volume``.
AUGMENTATIONS = sorted({*TRAIN_TRANSFORMS, *VOLUME_AUGMENTATIONS})
#: ``flip_axes`` names: the anatomical direction each array axis of ``(1, D, H, W)`` points to.
FLIP_AXES = {"superior": 1, "posterior": 2, "left": 3}
PADDINGS = ("border", "zeros")


def check_augmentation(name: str, is_volume: bool) -> None:
    """``augmentation=name`` must fit the images: ``none`` or ``volume`` for volumes
    (``data.volume_size`` set), a 2D preset for 2D images."""
    if is_volume and name not in VOLUME_AUGMENTATIONS:
        raise NervusInputError(
            f"augmentation={name} is for 2D images; volumes (data.volume_size) take "
            "augmentation=none or augmentation=volume (3D affine, intensity jitter, flips only "
            "on request)."
        )
    if not is_volume and name == "volume":
        raise NervusInputError(
            "augmentation=volume is for 3D volumes (data.volume_size=[D,H,W]); 2D images take "
            "augmentation=none, xray, randaug or trivialaugwide."
        )


def _number(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise NervusInputError(f"augmentation.{key} must be a number, got {value!r}.")
    if not low <= value <= high:
        raise NervusInputError(f"augmentation.{key}={value} must be in [{low}, {high}].")
    return float(value)


def _range(key: str, value: Any, low: float, high: float) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise NervusInputError(
            f"augmentation.{key} must be two numbers [low, high], got {value!r}."
        )
    first, second = (_number(key, v, low, high) for v in value)
    if first > second:
        raise NervusInputError(f"augmentation.{key}={list(value)}: low must not exceed high.")
    return first, second


class VolumeAugmentation:
    """The random ``volume`` preset (see the module docstring); picklable for loader workers.

    Args:
        rotate_degrees: largest rotation about each axis, in degrees (0: none).
        scale: ``[low, high]`` of the isotropic scale factor (above 1 enlarges); None: none.
        translate: largest shift along each axis, as a fraction of that side (0: none).
        intensity_scale: largest relative change of the intensities' contrast (0: none).
        intensity_shift: largest shift of the intensities, in ``[0, 1]`` units (0: none).
        gamma: ``[low, high]`` of the gamma exponent; None: none.
        flip_axes: axes that may be reversed, by name (``superior``, ``posterior``, ``left``).
        flip_probability: chance of each named axis being reversed.
        padding: ``border`` (edge voxels repeated) or ``zeros``, for what comes from outside.
        spacing: voxel size ``[z, y, x]`` mm (``data.spacing``) for the geometry; None: voxels.
    """

    def __init__(
        self,
        rotate_degrees: float = 5.0,
        scale: Sequence[float] | None = (0.9, 1.1),
        translate: float = 0.03,
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.05,
        gamma: Sequence[float] | None = None,
        flip_axes: Sequence[str] = (),
        flip_probability: float = 0.5,
        padding: str = "border",
        spacing: Sequence[float] | None = None,
    ) -> None:
        self.rotate_degrees = _number("rotate_degrees", rotate_degrees, 0.0, 180.0)
        self.scale = _range("scale", scale, 0.01, 100.0)
        self.translate = _number("translate", translate, 0.0, 1.0)
        self.intensity_scale = _number("intensity_scale", intensity_scale, 0.0, 1.0)
        self.intensity_shift = _number("intensity_shift", intensity_shift, 0.0, 1.0)
        self.gamma = _range("gamma", gamma, 0.01, 100.0)
        if isinstance(flip_axes, str) or not isinstance(flip_axes, Sequence):
            raise NervusInputError(
                f"augmentation.flip_axes must be a list of axis names, e.g. [left], got "
                f"{flip_axes!r}."
            )
        self.flip_axes = tuple(
            dict.fromkeys(check_choice("augmentation.flip_axes", n, FLIP_AXES) for n in flip_axes)
        )
        self.flip_probability = _number("flip_probability", flip_probability, 0.0, 1.0)
        self.padding = check_choice("augmentation.padding", padding, PADDINGS)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    @property
    def moves(self) -> bool:
        """Whether the affine can differ from the identity."""
        still_scale = self.scale is None or self.scale == (1.0, 1.0)
        return bool(self.rotate_degrees or self.translate or not still_scale)

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.dim() != 4:
            raise ValueError(f"expected a (1, D, H, W) volume, got shape {tuple(volume.shape)}")
        # One draw of every random number, whatever is switched off, in a fixed order.
        draws = torch.rand(13, dtype=torch.float64).tolist()
        out = volume
        if self.moves:
            out = resample_volume(out, self.draw_affine(draws[:7], volume.shape[1:]), self.padding)
        out = self._jitter(out, draws[7:10])
        flips = [
            FLIP_AXES[name]
            for name, u in zip(self.flip_axes, draws[10:], strict=False)
            if u < self.flip_probability
        ]
        return out.flip(flips) if flips else out

    def draw_affine(self, draws: Sequence[float], shape: Sequence[int]) -> torch.Tensor:
        """The ``(4, 4)`` map from output to input voxel indices (``[d, h, w, 1]``) of one
        draw (seven numbers uniform in ``[0, 1)``: three angles, a scale, three shifts)."""
        signed = [2.0 * u - 1.0 for u in draws]
        angles = [math.radians(self.rotate_degrees * s) for s in signed[:3]]
        low, high = self.scale or (1.0, 1.0)
        zoom = low + (high - low) * draws[3]
        extent = [n * s for n, s in zip(shape, self.spacing or (1.0,) * 3, strict=True)]
        shift = [self.translate * s * e for s, e in zip(signed[4:7], extent, strict=True)]
        return output_to_input(rotation(angles) * zoom, shift, shape, self.spacing)

    def _jitter(self, volume: torch.Tensor, draws: Sequence[float]) -> torch.Tensor:
        if self.gamma is None and not (self.intensity_scale or self.intensity_shift):
            return volume
        out = volume.clamp(0.0, 1.0)
        if self.gamma is not None:
            low, high = self.gamma
            out = out.pow(low + (high - low) * draws[0])
        factor = 1.0 + self.intensity_scale * (2.0 * draws[1] - 1.0)
        offset = self.intensity_shift * (2.0 * draws[2] - 1.0)
        return (out * factor + offset).clamp_(0.0, 1.0)


def rotation(angles: Sequence[float]) -> torch.Tensor:
    """The ``(3, 3)`` rotation (float64, axes ``d, h, w``) by ``angles[k]`` radians about axis
    ``k``, applied about ``d`` first, then ``h``, then ``w``. A positive angle about axis ``k``
    turns the next axis towards the one after it (about ``d``: ``h`` towards ``w``)."""
    matrix = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        first, second = (axis + 1) % 3, (axis + 2) % 3
        turn = torch.eye(3, dtype=torch.float64)
        turn[first, first] = turn[second, second] = math.cos(angle)
        turn[second, first] = math.sin(angle)
        turn[first, second] = -math.sin(angle)
        matrix = turn @ matrix
    return matrix


def output_to_input(
    linear: torch.Tensor,
    shift: Sequence[float],
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
) -> torch.Tensor:
    """The ``(4, 4)`` map from output to input voxel indices of the transform that moves a
    point at ``x`` (mm from the volume's centre, or voxels without ``spacing``) to
    ``linear @ x + shift``."""
    size = torch.diag(torch.tensor(spacing or (1.0,) * 3, dtype=torch.float64))
    centre = (torch.tensor(list(shape), dtype=torch.float64) - 1.0) / 2.0
    inverse = torch.linalg.inv(linear.to(torch.float64))
    to_voxels = torch.linalg.inv(size)
    matrix = to_voxels @ inverse @ size
    offset = centre - matrix @ centre - to_voxels @ inverse @ torch.tensor(shift).double()
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3], out[:3, 3] = matrix, offset
    return out


def resample_volume(volume: torch.Tensor, index_map: torch.Tensor, padding: str) -> torch.Tensor:
    """``volume`` ``(C, D, H, W)`` sampled trilinearly at ``index_map @ [d, h, w, 1]`` for every
    output voxel ``(d, h, w)``: ``scipy.ndimage.affine_transform(order=1)`` with the same
    matrix, ``mode='nearest'`` (``padding='border'``) or ``'grid-constant'`` (``'zeros'``)."""
    sides = torch.tensor(list(volume.shape[1:]), dtype=torch.float64)
    # grid_sample works in coordinates from -1 to 1 across each side (align_corners=False:
    # u = (2 p + 1) / n - 1), with the axes in (w, h, d) order.
    to_unit = torch.diag(torch.cat([2.0 / sides, torch.ones(1, dtype=torch.float64)]))
    to_unit[:3, 3] = 1.0 / sides - 1.0
    unit = to_unit @ index_map @ torch.linalg.inv(to_unit)
    reverse = [2, 1, 0]
    theta = torch.cat([unit[:3, :3][reverse][:, reverse], unit[:3, 3][reverse, None]], dim=1)
    grid = F.affine_grid(theta[None].to(volume.dtype), [1, *volume.shape], align_corners=False)
    out = F.grid_sample(
        volume[None], grid, mode="bilinear", padding_mode=padding, align_corners=False
    )
    return out[0]


def build_volume_train_transform(
    name: str, options: Mapping[str, Any] | None = None, spacing: Sequence[float] | None = None
) -> VolumeAugmentation | None:
    """The training transform of volumes: None for ``augmentation=none``, else the ``volume``
    preset with ``options`` (the ``augmentation`` group's keys other than ``name``) and the voxel
    size ``spacing`` (``data.spacing``, None: geometry in voxels)."""
    options = dict(options or {})
    if name == "none":
        return None
    check_keys("augmentation", options, keyword_names(VolumeAugmentation, skip=("spacing",)))
    return VolumeAugmentation(**options, spacing=spacing)


def build_transforms(
    name: str,
    options: Mapping[str, Any] | None,
    image_size: int,
    volume: Mapping[str, Any] | None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, Callable | None]:
    """The ``(train, eval)`` transforms of ``augmentation=name``. Volumes (``volume``: the
    schema's entry, None for 2D images) are read at their size: no evaluation transform, and
    :func:`build_volume_train_transform` for training. 2D images: the presets of
    :mod:`~nervus_lightning.data.transforms` at ``image_size`` (``volume``, refused with 2D
    images by :func:`check_augmentation`, reaches here only without images: no augmentation)."""
    if volume is not None:
        return build_volume_train_transform(name, options, volume.get("spacing")), None
    name = name if name in TRAIN_TRANSFORMS else "none"
    return build_train_transform(name, image_size), build_eval_transform(image_size)
