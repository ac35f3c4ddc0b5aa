"""Reading image files (radiographs) into float tensors, and checking them before training.

This module owns the step from a file on disk to a ``C x H x W`` float32 tensor in ``[0, 1]``:
decoding (PNG, JPEG, TIFF and other formats Pillow reads; DICOM when pydicom is installed),
scaling by the true bit depth so 12-bit radiographs stored in 16-bit files keep their full
contrast, and conversion to the number of channels the model expects. Resizing and augmentation
are not done here; they live in :mod:`nervus_lightning.data.transforms`.

:func:`check_image_files` lets the data module validate every file of a data set at once, before
any training starts, so that a bad file is reported with all the others instead of crashing an
epoch hours later. :func:`choose_bit_depth` decides the intensity scaling once for a whole data
set (from the training images), so that a dark image is scaled like the bright ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nervus_lightning.data.dicom import (
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    Window,
    dicom_header_problem,
    import_pydicom,
    is_dicom_file,
    read_dicom,
)
from nervus_lightning.errors import ImageReadError

__all__ = [
    "CANDIDATE_BIT_DEPTHS",
    "BitDepthChoice",
    "ImageReadError",
    "check_image_files",
    "choose_bit_depth",
    "read_image",
]

#: Bit depths tried, smallest first, when a wide (more than 8-bit) image does not declare its own.
CANDIDATE_BIT_DEPTHS: tuple[int, ...] = (8, 10, 12, 14, 16)

# ITU-R 601-2 luma weights, the ones Pillow uses for its RGB -> "L" conversion.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Pillow modes that hold one channel wider than 8 bits; they are scaled by the rule in read_image.
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_EIGHT_BIT_GRAY_MODES = frozenset({"L", "1"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(
    path: str | os.PathLike,
    in_channels: int,
    *,
    bit_depth: int | None = None,
    window: Window = DEFAULT_WINDOW,
    frame: str = DEFAULT_FRAME,
) -> torch.Tensor:
    """Read one image file as a float32 tensor of shape ``in_channels x H x W`` in ``[0, 1]``.

    Formats: anything Pillow decodes (PNG, JPEG, TIFF, BMP, ...; only the first frame of a
    multi-frame file), and DICOM (``.dcm``/``.dicom``, or any file with the ``DICM`` preamble)
    when pydicom is installed. A JPEG's EXIF orientation tag is applied.

    Intensity scaling, i.e. which value maps to 1.0:

    * 8-bit images (Pillow modes ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ...): 255, always.
    * Wider integer images (16-bit PNG/TIFF, Pillow modes ``I;16``, ``I;16B``, ``I``):
      ``2**b - 1`` where ``b`` is, in this order,

      1. ``bit_depth`` when given;
      2. the significant bits a PNG declares in its ``sBIT`` chunk, if the pixel values fit in
         them (the PNG standard asks writers to scale values up to 16 bits and record the
         original depth in ``sBIT``; values larger than ``2**sBIT - 1`` show the file did so,
         and the full 16 bits are used);
      3. otherwise the smallest of 8, 10, 12, 14 or 16 bits that holds the image's maximum,
         so a 12-bit radiograph (maximum <= 4095) is divided by 4095, not 65535.

      Rule 3 looks at one image at a time: a very dark 16-bit image could be taken for 12-bit.
      :class:`~nervus_lightning.data.datamodule.NervusDataModule` therefore always passes
      ``bit_depth``, chosen once per data set by :func:`choose_bit_depth` (``data.bit_depth``),
      so that every file of a data set is scaled alike.
    * Float images (Pillow mode ``F``): used as they are when already within ``[0, 1]``,
      otherwise scaled like wide integer images.
    * DICOM: as a viewer shows it, by :func:`nervus_lightning.data.dicom.read_dicom`: the
      modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), then the VOI LUT or
      window chosen by ``window``, scaled to ``[0, 1]`` by the fixed output range of that step,
      then ``MONOCHROME1`` inverted so that bright means dense; ``frame`` picks the frame of a
      multi-frame file.

    Channels: colour images are reduced to one channel with the ITU-R 601-2 luma weights
    (0.299 R + 0.587 G + 0.114 B, as Pillow's ``L`` conversion); alpha is dropped without
    compositing. One-channel images are repeated to give three channels.

    Args:
        path: the image file.
        in_channels: channels of the returned tensor, 1 or 3.
        bit_depth: for integer images wider than 8 bits (and float images outside ``[0, 1]``),
            the number of significant bits (1 to 32). Overrides the rule above; it has no
            effect on 8-bit images, float images within ``[0, 1]`` or DICOM files.
        window: DICOM only: ``"auto"`` (the file's VOI LUT or window, else the full range),
            an :class:`~nervus_lightning.data.dicom.AutoWindow` (``auto`` with the data set's
            window per modality for files without their own), ``"none"`` (the full range) or
            ``(center, width)`` in modality units.
        frame: DICOM only: ``"middle"``, ``"first"`` or ``"mean"`` frame of a multi-frame file.

    Raises:
        ImageReadError: the file is missing, cannot be decoded, or its values do not fit the
            scaling (negative values, values above ``bit_depth``).
        ValueError: ``in_channels`` or ``bit_depth`` is out of range.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if bit_depth is not None and not 1 <= bit_depth <= 32:
        raise ValueError(f"bit_depth must be between 1 and 32, got {bit_depth}")

    file = Path(path)
    if not file.is_file():
        raise ImageReadError(path, _missing_reason(file))

    if _is_dicom(file):
        array = read_dicom(file, window=window, frame=frame)
    else:
        try:
            array = _read_with_pillow(file, bit_depth)
        except UnidentifiedImageError:
            raise ImageReadError(
                path,
                "the file is not an image format that can be read (PNG, JPEG, TIFF, "
                "DICOM, ...); re-export it, or set its row's split to 'exclude'",
            ) from None

    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
    return _to_channels(image, in_channels).contiguous()


def check_image_files(
    paths: Sequence[str | os.PathLike], max_workers: int | None = None
) -> list[tuple[str, str]]:
    """Check that every file exists and has a readable image header, in parallel.

    Only the header is read (Pillow's ``Image.open`` without decoding the pixels), so ten
    thousand files take seconds. A DICOM file's pixel data are also measured against its header
    (:func:`~nervus_lightning.data.dicom.dicom_header_problem`), so a truncated DICOM file is
    caught here; a truncated PNG or JPEG is only reported by :func:`read_image` when it is
    loaded.

    Args:
        paths: the files to check.
        max_workers: threads to use; ``None`` lets :class:`ThreadPoolExecutor` choose.

    Returns:
        ``(path, reason)`` for each bad file, in the order of ``paths``; empty when all are good.
    """
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        reasons = list(pool.map(_header_problem, paths))
    return [(str(p), r) for p, r in zip(paths, reasons, strict=True) if r is not None]


@dataclass(frozen=True)
class BitDepthChoice:
    """The intensity scaling chosen for a data set by :func:`choose_bit_depth`.

    Attributes:
        bits: images wider than 8 bits are divided by ``2**bits - 1``.
        from_pixel_values: True when some images declared no depth in their header and their
            largest pixel value decided (a guess worth telling the user about).
        reason: one sentence saying how ``bits`` was chosen.
    """

    bits: int
    from_pixel_values: bool
    reason: str


def choose_bit_depth(
    paths: Sequence[str | os.PathLike], max_workers: int | None = None
) -> BitDepthChoice:
    """Choose one bit depth for every image of a data set, from its (training) images.

    Headers first: a PNG's ``sBIT`` chunk and a DICOM file's ``BitsStored`` declare the depth;
    8-bit images count as 8 bits. Wide images (16-bit PNG/TIFF, float TIFF outside ``[0, 1]``)
    that declare nothing are decoded, in parallel, and the smallest of
    :data:`CANDIDATE_BIT_DEPTHS` that holds the largest value seen among them is taken. The
    result is the largest of these depths, so no image of ``paths`` is above it.

    DICOM files are scaled by their own headers (:mod:`nervus_lightning.data.dicom`), whatever the
    bit depth: in a data set that mixes them with other images they are left out of the choice;
    in an all-DICOM data set their largest ``BitsStored`` is taken.

    Raises:
        ImageReadError: a file cannot be read, or its values do not fit in 16 bits.
    """
    others = [p for p in paths if not _is_dicom(Path(p))]
    if others:
        paths = others
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        headers = list(pool.map(_declared_depth, paths))
        undeclared = [p for p, (_, bits) in zip(paths, headers, strict=True) if bits is None]
        maxima = list(pool.map(_pixel_maximum, undeclared))
    declared = [bits for _, bits in headers if bits is not None]
    wide_declared = [bits for kind, bits in headers if kind != "8-bit" and bits is not None]
    seen = [(high, p) for high, p in zip(maxima, undeclared, strict=True) if high is not None]
    if not seen:
        bits = max(declared, default=8)
        if wide_declared:
            reason = f"the image headers (PNG sBIT / DICOM BitsStored) declare {bits} bits"
        else:
            reason = "all images are 8-bit"
        return BitDepthChoice(bits, False, reason)
    high, brightest = max(seen, key=lambda pair: pair[0])
    from_values = _smallest_depth_holding(high, Path(brightest))
    bits = max([*declared, from_values])
    reason = (
        f"{len(undeclared)} of {len(paths)} images wider than 8 bits declare no bit depth in "
        f"their header (no PNG sBIT chunk); their largest pixel value is {high:g} "
        f"('{brightest}'), which {from_values} bits hold"
    )
    if bits > from_values:
        reason += f"; other image headers declare {bits} bits"
    return BitDepthChoice(bits, True, reason)


def _declared_depth(path: str | os.PathLike) -> tuple[str, int | None]:
    """``(kind, bits)`` from the header only: kind is 8-bit, wide, float or dicom."""
    file = Path(path)
    if _is_dicom(file):
        pydicom = import_pydicom(file)
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several unrelated types for damaged files
            raise ImageReadError(file, f"the DICOM header is damaged ({exc})") from exc
        return "dicom", int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    mode = _with_pillow(file, lambda img: img.mode)
    if mode == "F":
        return "float", None
    if mode in _WIDE_GRAY_MODES:
        declared = _png_significant_bits(file)
        return "wide", declared if declared and 8 <= declared <= 16 else None
    return "8-bit", 8


def _pixel_maximum(path: str | os.PathLike) -> float | None:
    """Largest pixel value of a wide image; None for a float image already within [0, 1]."""
    file = Path(path)
    mode, values = _with_pillow(file, lambda img: (img.mode, np.asarray(img)))
    if values.size == 0:
        raise ImageReadError(file, "the image has no pixels")
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return None
    return high


def _with_pillow(file: Path, use):
    """``use(image)`` on the opened file, with decoding errors told as ImageReadError."""
    try:
        with Image.open(file) as img:
            return use(img)
    except UnidentifiedImageError:
        raise ImageReadError(
            file, "not an image format that can be read (PNG, JPEG, TIFF, DICOM, ...)"
        ) from None
    except FileNotFoundError:
        raise ImageReadError(file, _missing_reason(file)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(
            file,
            f"the image data are damaged or truncated ({exc}); re-export the file, or set its "
            "row's split to 'exclude'",
        ) from exc


def _smallest_depth_holding(high: float, file: Path) -> int:
    for bits in CANDIDATE_BIT_DEPTHS:
        if high <= 2.0**bits - 1:
            return bits
    raise ImageReadError(
        file,
        f"its maximum pixel value {high:g} does not fit in 16 bits; convert the images to "
        "16-bit (or fewer) unsigned integers",
    )


#: What a 2D run is told when a cell names a volume.
VOLUME_HINT = (
    "to train on volumes set data.volume_size=[D,H,W] (e.g. [64,128,128]) and a 3D extractor "
    "(model/extractor=small_cnn_3d, resnet18_3d or densenet121_3d)"
)


def _header_problem(path: str | os.PathLike) -> str | None:
    file = Path(path)
    if not file.is_file():
        return _missing_reason(file)
    if file.name.lower().endswith((".nii", ".nii.gz")):
        return f"a NIfTI volume, not a 2D image; {VOLUME_HINT}"
    try:
        if _is_dicom(file):
            return dicom_header_problem(file)
        with Image.open(file) as img:
            width, height = img.size
    except UnidentifiedImageError:
        return "not an image format that can be read (PNG, JPEG, TIFF, DICOM, ...)"
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow raises SyntaxError for some malformed headers.
        return f"the image header is damaged ({exc})"
    if width == 0 or height == 0:
        return f"the image is empty ({width} x {height} pixels)"
    return None


def _missing_reason(file: Path) -> str:
    if file.is_dir():
        return (
            "this is a folder, not an image file; check the image path column (a DICOM series "
            f"folder is a volume: {VOLUME_HINT})"
        )
    return (
        "file not found; check the path (relative paths are resolved against the CSV's folder) "
        "and that the image folder is mounted"
    )


def _read_with_pillow(file: Path, bit_depth: int | None) -> np.ndarray:
    """Decode with Pillow and return ``H x W`` or ``H x W x 3`` float32 scaled to ``[0, 1]``."""
    try:
        with Image.open(file) as img:
            img.load()
            # Cameras and phones store JPEGs unrotated with an EXIF orientation tag. (Pillow's TIFF
            # reader handles its own orientation tag, so TIFFs are left alone.)
            if img.format in ("JPEG", "MPO") and img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode in _WIDE_GRAY_MODES:
                values = np.asarray(img).astype(np.float64)
                declared = _png_significant_bits(file) if mode != "F" else None
                return (values / _wide_image_scale(file, values, bit_depth, declared, mode)).astype(
                    np.float32
                )
            if mode in _EIGHT_BIT_GRAY_MODES:
                gray = img.convert("L")
            elif mode in ("LA", "La"):
                gray = img.getchannel(0)
            else:
                gray = None
            if gray is not None:
                return np.asarray(gray, dtype=np.float32) / 255.0
            return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, ImageReadError):
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(
            file,
            f"the image data are damaged or truncated ({exc}); re-export the file, or set its "
            "row's split to 'exclude'",
        ) from exc


def _wide_image_scale(
    file: Path, values: np.ndarray, bit_depth: int | None, declared: int | None, mode: str
) -> float:
    """The value that maps to 1.0 for an image wider than 8 bits (rule in ``read_image``)."""
    if values.size == 0:
        raise ImageReadError(file, "the image has no pixels")
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return 1.0
    if low < 0:
        raise ImageReadError(
            file,
            f"the image has negative pixel values (minimum {low:g}); convert it to unsigned "
            "values before training",
        )
    if bit_depth is not None:
        limit = 2.0**bit_depth - 1
        if high > limit:
            if declared is not None and high > 2.0**declared - 1:
                raise ImageReadError(
                    file,
                    f"its maximum pixel value {high:g} is above {limit:g}, the largest value of "
                    f"the bit_depth={bit_depth} scaling used for this data set, although its PNG "
                    f"sBIT chunk declares {declared} significant bits: the writer scaled the "
                    "values up to 16 bits, as the PNG standard asks. Set data.bit_depth=16",
                )
            raise ImageReadError(
                file,
                f"its maximum pixel value {high:g} is above {limit:g}, the largest value of the "
                f"bit_depth={bit_depth} scaling used for this data set, so it cannot be scaled "
                "like the other images. When training, set data.bit_depth to the images' true "
                "depth (8, 10, 12, 14 or 16); when predicting, the depth is the trained model's: "
                f"convert the image to {bit_depth} bits, or set its row's split to 'exclude'",
            )
        return limit
    if declared is not None and high <= 2.0**declared - 1:
        return 2.0**declared - 1
    return 2.0 ** _smallest_depth_holding(high, file) - 1


def _png_significant_bits(file: Path) -> int | None:
    """The gray depth of a PNG's ``sBIT`` chunk, or None (Pillow does not expose this chunk)."""
    try:
        with open(file, "rb") as handle:
            if handle.read(8) != _PNG_SIGNATURE:
                return None
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if kind == b"sBIT":
                    data = handle.read(length)
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                    return None
                handle.seek(length + 4, os.SEEK_CUR)  # skip the data and the CRC
    except OSError:
        return None


def _is_dicom(file: Path) -> bool:
    return is_dicom_file(file)


def _to_channels(image: torch.Tensor, in_channels: int) -> torch.Tensor:
    channels = image.shape[0]
    if channels == in_channels:
        return image
    if channels == 1:
        return image.expand(in_channels, -1, -1)
    weights = torch.tensor(_LUMA_WEIGHTS, dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(dim=0, keepdim=True).clamp_(0.0, 1.0)
