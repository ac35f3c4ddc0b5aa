"""NIfTI volumes: a file's header checked to be one volume before its voxels are read, the
voxels and their affine in LPS, and its intensities shown in ``[0, 1]`` by the rules of
:mod:`.volumes` (its module docstring: ``cal_min .. cal_max``, the data set's window under
:data:`NIFTI_WINDOW_KEY`, the integer range after ``scl_slope``/``scl_inter``, a window through
pydicom's display step). nibabel (the ``volumes`` extra) is imported only when a NIfTI file is
read. The orientation and resampling are :mod:`.volumes`', as for DICOM volumes
(:mod:`.volume_dicom`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.data.dicom_window import AutoWindow, Window, display_values
from nervus_lightning.errors import ImageReadError

VOLUMES_EXTRA_HINT = 'pip install "nervus-lightning[volumes]"'
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Turns a NIfTI (RAS) affine into DICOM patient coordinates (LPS), and back.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: The data set's window (:class:`AutoWindow` key) of NIfTI volumes without ``cal_min``/
#: ``cal_max``: NIfTI records no modality, so they share one. Mixed case, so it can never be a
#: DICOM Modality (upper-case code string).
NIFTI_WINDOW_KEY = "NIfTI"


def import_nibabel(path: Path):
    """nibabel, or an ImageReadError telling how to install it."""
    try:
        import nibabel
    except ImportError:
        raise ImageReadError(
            path, f"this is a NIfTI file; install the volumes extra ({VOLUMES_EXTRA_HINT})"
        ) from None
    return nibabel


def is_nifti(path: Path) -> bool:
    """A ``.nii`` or ``.nii.gz`` file name."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class NiftiIntensity:
    """What a NIfTI header says about its intensities."""

    dtype: np.dtype
    slope: float
    inter: float
    display_range: tuple[float, float] | None


def nifti_header(path: Path, volume_index: int | None):
    """The loaded (lazy) NIfTI image, checked from its header to be one volume."""
    nibabel = import_nibabel(path)
    try:
        image = nibabel.load(path)
    except Exception as exc:  # nibabel raises several types for a damaged or foreign file
        raise ImageReadError(path, f"the NIfTI file cannot be read ({exc}); {_RESAVE}") from exc
    shape = tuple(int(n) for n in image.shape)
    listed = " x ".join(map(str, shape))
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise ImageReadError(
            path, f"it is a 2D image (shape {listed}), not a volume; read it as a 2D image"
        )
    if len(shape) > 4:
        raise ImageReadError(path, f"it has {len(shape)} dimensions (shape {listed}); {_ONE}")
    if len(shape) == 4 and volume_index is None:
        raise ImageReadError(
            path,
            f"it holds {shape[3]} volumes (shape {listed}: a time series or several "
            f"directions); {_ONE}, or choose one with volume_index",
        )
    if len(shape) == 4 and not 0 <= volume_index < shape[3]:
        raise ImageReadError(
            path,
            f"volume_index={volume_index} is outside its {shape[3]} volumes (0 .. {shape[3] - 1})",
        )
    dtype = np.dtype(image.get_data_dtype())
    if dtype.kind not in "iuf":
        raise ImageReadError(path, f"its voxels are {dtype} (not grayscale numbers); {_RESAVE}")
    affine = image.affine
    if (
        affine is None
        or not np.isfinite(affine).all()
        or abs(np.linalg.det(affine[:3, :3])) < 1e-12
    ):
        raise ImageReadError(path, f"its affine (voxel -> mm) is missing or singular; {_RESAVE}")
    if not path.name.lower().endswith(".gz"):
        offset = int(getattr(image.dataobj, "offset", image.header.get_data_offset()))
        needed = offset + dtype.itemsize * int(np.prod(image.shape))
        if path.stat().st_size < needed:
            raise ImageReadError(
                path,
                f"it is truncated: {path.stat().st_size} bytes where its header asks for "
                f"{needed}; copy the file again",
            )
    return image, shape


_RESAVE = "save it again as a 3D NIfTI (e.g. with dcm2niix, nibabel or ITK-SNAP)"
_ONE = "save the volume you want as a 3D NIfTI"


def read_nifti(path: Path, volume_index: int | None):
    """``(values float32, LPS affine, intensity facts)`` of a NIfTI file."""
    image, shape = nifti_header(path, volume_index)
    proxy = image.dataobj
    try:
        data = proxy[..., volume_index] if len(shape) == 4 else np.asanyarray(proxy)
        values = np.asarray(data, dtype=np.float32).reshape(shape[:3])
    except Exception as exc:  # a damaged or truncated (.gz) data block
        raise ImageReadError(
            path, f"the NIfTI voxel data cannot be read ({exc}); copy the file again"
        ) from exc
    intensity = NiftiIntensity(
        np.dtype(image.get_data_dtype()),
        float(getattr(proxy, "slope", 1.0)),
        float(getattr(proxy, "inter", 0.0)),
        nifti_display_range(image.header),
    )
    return values, LPS_FROM_RAS @ image.affine, intensity


def nifti_display_range(header) -> tuple[float, float] | None:
    """A NIfTI header's ``cal_min .. cal_max``, or None when unset (not increasing)."""
    low, high = (float(header.get("cal_min", 0) or 0), float(header.get("cal_max", 0) or 0))
    return (low, high) if high > low else None


def nifti_display(
    path: Path, values: np.ndarray, intensity: NiftiIntensity, window: Window
) -> np.ndarray:
    """Window and ``[0, 1]`` scaling of a NIfTI volume (see the module docstring): a window
    and the integer ranges go through the DICOM display step, described by a DICOM header."""
    if isinstance(window, AutoWindow):  # the data set's window where the file has none
        own = intensity.display_range is not None
        window = "auto" if own else window.for_modality(NIFTI_WINDOW_KEY) or "auto"
    if window == "auto" and intensity.display_range is not None:
        low, high = intensity.display_range
        return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if not isinstance(window, tuple) and intensity.dtype.kind == "f":
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros_like(values, dtype=np.float32)
        return ((values - low) / (high - low)).astype(np.float32)
    header = nifti_display_header(path, intensity)
    shown = window if isinstance(window, tuple) else "none"
    out = np.empty(values.shape, dtype=np.float32)
    for d, plane in enumerate(values):
        out[d] = display_values(plane, header, shown, False)
    return out


def nifti_display_header(path: Path, intensity: NiftiIntensity) -> Any:
    """A DICOM header with a NIfTI's stored bits and scaling, for pydicom's display step."""
    try:
        from pydicom.dataset import Dataset
    except ImportError:
        raise ImageReadError(
            path, f"its intensities are scaled with pydicom; install {VOLUMES_EXTRA_HINT}"
        ) from None
    header = Dataset()
    header.PhotometricInterpretation = "MONOCHROME2"
    if intensity.dtype.kind == "f":  # only a window reaches here: its LINEAR output range
        header.BitsStored, header.PixelRepresentation = 16, 0
        return header
    header.BitsStored = intensity.dtype.itemsize * 8
    header.PixelRepresentation = int(intensity.dtype.kind == "i")
    header.RescaleSlope, header.RescaleIntercept = intensity.slope, intensity.inter
    return header


def nifti_window_group(path: Path) -> str | None:
    """None for a NIfTI file with a display range of its own, else :data:`NIFTI_WINDOW_KEY`
    (:func:`~nervus_lightning.data.volumes.auto_window_group`), from its header."""
    image, _ = nifti_header(path, None)
    return None if nifti_display_range(image.header) is not None else NIFTI_WINDOW_KEY


def nifti_problem(path: Path, volume_index: int | None) -> str | None:
    """What stops the NIfTI file ``path`` from being read as one volume, from its header (and
    whether pydicom, which shows its intensities, is installed); None if fine."""
    try:
        nifti_header(path, volume_index)
        nifti_display_header(path, NiftiIntensity(np.dtype(np.int16), 1.0, 0.0, None))
    except ImageReadError as problem:
        return problem.reason
    return None
