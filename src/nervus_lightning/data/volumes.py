"""Volumes (CT, MR) as the scanner stores them, read into one orientation: the reading layer of
3D inputs. Training uses it through :mod:`.volume_input`; this module owns turning a file or folder
into a :class:`Volume` and checking it cheaply beforehand (:func:`volume_problem`).

Inputs: a NIfTI file (``.nii``, ``.nii.gz``, NIfTI-1 or -2, with nibabel: the ``volumes`` extra,
``pip install "nervus-lightning[volumes]"``), a folder holding one DICOM series, or one
multi-frame DICOM file (Enhanced CT/MR, RT Dose); :mod:`.volume_dicom` orders and checks the
DICOM slices, :mod:`.volume_nifti` checks a NIfTI header and shows its intensities.

**Orientation.** Every volume comes out in one orientation, the closest to how it was stored
(axes permuted and flipped, never interpolated for the orientation itself): the array's axes
``(d, h, w)`` run towards the patient's superior, posterior and left (:data:`CANONICAL_AXES`),
and :attr:`Volume.affine` maps a voxel index ``(d, h, w)`` to DICOM patient coordinates (LPS:
x to the left, y to the back, z to the head, in mm). LPS rather than nibabel's RAS because it is
the frame the scanner writes (a DICOM series is placed without sign changes) and because a usual
axial series then needs no flip at all: ``array[d]`` is slice ``d`` from the feet up, shown as a
radiology viewer shows it (anterior at the top, the patient's right on the left of the image),
the layout SimpleITK also gives (``z, y, x`` arrays in LPS). In nibabel's notation (RAS world)
the array's axis codes are ``('S', 'P', 'L')``: :func:`nibabel.aff2axcodes` of
``volume_nifti.LPS_FROM_RAS @ affine`` says so, and the tests compare the result with nibabel's own
``as_closest_canonical``. A NIfTI affine (RAS) is turned into LPS by negating x and y.

**Intensities** follow the rule of 2D DICOM (:mod:`.dicom`): modality-LUT values (each slice's
own Rescale Slope/Intercept; a NIfTI's ``scl_slope``/``scl_inter``), then ``window`` and scaling
to ``[0, 1]`` by the fixed output range of that step, with pydicom's own functions:

* ``[center, width]``: DICOM's ``LINEAR`` window in modality units (e.g. ``[40, 400]`` for soft
  tissue in Hounsfield units), for NIfTI too;
* ``auto``: a DICOM series' own VOI LUT or window (its central slice's); a NIfTI's display
  range ``cal_min .. cal_max`` when set. A volume without either gets the data set's window
  (:class:`~nervus_lightning.data.dicom_window.AutoWindow`, chosen on the training volumes by
  :func:`choose_volume_auto_window`, as 2D DICOM files get theirs): the window of its DICOM
  Modality, or for NIfTI, which records no modality, the one window of the training NIfTI
  volumes without a display range (:data:`.volume_nifti.NIFTI_WINDOW_KEY`). Without such a
  window (plain ``auto``, or a modality not seen in training): its full range;
* ``none``: the full range the stored bits allow after the modality LUT (for NIfTI: its integer
  data type's range after ``scl_slope``/``scl_inter``). A floating-point NIfTI has no such range:
  without ``cal_min``/``cal_max`` or the data set's window it is scaled by its own minimum and
  maximum, the one case of a volume scaled by its own values.

**Resampling** (after the orientation, before the window, so the window sees interpolated
modality values as a viewer's reformat does) is trilinear, with
:func:`scipy.ndimage.affine_transform` (order 1, edges extended), no anti-aliasing:

* ``spacing=[z, y, x]`` (mm, the ``d, h, w`` axes): voxels of exactly that size, as many as fit
  the volume's extent (rounded), on a grid centred where the volume's centre is;
* ``shape=[D, H, W]``: that many voxels over the same extent (the grid torch's
  ``interpolate(..., align_corners=False)`` samples), so the voxel size becomes extent / shape;
* both: the spacing grid first, then ``shape`` voxels over that grid's extent, in one
  interpolation; the voxel size is then that extent / shape, not ``spacing`` (to keep a
  physical voxel size, give ``spacing`` alone).

The affine follows each step, so the world position of the volume's centre never moves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.data.dicom_decode import (
    has_voi_lut_sequence,
    has_window,
    is_dicom_file,
    modality_of,
    photometric_of,
)
from nervus_lightning.data.dicom_window import (
    AUTO_WINDOW_MAX_FILES,
    DEFAULT_WINDOW,
    AutoWindow,
    AutoWindowChoice,
    Window,
    display_values,
    evenly_spaced,
    parse_window,
    pool_auto_window,
    resolve_window,
)
from nervus_lightning.data.volume_dicom import (
    central_header,
    dicom_volume_problem,
    read_multi_frame,
    read_series,
)
from nervus_lightning.data.volume_nifti import (
    is_nifti,
    nifti_display,
    nifti_problem,
    nifti_window_group,
    read_nifti,
)
from nervus_lightning.errors import ImageReadError, NervusInputError

#: Where the array's axes ``(d, h, w)`` run: to the patient's superior, posterior, left.
CANONICAL_AXES = ("S", "P", "L")
# World axis (LPS: 0 = x, 1 = y, 2 = z) that array axis d, h, w runs along.
_WORLD_AXIS_OF = (2, 1, 0)


@dataclass(frozen=True)
class Volume:
    """One volume in the canonical orientation (see the module docstring).

    Attributes:
        array: float32, ``(D, H, W)``, display values in ``[0, 1]``.
        affine: 4 x 4 float64, voxel index ``(d, h, w)`` -> LPS patient coordinates in mm.
        spacing: voxel size in mm along ``d, h, w`` (the lengths of the affine's columns).
        source: the file or folder read.
        modality: DICOM ``Modality`` in upper case (``CT``, ``MR``, ...); ``""`` for NIfTI,
            which does not record it.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: Path
    modality: str


def read_volume(
    path: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    window: Window | Sequence[float] = DEFAULT_WINDOW,
    volume_index: int | None = None,
) -> Volume:
    """Read a NIfTI file, a DICOM series folder or a multi-frame DICOM file as a :class:`Volume`.

    Args:
        path: the file or folder.
        spacing: voxel size ``[z, y, x]`` in mm to resample to (see the module docstring).
        shape: ``[D, H, W]`` to resize to (after ``spacing`` when both are given).
        window: ``"auto"``, ``"none"`` or ``[center, width]`` in modality units.
        volume_index: which volume of a 4D NIfTI (0-based); a 4D file is refused without one.

    Raises:
        NervusInputError: a bad ``spacing``, ``shape`` or ``window``.
        ImageReadError: (a NervusInputError naming ``path``) an unreadable file, something
            that is not one volume (a 2D image, a 4D NIfTI without ``volume_index``, several
            series in the folder), missing slices, unequal steps, a missing reader library.
    """
    path = Path(path)
    window = window if isinstance(window, AutoWindow) else parse_window(window)
    spacing = _positive_triple("spacing", spacing, float)
    shape = _positive_triple("shape", shape, int)
    if not path.exists():
        raise ImageReadError(path, "it does not exist")
    values, affine, modality, display = _read_source(path, window, volume_index)
    values, affine = to_canonical(values, affine)
    values, affine = resample(values, affine, spacing=spacing, shape=shape)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    array = np.ascontiguousarray(display(values))
    return Volume(array, affine, tuple(map(float, sizes)), path, modality)


def _read_source(path: Path, window: Window, volume_index: int | None):
    """``(values, affine, modality, display)`` of ``path`` as stored: modality-LUT values, their
    LPS affine, the DICOM Modality, and the function that shows such values in ``[0, 1]``."""
    if is_nifti(path):
        values, affine, intensity = read_nifti(path, volume_index)
        return values, affine, "", lambda v: nifti_display(path, v, intensity, window)
    if path.is_dir():
        stack = read_series(path)
    elif path.is_file() and is_dicom_file(path):
        stack = read_multi_frame(path)
    else:
        raise ImageReadError(path, _NOT_A_VOLUME)
    ds, header = stack.ds, stack.header
    return (
        stack.values,
        stack.affine,
        modality_of(ds),
        lambda v: _dicom_display(v, ds, header, window),
    )


_NOT_A_VOLUME = (
    "it is not a volume this reader knows: give a NIfTI file (.nii, .nii.gz), a folder holding "
    "one DICOM series, or a multi-frame DICOM file"
)


def auto_window_group(path: str | os.PathLike) -> str | None:
    """Which of the data set's windows ``data.window=auto`` shows ``path`` with, from headers
    only: None for a volume with a window of its own (a DICOM VOI LUT or Window Center/Width on
    its central slice, a NIfTI ``cal_min``/``cal_max``), else its DICOM ``Modality`` (``""``
    without one), or :data:`.volume_nifti.NIFTI_WINDOW_KEY` for a NIfTI file."""
    path = Path(path)
    if is_nifti(path):
        return nifti_window_group(path)
    if not (path.is_dir() or (path.is_file() and is_dicom_file(path))):
        raise ImageReadError(path, _NOT_A_VOLUME)
    ds, header = central_header(path)
    if has_voi_lut_sequence(header) or has_window(header):
        return None
    return modality_of(ds)


def modality_values(path: str | os.PathLike) -> np.ndarray:
    """At most 65,536 evenly spaced modality-LUT values of the volume ``path`` as stored (before
    orientation and resampling): Hounsfield units of a CT series, a NIfTI's values after
    ``scl_slope``/``scl_inter``."""
    values, _, _, _ = _read_source(Path(path), DEFAULT_WINDOW, None)
    return evenly_spaced(values)


def choose_volume_auto_window(
    paths: Sequence[str | os.PathLike],
    *,
    max_files: int = AUTO_WINDOW_MAX_FILES,
    seed: int = 0,
    max_workers: int | None = None,
) -> AutoWindowChoice:
    """The data set's windows for the volumes of ``paths`` (the training split's) that have no
    window of their own: the 2D rule (:func:`~nervus_lightning.data.dicom_window.
    choose_auto_window`) with volumes: one window per DICOM Modality, and one for NIfTI
    volumes (:data:`.volume_nifti.NIFTI_WINDOW_KEY`), spanning the 0.5th to 99.5th percentiles
    of their pooled modality-LUT values (at most ``max_files`` volumes per window drawn with
    ``seed``, at most 65,536 evenly spaced values of each). Two numbers per window, an
    aggregate of many volumes.

    Raises:
        ImageReadError: a volume that has to be read cannot be.
    """
    return pool_auto_window(
        paths,
        auto_window_group,
        modality_values,
        max_files=max_files,
        seed=seed,
        max_workers=max_workers,
        what="volumes",
        unit="volume(s)",
    )


def volume_problem(path: str | os.PathLike, *, volume_index: int | None = None) -> str | None:
    """What stops ``path`` from being read as a volume, from headers only; None if fine.

    The checks of :func:`read_volume` that need no pixel: the file or folder exists and is a
    volume (one DICOM series, evenly spaced, none missing; a 3D NIfTI, or a 4D one with
    ``volume_index``), the reader library is installed, and the pixel data are all there (each
    DICOM file measured against its header; an uncompressed ``.nii`` against its size).
    """
    path = Path(path)
    if not path.exists():
        return "it does not exist"
    if is_nifti(path):
        return nifti_problem(path, volume_index)
    if path.is_dir() or is_dicom_file(path):
        return dicom_volume_problem(path)
    return _NOT_A_VOLUME


def _positive_triple(name: str, value: Sequence[float] | None, kind: type) -> np.ndarray | None:
    if value is None:
        return None
    try:
        numbers = np.asarray([kind(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = np.zeros(0)
    if numbers.shape != (3,) or not (np.isfinite(numbers) & (numbers > 0)).all():
        raise NervusInputError(
            f"{name} must be three positive numbers in the order of the volume's axes "
            f"(superior, posterior, left: [z, y, x]), e.g. {name}="
            f"{'[2.0, 1.0, 1.0]' if kind is float else '[64, 128, 128]'}; got {value!r}."
        )
    return numbers


def to_canonical(values: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` with axes permuted and flipped into the canonical orientation, and its affine.

    Each array axis is matched with the world axis its direction is closest to (largest
    direction cosine first, each world axis used once), then put in :data:`CANONICAL_AXES`
    order and flipped where it runs the other way. No interpolation: an oblique volume keeps
    its obliquity in the affine.
    """
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    free = np.abs(directions)
    world_of = [0, 0, 0]
    for _ in range(3):
        world, axis = np.unravel_index(np.argmax(free), free.shape)
        world_of[axis] = int(world)
        free[world, :], free[:, axis] = -1.0, -1.0
    order = [world_of.index(world) for world in _WORLD_AXIS_OF]
    # new index -> old index: old[order[t]] = new[t], or (n - 1) - new[t] where flipped
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1.0
    flipped = []
    for new, old in enumerate(order):
        if directions[_WORLD_AXIS_OF[new], old] < 0:
            flipped.append(new)
            to_old[old, new] = -1.0
            to_old[old, 3] = values.shape[old] - 1
        else:
            to_old[old, new] = 1.0
    canonical = (
        np.flip(values.transpose(order), axis=flipped) if flipped else values.transpose(order)
    )
    return canonical, affine @ to_old


def resample(
    values: np.ndarray,
    affine: np.ndarray,
    *,
    spacing: np.ndarray | None = None,
    shape: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``values`` resampled trilinearly to ``spacing`` and/or ``shape``, and its new affine
    (see the module docstring); unchanged when both are None."""
    if spacing is None and shape is None:
        return values, affine
    from scipy.ndimage import affine_transform

    before = np.asarray(values.shape, dtype=np.float64)
    step = np.ones(3)  # old voxels per new voxel, along each axis
    after = before
    if spacing is not None:
        step = np.asarray(spacing, dtype=np.float64) / np.linalg.norm(affine[:3, :3], axis=0)
        after = np.maximum(np.rint(before / step), 1.0)
    if shape is not None:
        target = np.asarray(shape, dtype=np.float64)
        step, after = step * after / target, target
    # new index o samples old index (before - 1) / 2 + (o - (after - 1) / 2) * step: centres meet
    offset = (before - 1) / 2 - (after - 1) / 2 * step
    resampled = affine_transform(
        np.asarray(values, dtype=np.float32),
        step,
        offset=offset,
        output_shape=tuple(int(n) for n in after),
        order=1,
        mode="nearest",
    )
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(step)
    to_old[:3, 3] = offset
    return resampled, affine @ to_old


def _dicom_display(values: np.ndarray, ds: Any, header: Any, window: Window) -> np.ndarray:
    """Window and ``[0, 1]`` scaling of a DICOM volume, slice by slice with one header (the
    central slice's), as :func:`~nervus_lightning.data.dicom.read_dicom` shows one image."""
    shown = resolve_window(window, header, ds)
    if shown == "auto" and has_voi_lut_sequence(header):
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
    monochrome1 = photometric_of(ds) == "MONOCHROME1"
    out = np.empty(values.shape, dtype=np.float32)
    for d, plane in enumerate(values):  # one slice at a time: float64 copies of one slice only
        out[d] = display_values(plane, header, shown, monochrome1)
    return out
