"""DICOM files as a radiology viewer shows them: pixel data -> display values in ``[0, 1]``.

This module owns everything DICOM-specific between a ``.dcm`` file and the float array that
:func:`nervus_lightning.data.images.read_image` turns into a tensor:

1. **Decoding** with pydicom (>= 3.0). Compressed transfer syntaxes (JPEG baseline/extended/
   lossless, JPEG-LS, JPEG 2000, RLE) need a decoder plug-in; the ``dicom`` extra
   (``pip install "nervus-lightning[dicom]"``) installs pylibjpeg and its plug-ins, which cover all
   of them. :func:`dicom_header_problem` tells, without decoding, whether a file can be
   decoded here, so a missing plug-in, pixel data cut short (measured against the header), a
   one-bit segmentation or mask (not an image) or an unsupported photometric interpretation is
   reported before training.
2. **Frame** (``data.frame``) of a multi-frame file: ``middle`` (default: the central slice or
   phase, the most representative one of a stack), ``first``, or ``mean`` (the mean of the
   modality-LUT output over all frames, i.e. an average-intensity projection, then windowed).
3. **Modality LUT**: pydicom's :func:`~pydicom.pixels.apply_modality_lut` (Rescale Slope/Intercept
   or a Modality LUT Sequence), giving physical values such as Hounsfield units.
4. **VOI LUT / window** (``data.window``), pydicom's :func:`~pydicom.pixels.apply_voi_lut`:

   * ``auto`` (default): the file's own VOI LUT Sequence or first Window Center/Width, as a
     viewer opens the image; a grayscale file without either gets the data set's window for
     its ``Modality`` (:class:`AutoWindow`), chosen once by :func:`choose_auto_window` from the
     0.5th-99.5th percentiles of the training files' modality-LUT values and stored with the
     model; without one (plain ``auto``, older models, a modality not seen in training) it is
     shown at its full range (as ``none``);
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
PALETTE COLOR files are turned into RGB by pydicom's :func:`~pydicom.pixels.apply_color_lut`
and scaled by ``2**bits - 1``, ``bits`` being their palette's entry size (its descriptor's third
value). Windows do not apply to colour files. The settings are part of a model's preprocessing
contract and are stored in its schema (:class:`~nervus_lightning.data.schema.DataSchema`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.errors import ImageReadError, NervusInputError

__all__ = [
    "AUTO_WINDOW_PERCENTILES",
    "DEFAULT_FRAME",
    "DEFAULT_WINDOW",
    "DICOM_EXTRA_HINT",
    "FRAME_CHOICES",
    "AutoWindow",
    "AutoWindowChoice",
    "Window",
    "choose_auto_window",
    "dicom_header_problem",
    "is_dicom_file",
    "parse_frame",
    "parse_window",
    "read_dicom",
    "window_key",
]

FRAME_CHOICES = ("middle", "first", "mean")
DEFAULT_FRAME = "middle"
DICOM_EXTRA_HINT = 'pip install "nervus-lightning[dicom]"'
#: Percentiles of the training files' modality values that bound the data set's window.
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
#: At most this many training files (drawn with a fixed seed) are decoded to choose it, and at
#: most this many values of each are pooled.
AUTO_WINDOW_MAX_FILES = 200
_AUTO_WINDOW_MAX_VALUES = 65_536

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PALETTE = "PALETTE COLOR"
# Decoded by pydicom to RGB (YBR) or through the palette here; anything else is refused.
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", _PALETTE)
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


@dataclass(frozen=True)
class AutoWindow:
    """``data.window=auto`` with the data set's windows for files that have none of their own.

    A file with a VOI LUT Sequence or Window Center/Width is shown with it, as under ``auto``;
    a grayscale file without either gets the window of its ``Modality`` (chosen on the training
    images by :func:`choose_auto_window`), or, for a modality not seen in training, its full
    range as under plain ``auto``.

    Attributes:
        by_modality: ``(modality, center, width)`` triples, sorted by modality (``""`` stands
            for files without a Modality element).
    """

    by_modality: tuple[tuple[str, float, float], ...]

    @classmethod
    def from_json(cls, mapping: Mapping[str, Sequence[float]]) -> AutoWindow:
        """From the schema's ``{modality: [center, width]}``."""
        return cls(tuple(sorted((str(m), float(c), float(w)) for m, (c, w) in mapping.items())))

    def to_json(self) -> dict[str, list[float]]:
        return {modality: [center, width] for modality, center, width in self.by_modality}

    def for_modality(self, modality: str) -> tuple[float, float] | None:
        for name, center, width in self.by_modality:
            if name == modality:
                return center, width
        return None

    def describe(self) -> str:
        """``CT: center 40 width 400; MR: ...`` for messages and the preview."""
        return "; ".join(
            f"{name or '(no Modality)'}: center {center:g} width {width:g}"
            for name, center, width in self.by_modality
        )


#: ``data.window``: ``"auto"``, ``"none"``, ``(center, width)`` in modality units, or ``auto``
#: with the data set's windows (:class:`AutoWindow`) once they are chosen.
Window = str | tuple[float, float] | AutoWindow

DEFAULT_WINDOW: Window = "auto"


def window_key(window: Window) -> str | list[float] | dict[str, Any]:
    """``window`` as JSON (for cache keys and messages)."""
    if isinstance(window, AutoWindow):
        return {"auto": window.to_json()}
    return list(window) if isinstance(window, tuple) else window


def is_dicom_file(file: Path) -> bool:
    """A ``.dcm``/``.dicom`` file, or any file with the ``DICM`` preamble."""
    return file.suffix.lower() in _DICOM_SUFFIXES or _has_dicom_preamble(file)


def _has_dicom_preamble(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


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
        f"data.window must be auto (the file's own window, else one per modality chosen on the "
        f"training images), none (the full range) or [center,width] in modality units (e.g. "
        f"[-600,1500] for a CT lung window), got {value!r}."
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
    """What stops ``file`` from being read as an image, without decoding it; None if fine.

    Besides the header (an image, not a mask; a supported photometric interpretation; a
    decoder for the transfer syntax), the pixel data are measured against it: uncompressed
    pixel data must hold Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8
    bytes, compressed pixel data at least one fragment per frame. So a file cut short in a copy
    is found before training. Uncompressed pixel data are not read (their length is in the
    header); compressed ones are scanned by pydicom for their end, and read once to count their
    fragments when there are several frames.
    """
    try:
        pydicom = import_pydicom(file)
    except ImageReadError as missing:
        return missing.reason
    try:
        # Values longer than defer_size are left in the file, with their length and position.
        ds = pydicom.dcmread(file, defer_size=_DEFER_BYTES)
    except Exception as exc:  # pydicom raises several unrelated types for damaged files
        return f"the DICOM header is damaged ({exc})"
    if len(ds) == 0:  # pydicom keeps nothing of a data set that ends inside an element
        return f"the file holds no DICOM data elements: it is truncated or empty; {_RECOPY}"
    return _image_problem(ds) or _pixel_data_problem(ds, file)


_DEFER_BYTES = 1024
_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_RECOPY = "copy the file again (or re-export it from the PACS), or set its row's split to 'exclude'"


def _image_problem(ds) -> str | None:
    """What in the header stops ``ds`` from being an image input here; None if fine."""
    if "Rows" not in ds or "Columns" not in ds:
        return "the DICOM file holds no image (no Rows/Columns); is it a report or a plan?"
    allocated = int(ds.get("BitsAllocated", 8) or 8)
    stored = int(ds.get("BitsStored", allocated) or allocated)
    if 1 in (allocated, stored):
        what = "a DICOM Segmentation" if ds.get("Modality") == "SEG" else "a binary mask"
        return (
            f"it has one bit per pixel (BitsAllocated {allocated}, BitsStored {stored}): it is "
            f"{what}, not an image. A mask is not an image input; point imgpath at the image it "
            "was drawn on, or set its row's split to 'exclude'"
        )
    photometric = _photometric(ds)
    if photometric not in _MONOCHROME and photometric not in _COLOUR:
        return (
            f"DICOM photometric interpretation '{photometric}' is not supported; convert the "
            "file to MONOCHROME2 or RGB (or to PNG)"
        )
    return _decoder_problem(ds)


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def _pixel_data_problem(ds, file: Path) -> str | None:
    """Whether the pixel data of ``ds`` (read with ``defer_size``) are all in ``file``."""
    from pydicom.dataelem import RawDataElement
    from pydicom.encaps import generate_fragments

    element = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    if element is None:
        # pydicom drops compressed pixel data whose end (sequence delimiter) is missing.
        return f"the file holds no pixel data: it is probably truncated; {_RECOPY}"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    uid = _transfer_syntax(ds)
    if uid is not None and uid.is_encapsulated:
        if frames == 1:  # pydicom found the end of the fragments, or it would have kept nothing
            return None
        try:
            fragments = sum(1 for _ in generate_fragments(ds.PixelData)) - 1  # less the offsets
        except Exception as exc:  # a damaged item tag or length
            return f"the compressed pixel data are damaged ({exc}); {_RECOPY}"
        if fragments < frames:
            return (
                f"its compressed pixel data hold {fragments} fragment(s) for {frames} frame(s): "
                f"the file is truncated; {_RECOPY}"
            )
        return None
    deferred = isinstance(element, RawDataElement) and element.value is None
    if deferred and element.length != _UNDEFINED_LENGTH:
        held = min(element.length, max(file.stat().st_size - element.value_tell, 0))
    else:
        held = len(element.value or b"")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    pixels = int(ds.Rows) * int(ds.Columns) * frames
    if _photometric(ds) == "YBR_FULL_422":  # two values per pixel: chroma is subsampled
        needed = -(-pixels * 2 * bits // 8)
    else:
        needed = -(-pixels * samples * bits // 8)
    if held < needed:
        return (
            f"its pixel data are truncated: {held} bytes where the header ({ds.Rows} x "
            f"{ds.Columns} pixels, {samples} sample(s), {frames} frame(s), {bits} bits) asks for "
            f"{needed}; {_RECOPY}"
        )
    return None


@dataclass
class _Decoded:
    """One image of a DICOM file before display scaling: ``values`` are the modality-LUT output
    (grayscale), RGB values (colour; a palette already applied) and ``header`` holds the LUT
    elements of the chosen frame."""

    ds: Any
    header: Any
    values: np.ndarray
    photometric: str
    colour_bits: int | None = None


def _decode(file: Path, frame: str, window: Window = DEFAULT_WINDOW) -> _Decoded:
    """Read ``file`` and decode the frame chosen by ``frame`` (see the module docstring)."""
    pydicom = import_pydicom(file)
    from pydicom.pixels import apply_color_lut, apply_modality_lut, iter_pixels, pixel_array

    try:
        ds = pydicom.dcmread(file)
    except Exception as exc:
        raise ImageReadError(file, f"the DICOM file is damaged ({exc})") from exc
    problem = _image_problem(ds)
    if problem is not None:
        raise ImageReadError(file, problem)
    photometric = _photometric(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    monochrome = photometric in _MONOCHROME
    palette = photometric == _PALETTE

    def values_of(pixels, header):
        if monochrome:
            return apply_modality_lut(pixels, header)
        return apply_color_lut(pixels, ds) if palette else pixels

    try:
        if frames > 1 and frame == "mean":
            total = None
            for index, pixels in enumerate(iter_pixels(ds)):
                values = values_of(pixels, _frame_header(ds, index)).astype(np.float64)
                total = values if total is None else total + values
            values = total / frames
            header = _frame_header(ds, frames // 2)  # the window of the central frame
            if monochrome and _uses_voi_lut_sequence(header, _resolve(window, header, ds)):
                # A LUT is indexed by integers: the mean falls back onto the LUT's input grid.
                values = np.rint(values).astype(np.int64)
        else:
            index = {"first": 0, "middle": frames // 2}[frame] if frames > 1 else 0
            header = _frame_header(ds, index)
            pixels = pixel_array(ds, index=index) if frames > 1 else ds.pixel_array
            values = values_of(pixels, header)
    except ImageReadError:
        raise
    except Exception as exc:  # missing pixel data, damaged stream, decoder failure
        raise ImageReadError(
            file,
            f"the DICOM pixel data cannot be decoded ({exc}); re-export the file, convert it "
            "to PNG, or set its row's split to 'exclude'",
        ) from exc
    if palette:  # the palette's entries have the bit depth of its descriptor
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    return _Decoded(ds, header, values, photometric, None if monochrome else bits)


def read_dicom(
    file: str | os.PathLike, *, window: Window = DEFAULT_WINDOW, frame: str = DEFAULT_FRAME
) -> np.ndarray:
    """Decode a DICOM file as ``H x W`` (gray) or ``H x W x 3`` (RGB) float32 in ``[0, 1]``.

    The steps and the meaning of ``window`` and ``frame`` are in the module docstring.

    Raises:
        ImageReadError: pydicom missing, no decoder for the transfer syntax, damaged pixel data,
            one bit per pixel (a mask), or a photometric interpretation other than
            MONOCHROME1/2, RGB, YBR or PALETTE COLOR.
    """
    file = Path(file)
    decoded = _decode(file, frame, window)
    values, header = decoded.values, decoded.header
    if decoded.colour_bits is None:
        shown = _resolve(window, header, decoded.ds)
        return _display_values(values, header, shown, decoded.photometric == "MONOCHROME1")
    if values.ndim == 3 and values.shape[-1] == 3:  # pydicom converts YBR to RGB when decoding
        scale = 2.0**decoded.colour_bits - 1
        return (values.astype(np.float64) / scale).clip(0.0, 1.0).astype(np.float32)
    raise ImageReadError(
        file,
        f"DICOM photometric interpretation '{decoded.photometric}' gave pixel data of shape "
        f"{values.shape}, not rows x columns x 3; convert the file to MONOCHROME2 or RGB",
    )


def _resolve(window: Window, header, ds) -> Window:
    """The window of one file: an :class:`AutoWindow` becomes ``auto`` for a file with its own
    VOI LUT or window, else its modality's ``(center, width)`` (``auto`` when there is none)."""
    if not isinstance(window, AutoWindow):
        return window
    if _has_voi_lut_sequence(header) or _has_window(header):
        return "auto"
    return window.for_modality(_modality(ds)) or "auto"


def _modality(ds) -> str:
    return str(ds.get("Modality", "") or "").strip().upper()


@dataclass(frozen=True)
class AutoWindowChoice:
    """What :func:`choose_auto_window` found.

    Attributes:
        window: the data set's windows, or None when every grayscale file has its own.
        files: per modality, how many files without a window there were, and how many of them
            were decoded to choose its window.
        reason: one sentence for the log.
    """

    window: AutoWindow | None
    files: dict[str, tuple[int, int]]
    reason: str


def choose_auto_window(
    paths: Sequence[str | os.PathLike],
    frame: str = DEFAULT_FRAME,
    *,
    max_files: int = AUTO_WINDOW_MAX_FILES,
    seed: int = 0,
    max_workers: int | None = None,
) -> AutoWindowChoice:
    """One window per modality for the grayscale DICOM files of ``paths`` that have none.

    ``data.window=auto`` shows a file with its own VOI LUT or window through it; a file
    without either (many CT and MR exports) would otherwise be shown at the full range its
    stored bits allow, where the anatomy is a flat grey. Instead, the modality-LUT values (e.g.
    Hounsfield units) of such training files are pooled per ``Modality`` (at most
    ``max_files`` files per modality, drawn with ``seed``; at most 65,536 evenly spaced values
    of each) and the window spans their :data:`AUTO_WINDOW_PERCENTILES` (0.5th to 99.5th):
    one window for the whole data set, never one image's own minimum and maximum, so every
    file of a modality is scaled alike. It is an aggregate of many images' intensities.

    Files that are not DICOM, colour files and files with their own window are skipped.

    Raises:
        ImageReadError: a file that has to be decoded cannot be.
    """
    files = list(dict.fromkeys(Path(p) for p in paths))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        modalities = list(pool.map(lambda f: _windowless_modality(f, frame), files))
        by_modality: dict[str, list[Path]] = {}
        for file, modality in zip(files, modalities, strict=True):
            if modality is not None:
                by_modality.setdefault(modality, []).append(file)
        if not by_modality:
            return AutoWindowChoice(None, {}, "every grayscale DICOM file has its own window")
        rng = np.random.default_rng(seed)
        drawn = {
            modality: (
                group
                if len(group) <= max_files
                else [group[i] for i in sorted(rng.choice(len(group), max_files, replace=False))]
            )
            for modality, group in sorted(by_modality.items())
        }
        windows = []
        for modality, group in drawn.items():
            samples = list(pool.map(lambda f: _value_sample(f, frame), group))
            pooled = np.concatenate(samples)
            if pooled.size == 0:
                raise ImageReadError(group[0], "the DICOM image has no pixels")
            low, high = np.percentile(pooled, AUTO_WINDOW_PERCENTILES)
            width = max(float(high - low), 1.0)  # DICOM's LINEAR window needs a width >= 1
            windows.append((modality, float((low + high) / 2), width))
    window = AutoWindow(tuple(windows))
    counts = {m: (len(by_modality[m]), len(drawn[m])) for m in drawn}
    low_p, high_p = AUTO_WINDOW_PERCENTILES
    listed = "; ".join(
        f"{total} {m or '(no Modality)'} file(s)"
        + (f" ({used} drawn)" if used < total else "")
        + f" -> center {c:g} width {w:g}"
        for (m, c, w), (total, used) in zip(window.by_modality, counts.values(), strict=True)
    )
    reason = (
        f"training DICOM files without their own window are shown with one window per modality, "
        f"from the {low_p:g}th to {high_p:g}th percentiles of their modality-LUT values: {listed}"
    )
    return AutoWindowChoice(window, counts, reason)


def _windowless_modality(file: Path, frame: str) -> str | None:
    """The Modality of a grayscale DICOM file without its own VOI LUT or window; else None."""
    if not (file.is_file() and is_dicom_file(file)):
        return None
    pydicom = import_pydicom(file)
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:
        raise ImageReadError(file, f"the DICOM header is damaged ({exc})") from exc
    if _photometric(ds) not in _MONOCHROME or "Rows" not in ds:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = {"first": 0, "middle": frames // 2, "mean": frames // 2}[frame]
    header = _frame_header(ds, index)
    if _has_voi_lut_sequence(header) or _has_window(header):
        return None
    return _modality(ds)


def _value_sample(file: Path, frame: str) -> np.ndarray:
    """At most 65,536 evenly spaced modality-LUT values of the chosen frame of ``file``."""
    values = np.asarray(_decode(file, frame, "none").values, dtype=np.float64).ravel()
    step = max(1, -(-values.size // _AUTO_WINDOW_MAX_VALUES))
    return values[::step]


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
