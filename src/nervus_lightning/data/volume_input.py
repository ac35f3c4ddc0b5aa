"""Volumes as training inputs: ``data.volume_size`` and ``data.spacing`` checked, stored in the
schema, and each ``imgpath`` / ``imgpath_<view>`` cell read as a ``(1, D, H, W)`` tensor.

The reading itself (orientation, resampling, window) is :func:`~nervus_lightning.data.volumes.
read_volume`'s; this module owns how training uses it:

* ``volume_size`` alone: each volume resized to ``[D, H, W]`` voxels over its own extent (the
  voxel size then differs between scans of different fields of view).
* ``volume_size`` and ``spacing``: resampled to ``spacing`` mm, then cropped or padded (with 0,
  the bottom of the window) about its centre to ``volume_size``. Every voxel then has the same
  physical size in every case, so a 10 mm nodule is as many voxels in a small field of view as
  in a large one; what lies outside ``volume_size x spacing`` mm around the centre is cut.

The schema (and so the checkpoint) holds these settings, the window and the orientation, never a
value of one patient, so that prediction reads new volumes exactly as training did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nervus_lightning.data.dicom_decode import is_dicom_file
from nervus_lightning.data.dicom_window import Window, window_key
from nervus_lightning.data.volumes import read_volume, volume_problem
from nervus_lightning.errors import NervusInputError

#: The orientation every volume is read into (axes superior, posterior, left): the schema says
#: so, so that a later change of the reading layer cannot silently flip a trained model's input.
ORIENTATION = "LPS"
#: 2D image files that a volume column must not name.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Extractors that read volumes.
VOLUME_EXTRACTORS = "model/extractor=small_cnn_3d, resnet18_3d or densenet121_3d"


def _triple(key: str, value: Any, kind: type, example: str) -> list:
    try:
        numbers = [kind(v) for v in value]
        ok = len(numbers) == 3 and all(np.isfinite(n) and n > 0 for n in numbers)
        ok = ok and (kind is float or all(float(v) == int(v) for v in value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise NervusInputError(
            f"data.{key} must be three positive {'integers' if kind is int else 'numbers'} "
            f"along the volume's axes (superior, posterior, left), e.g. data.{key}={example}; "
            f"got {value!r}."
        )
    return numbers


def volume_schema_entry(
    volume_size: Sequence[int] | None, spacing: Sequence[float] | None
) -> dict[str, Any] | None:
    """``data.volume_size`` and ``data.spacing`` checked, as the schema stores them (None: 2D
    images). ``spacing`` without ``volume_size`` is refused: it would change nothing."""
    if volume_size is None:
        if spacing is not None:
            raise NervusInputError(
                f"data.spacing={list(spacing)} needs data.volume_size=[D,H,W] (volume mode); "
                "set both to train on volumes, or neither for 2D images."
            )
        return None
    return {
        "shape": _triple("volume_size", volume_size, int, "[64,128,128]"),
        "spacing": None if spacing is None else _triple("spacing", spacing, float, "[2.0,1.0,1.0]"),
        "orientation": ORIENTATION,
    }


def check_stored_volume(requested: dict[str, Any] | None, stored: dict[str, Any] | None) -> None:
    """A model's data read again (prediction): ``data.volume_size``/``data.spacing`` given on
    the command line must be how the model reads its images, or unset."""
    if requested is not None and requested != stored:
        raise NervusInputError(
            f"data.volume_size/data.spacing ({requested}) differ from how the model reads its "
            f"images ({stored or '2D images'}); leave them unset to use the model's."
        )


def check_volume_options(in_channels: int) -> None:
    """What volume mode does not take: three channels. (Augmentation presets:
    :func:`~nervus_lightning.data.volume_augment.check_augmentation`.)"""
    if in_channels != 1:
        raise NervusInputError(
            f"data.in_channels={in_channels}: volumes (data.volume_size) have one channel; set "
            "data.in_channels=1."
        )


@dataclass(frozen=True)
class VolumeSettings:
    """How every volume of a data set is read: ``shape`` ``[D, H, W]``, ``spacing`` ``[z, y, x]``
    mm or None, and the DICOM/NIfTI ``window``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    window: Window

    @classmethod
    def from_schema(cls, entry: dict[str, Any], window: Window) -> VolumeSettings:
        if entry.get("orientation", ORIENTATION) != ORIENTATION:
            raise NervusInputError(
                f"the model reads volumes in orientation {entry['orientation']}; this version "
                f"reads them in {ORIENTATION} only."
            )
        spacing = entry.get("spacing")
        return cls(
            tuple(int(n) for n in entry["shape"]),
            None if spacing is None else tuple(float(s) for s in spacing),
            window,
        )

    def key_fields(self) -> dict[str, Any]:
        """What a cached volume depends on (the disk cache's key)."""
        return {
            "shape": list(self.shape),
            "spacing": None if self.spacing is None else list(self.spacing),
            "window": window_key(self.window),
            "orientation": ORIENTATION,
        }


def centre_crop_or_pad(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``array`` cut or padded with zeros, about its centre, to ``shape`` (each axis on its
    own: the centre voxel stays the centre voxel, the extra one of an odd difference going to
    the end)."""
    out = np.zeros(tuple(shape), dtype=array.dtype)
    source, target = [], []
    for have, want in zip(array.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            source.append(slice(start, start + want))
            target.append(slice(0, want))
        else:
            start = (want - have) // 2
            source.append(slice(0, have))
            target.append(slice(start, start + have))
    out[tuple(target)] = array[tuple(source)]
    return out


def read_training_volume(path: str | os.PathLike, settings: VolumeSettings) -> torch.Tensor:
    """One volume as the network gets it: ``(1, D, H, W)`` float32 in ``[0, 1]``."""
    if settings.spacing is None:
        array = read_volume(path, shape=settings.shape, window=settings.window).array
    else:
        volume = read_volume(path, spacing=settings.spacing, window=settings.window)
        array = centre_crop_or_pad(volume.array, settings.shape)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(0)


def _volume_file_problem(path: str) -> str | None:
    file = Path(path)
    if file.is_file() and file.name.lower().endswith(_IMAGE_SUFFIXES):
        return (
            "a 2D image, not a volume; data.volume_size reads volumes only (NIfTI, a DICOM "
            "series folder, a multi-frame DICOM file): leave data.volume_size unset (null) to "
            "train on 2D images"
        )
    problem = volume_problem(file)
    if problem and file.is_file() and is_dicom_file(file):
        problem += (
            " (a single-slice DICOM file is a 2D image: leave data.volume_size unset to train on "
            "2D images, or name the folder of its series)"
        )
    return problem


def check_volume_files(paths: Sequence[str], max_workers: int | None = None) -> list[tuple]:
    """``(path, reason)`` of each path that cannot be read as a volume, from headers only."""
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        reasons = list(pool.map(_volume_file_problem, paths))
    return [(str(p), r) for p, r in zip(paths, reasons, strict=True) if r is not None]


def refuse_volumes(schema_volume: dict[str, Any] | None, what: str) -> None:
    """Stop ``what`` (a command or option not 3D-ready) for a model or data of volumes."""
    if schema_volume:
        raise NervusInputError(
            f"{what} is not available for volumes yet (this model reads 3D volumes, "
            f"volume size {list(schema_volume['shape'])}). Training, predict and evaluate work."
        )
