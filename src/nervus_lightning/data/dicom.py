"""DICOM files as a radiology viewer shows them: pixel data -> display values in ``[0, 1]``.

This module owns everything DICOM-specific between a ``.dcm`` file and the float array that
:func:`nervus_lightning.data.images.read_image` turns into a tensor:

1. **Decoding** with pydicom (>= 3.0). Compressed transfer syntaxes (JPEG baseline/extended/
   lossless, JPEG-LS, JPEG 2000, RLE) need a decoder plug-in; the ``dicom`` extra
   (``pip install "nervus-lightning[dicom]"``) installs pylibjpeg and its plug-ins, which cover all
   of them. :func:`dicom_header_problem` tells, from the header alone, whether a file can be
   decoded here, so a missing plug-in is reported before training.
2. **Frame** (``data.frame``) of a multi-frame file: ``middle`` (default: the central slice or
   phase, the most representative one of a stack), ``first``, or ``mean`` (the mean of the
   modality-LUT output over all frames, i.e. an average-intensity projection, then windowed).
3. **Modality LUT**: pydicom's :func:`~pydicom.pixels.apply_modality_lut` (Rescale Slope/Intercept
   or a Modality LUT Sequence), giving physical values such as Hounsfield units.
4. **VOI LUT / window** (``data.window``), pydicom's :func:`~pydicom.pixels.apply_voi_lut`:

   * ``auto`` (default): the file's own VOI LUT Sequence or first Window Center/Width, as a
     viewer opens the image; a file without either is shown at its full range (as ``none``);
   * ``[center, width]``: a user window in modality units (e.g. ``[-600, 1500]``, a CT lung
     window), applied with the DICOM ``LINEAR`` function, replacing the file's own VOI;
   * ``none``: no window, the full range that the stored bits allow after the modality LUT.

   Either way the result is scaled to ``[0, 1]`` by the fixed output range of that step (the range
   pydicom's windowing maps onto: the stored-bits range after the modality LUT; for a VOI LUT
   Sequence ``0 .. 2**bits - 1`` of its descriptor), never by an image's own minimum and maximum,
   so every file of a series is scaled alike.
5. **MONOCHROME1** is inverted (``1 - x``) so that dense tissue is bright, as in MONOCHROME2.

Enhanced multi-frame files (Enhanced CT/MR, ...) keep Rescale Slope/Intercept and the window in
functional groups rather than at the top level, where pydicom's LUT functions look; the values of
the chosen frame (its own group over the shared one; for ``mean``, each frame's rescale and the
central frame's window) are handed to those functions.

Colour files (RGB, or YBR which pydicom converts to RGB) are scaled by ``2**BitsStored - 1``;
windows do not apply to them. The settings are part of a model's preprocessing contract and are
stored in its schema (:class:`~nervus_lightning.data.schema.DataSchema`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.data.schema import NervusInputError

__all__ = [
    "DEFAULT_FRAME",
    "DEFAULT_WINDOW",
    "DICOM_EXTRA_HINT",
    "FRAME_CHOICES",
    "Window",
    "dicom_header_problem",
    "parse_frame",
    "parse_window",
    "read_dicom",
]

#: ``data.window``: ``"auto"``, ``"none"``, or ``(center, width)`` in modality units.
Window = str | tuple[float, float]

DEFAULT_WINDOW: Window = "auto"
FRAME_CHOICES = ("middle", "first", "mean")
DEFAULT_FRAME = "middle"
DICOM_EXTRA_HINT = 'pip install "nervus-lightning[dicom]"'

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def parse_window(value: Any) -> Window:
    """``data.window`` checked: ``"auto"``, ``"none"`` or a ``(center, width)`` pair.

    Raises:
        NervusInputError: anything else, or a width below 1 (DICOM's LINEAR window needs >= 1).
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "none"):
            return text
    elif value is None:
        return "none"
    elif isinstance(value, Sequence) and len(value) == 2:
        try:
            center, width = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            pass
        else:
            if np.isfinite(center) and np.isfinite(width) and width >= 1:
                return (center, width)
            raise NervusInputError(
                f"data.window={list(value)}: the width must be a number >= 1 (DICOM's LINEAR "
                "window), e.g. data.window=[-600,1500] for a CT lung window."
            )
    raise NervusInputError(
        f"data.window must be auto (the file's own window, else the full range), none (the "
        f"full range) or [center,width] in modality units (e.g. [-600,1500] for a CT lung "
        f"window), got {value!r}."
    )


def parse_frame(value: Any) -> str:
    """``data.frame`` checked: one of :data:`FRAME_CHOICES`."""
    text = str(value).strip().lower()
    if text in FRAME_CHOICES:
        return text
    raise NervusInputError(
        f"data.frame must be one of {', '.join(FRAME_CHOICES)} (which frame of a multi-frame "
        f"DICOM file is used), got {value!r}."
    )


def import_pydicom(file: Path):
    """pydicom >= 3.0, or an ImageReadError telling how to install it."""
    from nervus_lightning.data.images import ImageReadError

    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (pydicom >= 3.0)
    except ImportError:
        raise ImageReadError(
            file, f"this is a DICOM file; install the DICOM extra ({DICOM_EXTRA_HINT}) to read it"
        ) from None
    return pydicom


def _transfer_syntax(ds) -> Any:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _decoder_problem(ds) -> str | None:
    """Why the pixel data of ``ds`` cannot be decoded here, from the header only; or None."""
    from pydicom.pixels import get_decoder

    uid = _transfer_syntax(ds)
    if uid is None:
        return None  # pydicom then assumes an uncompressed syntax
    name = getattr(uid, "name", str(uid))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (
            f"its transfer syntax {name} ({uid}) cannot be decoded by pydicom; convert the file "
            "to an uncompressed or JPEG/JPEG 2000/RLE DICOM, or to PNG"
        )
    if decoder.is_available:
        return None
    return (
        f"its pixel data are compressed ({name}, transfer syntax {uid}) and no decoder for it is "
        f"installed; install the DICOM extra: {DICOM_EXTRA_HINT} (pylibjpeg and its plug-ins)"
    )


def dicom_header_problem(file: Path) -> str | None:
    """What stops ``file`` from being read as an image, from its header alone; None if fine."""
    from nervus_lightning.data.images import ImageReadError

    try:
        pydicom = import_pydicom(file)
    except ImageReadError as missing:
        return missing.reason
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several unrelated types for damaged files
        return f"the DICOM header is damaged ({exc})"
    if "Rows" not in ds or "Columns" not in ds:
        return "the DICOM file holds no image (no Rows/Columns); is it a report or a plan?"
    return _decoder_problem(ds)


def read_dicom(
    file: str | os.PathLike, *, window: Window = DEFAULT_WINDOW, frame: str = DEFAULT_FRAME
) -> np.ndarray:
    """Decode a DICOM file as ``H x W`` (gray) or ``H x W x 3`` (RGB) float32 in ``[0, 1]``.

    The steps and the meaning of ``window`` and ``frame`` are in the module docstring.

    Raises:
        ImageReadError: pydicom missing, no decoder for the transfer syntax, damaged pixel data,
            or a photometric interpretation other than MONOCHROME1/2, RGB or YBR.
    """
    from nervus_lightning.data.images import ImageReadError

    file = Path(file)
    pydicom = import_pydicom(file)
    from pydicom.pixels import apply_modality_lut, iter_pixels, pixel_array

    try:
        ds = pydicom.dcmread(file)
    except Exception as exc:
        raise ImageReadError(file, f"the DICOM file is damaged ({exc})") from exc
    problem = _decoder_problem(ds)
    if problem is not None:
        raise ImageReadError(file, problem)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    monochrome = photometric in _MONOCHROME
    try:
        if frames > 1 and frame == "mean":
            total = None
            for index, pixels in enumerate(iter_pixels(ds)):
                header = _frame_header(ds, index)
                values = apply_modality_lut(pixels, header) if monochrome else pixels
                values = values.astype(np.float64)
                total = values if total is None else total + values
            values = total / frames
            header = _frame_header(ds, frames // 2)  # the window of the central frame
            if monochrome and _uses_voi_lut_sequence(header, window):
                # A LUT is indexed by integers: the mean falls back onto the LUT's input grid.
                values = np.rint(values).astype(np.int64)
        else:
            index = {"first": 0, "middle": frames // 2}[frame] if frames > 1 else 0
            header = _frame_header(ds, index)
            pixels = pixel_array(ds, index=index) if frames > 1 else ds.pixel_array
            values = apply_modality_lut(pixels, header) if monochrome else pixels
    except ImageReadError:
        raise
    except Exception as exc:  # missing pixel data, damaged stream, decoder failure
        raise ImageReadError(
            file,
            f"the DICOM pixel data cannot be decoded ({exc}); re-export the file, convert it "
            "to PNG, or set its row's split to 'exclude'",
        ) from exc
    if monochrome:
        return _display_values(values, header, window, photometric == "MONOCHROME1")
    if values.ndim == 3 and values.shape[-1] == 3:  # pydicom converts YBR to RGB when decoding
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
        return (values.astype(np.float64) / (2.0**bits - 1)).clip(0.0, 1.0).astype(np.float32)
    raise ImageReadError(
        file,
        f"DICOM photometric interpretation '{photometric}' is not supported; convert the file "
        "to MONOCHROME2 or RGB",
    )


# What the modality and VOI LUT steps read from a header.
_LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
# Where an enhanced multi-frame file (Enhanced CT/MR/XA, ...) keeps them instead, per frame or
# shared by all frames (PS3.3 C.7.6.16): pydicom's LUT functions read the top level only.
_FUNCTIONAL_GROUPS = (
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
)


def _frame_header(ds, index: int):
    """``ds``, or for an enhanced multi-frame file a header with frame ``index``'s LUT values.

    Shared functional groups apply to every frame; a frame's own group overrides them.
    """
    from pydicom.dataset import Dataset

    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [shared[0]] if shared else []
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    if not groups:
        return ds
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # the byte order of OW lookup tables
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    for group in groups:
        for sequence, keywords in _FUNCTIONAL_GROUPS:
            items = group.get(sequence)
            if items:
                for keyword in keywords:
                    if keyword in items[0]:
                        setattr(view, keyword, items[0][keyword].value)
    return view


def _has_voi_lut_sequence(ds) -> bool:
    # The test pydicom's apply_voi_lut uses to decide that a VOI LUT Sequence is usable.
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def _has_window(ds) -> bool:
    return None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))


def _uses_voi_lut_sequence(ds, window: Window) -> bool:
    return window == "auto" and _has_voi_lut_sequence(ds)


def _modality_output_range(ds) -> tuple[float, float]:
    """Values of the modality-LUT output that the stored bits allow, as ``(at min, at max)``.

    The same range pydicom's ``apply_windowing`` maps a window onto (PS3.3 C.11.2.1.2): the
    Modality LUT's ``0 .. 2**bits - 1``, else the stored-bits range after Rescale Slope/Intercept.
    """
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0**bits - 1
    stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2.0 ** (stored - 1)), 2.0 ** (stored - 1) - 1
    else:
        low, high = 0.0, 2.0**stored - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _window_view(ds, center: float, width: float):
    """The header elements pydicom's windowing reads, with the user's window in place."""
    from pydicom.dataset import Dataset

    view = Dataset()
    for keyword in (
        "PhotometricInterpretation",
        "BitsStored",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "ModalityLUTSequence",
    ):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    view.WindowCenter = center
    view.WindowWidth = width
    return view


def _display_values(values: np.ndarray, ds, window: Window, monochrome1: bool) -> np.ndarray:
    """Modality-LUT output -> VOI LUT / window -> ``[0, 1]`` -> MONOCHROME1 inverted."""
    from pydicom.pixels import apply_voi_lut

    if isinstance(window, tuple):
        view = _window_view(ds, *window)
        shown = apply_voi_lut(values, view)
        low, high = _modality_output_range(view)
    elif window == "auto" and _has_voi_lut_sequence(ds):
        shown = apply_voi_lut(values, ds)
        low, high = 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif window == "auto" and _has_window(ds):
        shown = apply_voi_lut(values, ds)
        low, high = _modality_output_range(ds)
    else:  # none, or auto without a VOI in the file: the full range, brighter = higher value
        shown = values
        low, high = sorted(_modality_output_range(ds))
    # In place on one float64 array (the LUT output, or a converted copy; it is not used
    # elsewhere): a 2048 x 2048 radiograph would otherwise allocate four.
    scaled = np.asarray(shown, dtype=np.float64)
    scaled -= low
    scaled /= high - low
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if monochrome1:
        np.subtract(1.0, scaled, out=scaled)
    return scaled.astype(np.float32)
