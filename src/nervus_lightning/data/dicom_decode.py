"""Reading DICOM files up to the modality LUT: recognising them, checking them without
decoding (:func:`dicom_header_problem`), and decoding the chosen frame (``data.frame``) to
modality-LUT values (grayscale) or RGB values (colour), with the LUT elements of that frame.

The display step (window, scaling to ``[0, 1]``) is :mod:`.dicom_window`'s; the whole pipeline
and its front door :func:`~nervus_lightning.data.dicom.read_dicom` are in :mod:`.dicom`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.errors import ImageReadError, NervusInputError

FRAME_CHOICES = ("middle", "first", "mean")
DEFAULT_FRAME = "middle"
DICOM_EXTRA_HINT = 'pip install "nervus-lightning[dicom]"'

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PALETTE = "PALETTE COLOR"
# Decoded by pydicom to RGB (YBR) or through the palette here; anything else is refused.
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", _PALETTE)
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


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
    photometric = photometric_of(ds)
    if photometric not in MONOCHROME and photometric not in _COLOUR:
        return (
            f"DICOM photometric interpretation '{photometric}' is not supported; convert the "
            "file to MONOCHROME2 or RGB (or to PNG)"
        )
    return _decoder_problem(ds)


def photometric_of(ds) -> str:
    """The file's Photometric Interpretation in upper case (MONOCHROME2 without one)."""
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
    if photometric_of(ds) == "YBR_FULL_422":  # two values per pixel: chroma is subsampled
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
class DecodedFrame:
    """One image of a DICOM file before display scaling: ``values`` are the modality-LUT output
    (grayscale), RGB values (colour; a palette already applied) and ``header`` holds the LUT
    elements of the chosen frame."""

    ds: Any
    header: Any
    values: np.ndarray
    photometric: str
    colour_bits: int | None = None


def decode_frame(file: Path, frame: str, file_voi: bool = True) -> DecodedFrame:
    """Read ``file`` and decode the frame chosen by ``frame`` (see :mod:`.dicom`).

    ``file_voi``: whether the file's own VOI LUT Sequence may be applied afterwards (window
    ``auto``, with or without the data set's windows); the ``mean`` of the frames is then
    rounded onto the LUT's integer input grid.
    """
    pydicom = import_pydicom(file)
    from pydicom.pixels import apply_color_lut, apply_modality_lut, iter_pixels, pixel_array

    try:
        ds = pydicom.dcmread(file)
    except Exception as exc:
        raise ImageReadError(file, f"the DICOM file is damaged ({exc})") from exc
    problem = _image_problem(ds)
    if problem is not None:
        raise ImageReadError(file, problem)
    photometric = photometric_of(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    monochrome = photometric in MONOCHROME
    palette = photometric == _PALETTE

    def values_of(pixels, header):
        if monochrome:
            return apply_modality_lut(pixels, header)
        return apply_color_lut(pixels, ds) if palette else pixels

    try:
        if frames > 1 and frame == "mean":
            total = None
            for index, pixels in enumerate(iter_pixels(ds)):
                values = values_of(pixels, frame_header(ds, index)).astype(np.float64)
                total = values if total is None else total + values
            values = total / frames
            header = frame_header(ds, frames // 2)  # the window of the central frame
            if monochrome and file_voi and has_voi_lut_sequence(header):
                # A LUT is indexed by integers: the mean falls back onto the LUT's input grid.
                values = np.rint(values).astype(np.int64)
        else:
            index = {"first": 0, "middle": frames // 2}[frame] if frames > 1 else 0
            header = frame_header(ds, index)
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
    return DecodedFrame(ds, header, values, photometric, None if monochrome else bits)


def modality_of(ds) -> str:
    """The file's ``Modality`` in upper case (``""`` without one)."""
    return str(ds.get("Modality", "") or "").strip().upper()


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


def frame_header(ds, index: int):
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


def has_voi_lut_sequence(ds) -> bool:
    """Whether the header holds a usable VOI LUT Sequence."""
    # The test pydicom's apply_voi_lut uses to decide that a VOI LUT Sequence is usable.
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def has_window(ds) -> bool:
    """Whether the header holds a Window Center and Width."""
    return None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))
