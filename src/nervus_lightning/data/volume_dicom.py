"""DICOM volumes: a folder holding one series, or one multi-frame file, turned into a stack of
modality-LUT values with the affine that places each voxel in the patient.

A series is ordered by where its slices are, never by file name: each slice's Image Position
(Patient) projected on the slice normal, the cross product of Image Orientation (Patient)'s row
and column directions. Everything that would make that stack wrong is refused before a pixel is
decoded, with the folder and what to do: several series in one folder, slices that differ in
orientation, matrix or pixel size, two slices at one position, a missing slice (a step larger
than 1.5 times the median one), unequal steps. A multi-frame file places its frames the same
way, from its functional groups (Enhanced CT/MR: Plane Position/Orientation and Pixel Measures,
per frame or shared) or, for the classic multi-frame files such as RT Dose, from the Grid Frame
Offset Vector along the normal.

The display step (window, scaling to ``[0, 1]``) and the orientation are
:mod:`.volumes`'; the LUT elements come from :mod:`.dicom_decode`, so a volume's slices are
read exactly as a 2D DICOM image is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.data.dicom_decode import (
    MONOCHROME,
    decode_frame,
    dicom_header_problem,
    frame_header,
    import_pydicom,
    is_dicom_file,
    photometric_of,
)
from nervus_lightning.errors import MAX_LISTED, ImageReadError

#: A step between neighbouring slices larger than this many median steps is a missing slice.
GAP_FACTOR = 1.5
# Slices of one volume share their orientation (direction cosines) and pixel size up to these.
_COSINE_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 1e-3  # relative
# Steps may differ from the median by this fraction (plus 0.01 mm of rounding in the headers).
_STEP_TOLERANCE = 0.01
_STEP_ROUNDING_MM = 0.01
_RE_EXPORT = "export the complete series again from the PACS"


@dataclass(frozen=True)
class SliceGeometry:
    """Where one slice or frame lies: the position of its first pixel (mm, DICOM patient
    coordinates, LPS), its row and column direction cosines, the pixel size ``(between rows,
    between columns)`` and the matrix ``(rows, columns)``."""

    position: np.ndarray
    row: np.ndarray
    column: np.ndarray
    pixel_spacing: tuple[float, float]
    matrix: tuple[int, int]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.column)


@dataclass(frozen=True)
class DicomStack:
    """A DICOM volume before display: ``values`` (float32, ``(slices, rows, columns)``, the
    modality-LUT output in slice-position order), ``affine`` (4 x 4, that index -> LPS mm) and
    the central slice's data set and LUT header, whose window and output range display it."""

    values: np.ndarray
    affine: np.ndarray
    ds: Any
    header: Any


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _geometry(position: Any, orientation: Any, spacing: Any, matrix: tuple[int, int]):
    """A :class:`SliceGeometry`, or None when an element is missing or malformed."""
    position = _floats(position, 3) if position is not None else None
    orientation = _floats(orientation, 6) if orientation is not None else None
    spacing = _floats(spacing, 2) if spacing is not None else None
    if position is None or orientation is None or spacing is None or (spacing <= 0).any():
        return None
    row, column = orientation[:3], orientation[3:]
    if min(np.linalg.norm(row), np.linalg.norm(column)) < 0.5:
        return None
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    return SliceGeometry(position, row, column, (float(spacing[0]), float(spacing[1])), matrix)


def frame_count(ds) -> int:
    """Number of Frames (1 when absent or malformed)."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _matrix(ds) -> tuple[int, int]:
    return int(ds.Rows), int(ds.Columns)


def stack_affine(where: Path, slices: list[SliceGeometry], names: list[str]) -> tuple:
    """The order of ``slices`` by position along their normal and the affine of that stack.

    ``names`` name the slices in messages (file names, or frame numbers). The affine maps
    ``(slice, row, column)`` to LPS mm; its slice column is the mean step between neighbouring
    positions, so a gantry-tilted CT (positions sliding in-plane) is placed exactly.

    Raises:
        ImageReadError: one slice only, differing orientation, matrix or pixel size, two slices
            at one position, a missing slice or unequal steps.
    """
    if len(slices) < 2:
        raise ImageReadError(
            where,
            f"it holds one slice ({names[0]}): a volume needs several; read a single image as a "
            "2D image (imgpath), or point at the folder of the whole series",
        )
    _check_alike(where, slices, names)
    first = slices[0]
    order = np.argsort([s.position @ first.normal for s in slices], kind="stable")
    positions = np.stack([slices[i].position for i in order])
    _check_steps(where, positions @ first.normal, positions, [names[i] for i in order])
    affine = np.eye(4)
    rows_mm, columns_mm = first.pixel_spacing
    affine[:3, 0] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine[:3, 1] = first.column * rows_mm
    affine[:3, 2] = first.row * columns_mm
    affine[:3, 3] = positions[0]
    return order, affine


def _check_alike(where: Path, slices: list[SliceGeometry], names: list[str]) -> None:
    """Refuse slices whose matrix, pixel size or orientation differ from the first one's."""
    first = slices[0]
    for name, other in zip(names, slices, strict=True):
        differs = None
        if other.matrix != first.matrix:
            differs = f"a matrix of {other.matrix[0]} x {other.matrix[1]} pixels"
        elif not np.allclose(other.pixel_spacing, first.pixel_spacing, rtol=_SPACING_TOLERANCE):
            differs = f"a pixel size of {other.pixel_spacing[0]:g} x {other.pixel_spacing[1]:g} mm"
        elif (
            np.abs(np.r_[other.row - first.row, other.column - first.column]) > _COSINE_TOLERANCE
        ).any():
            differs = "another orientation (Image Orientation Patient)"
        if differs is not None:
            raise ImageReadError(
                where,
                f"{name} has {differs} where {names[0]} has {first.matrix[0]} x "
                f"{first.matrix[1]} pixels of {first.pixel_spacing[0]:g} x "
                f"{first.pixel_spacing[1]:g} mm in its orientation: the slices do not form one "
                "volume (a localiser or a reformat mixed in?); keep one series per folder",
            )


def _check_steps(where: Path, heights: np.ndarray, positions: np.ndarray, names: list[str]):
    """Refuse sorted slices (``heights`` along the normal, ``positions`` in mm, ``names``) that
    share a position, miss a slice, step unevenly or slide off one straight line."""
    steps = np.diff(heights)
    median = float(np.median(steps))
    tolerance = _STEP_TOLERANCE * median + _STEP_ROUNDING_MM

    def between(i: int) -> str:
        return f"{names[i]} ({heights[i]:g} mm) and {names[i + 1]} ({heights[i + 1]:g} mm)"

    same = np.flatnonzero(steps <= _STEP_ROUNDING_MM)
    if same.size:
        raise ImageReadError(
            where,
            f"{same.size} pair(s) of slices lie at one position, e.g. {between(same[0])}: "
            "several phases, echoes or acquisitions share the series; put each in a folder of "
            "its own (or give a multi-frame file of one of them)",
        )
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        missing = int(sum(round(steps[i] / median) - 1 for i in gaps))
        raise ImageReadError(
            where,
            f"about {missing} slice(s) are missing: the series steps by {median:g} mm but by "
            f"{steps[gaps[0]]:g} mm between {between(gaps[0])}"
            f"{f' ({gaps.size} gaps in all)' if gaps.size > 1 else ''}; {_RE_EXPORT}",
        )
    uneven = np.flatnonzero(np.abs(steps - median) > tolerance)
    line = positions[0] + np.outer(np.arange(len(positions)), positions[-1] - positions[0]) / (
        len(positions) - 1
    )
    drift = np.linalg.norm(positions - line, axis=1)
    if uneven.size or (drift > tolerance).any():
        where_uneven = (
            f"step between {between(uneven[0])} is {steps[uneven[0]]:g} mm"
            if uneven.size
            else f"slice {names[int(np.argmax(drift))]} lies {drift.max():.3g} mm off the line"
        )
        raise ImageReadError(
            where,
            f"the slices are not evenly spaced: the median step is {median:g} mm, but the "
            f"{where_uneven}; resample the series to even steps (e.g. a reformat on the "
            f"scanner), or {_RE_EXPORT}",
        )


def _series_headers(folder: Path) -> list[tuple[Path, Any]]:
    """``(file, header)`` of every image file of ``folder`` (pixel data not read), sorted by
    name; DICOMDIR and files without an image (reports, presentation states) are left out."""
    pydicom = import_pydicom(folder)
    found = []
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.name.upper() == "DICOMDIR" or not is_dicom_file(file):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several unrelated types for damaged files
            raise ImageReadError(
                folder, f"{file.name}: the DICOM header is damaged ({exc})"
            ) from exc
        if "Rows" in ds:
            found.append((file, ds))
    if not found:
        raise ImageReadError(
            folder, "the folder holds no DICOM image file; point at the folder of one series"
        )
    by_series: dict[str, int] = {}
    for _, ds in found:
        uid = str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        by_series[uid] = by_series.get(uid, 0) + 1
    if len(by_series) > 1:
        listed = ", ".join(
            f"{uid} ({n} file(s))" for uid, n in list(by_series.items())[:MAX_LISTED]
        )
        more = f" and {len(by_series) - MAX_LISTED} more" if len(by_series) > MAX_LISTED else ""
        raise ImageReadError(
            folder,
            f"the folder holds {len(by_series)} DICOM series: {listed}{more}; a volume is one "
            "series: move each series into a folder of its own",
        )
    return found


def _check_grayscale(where: Path, ds) -> None:
    photometric = photometric_of(ds)
    if photometric not in MONOCHROME:
        raise ImageReadError(
            where,
            f"its photometric interpretation is {photometric}: a volume is read in grayscale "
            "(MONOCHROME1/2); convert the series, or read its files as 2D colour images",
        )


def _series_geometry(folder: Path) -> tuple[list[Path], Any, np.ndarray]:
    """The files of the series in ``folder`` in slice-position order, the central slice's
    header, and the stack's affine; only headers are read."""
    found = _series_headers(folder)
    multi_frame = [file.name for file, ds in found if frame_count(ds) > 1]
    if multi_frame:
        raise ImageReadError(
            folder,
            f"{multi_frame[0]} is a multi-frame file: a series folder holds one slice per file; "
            "give a multi-frame file by its own path",
        )
    slices = []
    for file, ds in found:
        geometry = _geometry(
            ds.get("ImagePositionPatient"),
            ds.get("ImageOrientationPatient"),
            ds.get("PixelSpacing"),
            _matrix(ds),
        )
        if geometry is None:
            raise ImageReadError(
                folder,
                f"{file.name} lacks a valid Image Position/Orientation (Patient) or Pixel "
                "Spacing, so its place in the volume is unknown (a projection radiograph or a "
                "secondary capture is not a cross-sectional series)",
            )
        slices.append(geometry)
    order, affine = stack_affine(folder, slices, [file.name for file, _ in found])
    files = [found[i][0] for i in order]
    central = found[order[len(order) // 2]][1]
    _check_grayscale(folder, central)
    return files, central, affine


def read_series(folder: Path) -> DicomStack:
    """The series in ``folder`` as modality-LUT values ordered by slice position."""
    files, _, affine = _series_geometry(folder)
    decoded = [decode_frame(file, "first", file_voi=False) for file in files]
    central = decoded[len(decoded) // 2]
    values = np.stack([np.asarray(d.values, dtype=np.float32) for d in decoded])
    return DicomStack(values, affine, central.ds, central.header)


def _frame_item(ds, index: int, sequence: str):
    """Item 0 of functional-group ``sequence`` for frame ``index`` (its own over the shared)."""
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        group = groups[index if len(groups) > 1 else 0] if groups else None
        if group is not None and group.get(sequence):
            return group.get(sequence)[0]
    return None


def _frame_geometries(file: Path, ds) -> list[SliceGeometry]:
    """Where each frame of a multi-frame file lies (see the module docstring)."""
    frames = frame_count(ds)
    matrix = _matrix(ds)
    if ds.get("PerFrameFunctionalGroupsSequence"):
        found = []
        for i in range(frames):
            plane = _frame_item(ds, i, "PlanePositionSequence")
            orientation = _frame_item(ds, i, "PlaneOrientationSequence")
            measures = _frame_item(ds, i, "PixelMeasuresSequence")
            found.append(
                _geometry(
                    plane.get("ImagePositionPatient") if plane else None,
                    orientation.get("ImageOrientationPatient") if orientation else None,
                    measures.get("PixelSpacing") if measures else None,
                    matrix,
                )
            )
    else:
        first = _geometry(
            ds.get("ImagePositionPatient"),
            ds.get("ImageOrientationPatient"),
            ds.get("PixelSpacing"),
            matrix,
        )
        offsets = ds.get("GridFrameOffsetVector")
        offsets = _floats(offsets, frames) if offsets is not None and first is not None else None
        found = [None] * frames
        if offsets is not None:
            # PS3.3 C.8.8.3.2: offsets along the normal, relative to the first frame's position.
            found = [
                SliceGeometry(
                    first.position + (offset - offsets[0]) * first.normal,
                    first.row,
                    first.column,
                    first.pixel_spacing,
                    matrix,
                )
                for offset in offsets
            ]
    if any(geometry is None for geometry in found):
        raise ImageReadError(
            file,
            "the multi-frame file does not say where its frames lie (no Plane Position/"
            "Orientation and Pixel Measures functional groups, nor Image Position/Orientation "
            "(Patient) with a Grid Frame Offset Vector): it is a cine or a stack of images, not "
            "a volume",
        )
    return found


def _multi_frame_geometry(file: Path):
    """``(data set without pixels, frame order, affine)`` of a multi-frame file."""
    pydicom = import_pydicom(file)
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:
        raise ImageReadError(file, f"the DICOM header is damaged ({exc})") from exc
    if "Rows" not in ds:
        raise ImageReadError(file, "the DICOM file holds no image (no Rows/Columns)")
    frames = frame_count(ds)
    if frames < 2:
        raise ImageReadError(
            file,
            "it is a single DICOM image, not a volume: point at the folder holding the whole "
            "series (or at a multi-frame file), or read it as a 2D image (imgpath)",
        )
    geometries = _frame_geometries(file, ds)
    order, affine = stack_affine(file, geometries, [f"frame {i + 1}" for i in range(frames)])
    _check_grayscale(file, ds)
    return ds, order, affine


def read_multi_frame(file: Path) -> DicomStack:
    """A multi-frame file as modality-LUT values ordered by frame position."""
    pydicom = import_pydicom(file)
    from pydicom.pixels import apply_modality_lut

    _, order, affine = _multi_frame_geometry(file)
    problem = dicom_header_problem(file)  # a mask, a missing decoder, a file cut short
    if problem is not None:
        raise ImageReadError(file, problem)
    try:
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array
    except Exception as exc:  # damaged stream, decoder failure
        raise ImageReadError(
            file, f"the DICOM pixel data cannot be decoded ({exc}); re-export the file"
        ) from exc
    values = np.stack(
        [np.asarray(apply_modality_lut(pixels[i], frame_header(ds, i)), np.float32) for i in order]
    )
    return DicomStack(values, affine, ds, frame_header(ds, int(order[len(order) // 2])))


def central_header(path: Path) -> tuple[Any, Any]:
    """``(data set, header)`` of the central slice of a series folder or multi-frame file, from
    the headers only: what :func:`read_series` / :func:`read_multi_frame` window the volume by
    (``header``: that frame's, for a multi-frame file)."""
    if path.is_dir():
        _, ds, _ = _series_geometry(path)
        return ds, frame_header(ds, 0)
    ds, order, _ = _multi_frame_geometry(path)
    return ds, frame_header(ds, int(order[len(order) // 2]))


def dicom_volume_problem(path: Path) -> str | None:
    """What stops the series folder or multi-frame file ``path`` from being read as a volume,
    from the headers only (and each file's pixel data measured against its header); or None."""
    try:
        if path.is_dir():
            files, _, _ = _series_geometry(path)
        else:
            _multi_frame_geometry(path)
            files = [path]
    except ImageReadError as problem:
        return problem.reason
    for file in files:
        problem = dicom_header_problem(file)
        if problem is not None:
            return f"{file.name}: {problem}" if path.is_dir() else problem
    return None
