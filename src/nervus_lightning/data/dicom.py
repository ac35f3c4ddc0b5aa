"""DICOM files as a radiology viewer shows them: pixel data -> display values in ``[0, 1]``.

This module and its two parts own everything DICOM-specific between a ``.dcm`` file and the
float array that :func:`nervus_lightning.data.images.read_image` turns into a tensor:
:mod:`.dicom_decode` (steps 1 to 3: recognising and checking a file, decoding a frame to
modality values) and :mod:`.dicom_window` (steps 4 and 5: the ``data.window`` setting, the data
set's windows per modality, the scaling to ``[0, 1]``); :func:`read_dicom` joins them, and every
public name of both stays importable from here.

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
from pathlib import Path

import numpy as np

from nervus_lightning.data.dicom_decode import (
    DEFAULT_FRAME,
    DICOM_EXTRA_HINT,
    FRAME_CHOICES,
    decode_frame,
    dicom_header_problem,
    import_pydicom,
    is_dicom_file,
    parse_frame,
)
from nervus_lightning.data.dicom_window import (
    AUTO_WINDOW_PERCENTILES,
    DEFAULT_WINDOW,
    AutoWindow,
    AutoWindowChoice,
    Window,
    choose_auto_window,
    display_values,
    parse_window,
    resolve_window,
    window_key,
)
from nervus_lightning.errors import ImageReadError

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
    "import_pydicom",
    "is_dicom_file",
    "parse_frame",
    "parse_window",
    "read_dicom",
    "window_key",
]


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
    decoded = decode_frame(file, frame, file_voi=window == "auto" or isinstance(window, AutoWindow))
    values, header = decoded.values, decoded.header
    if decoded.colour_bits is None:
        shown = resolve_window(window, header, decoded.ds)
        return display_values(values, header, shown, decoded.photometric == "MONOCHROME1")
    if values.ndim == 3 and values.shape[-1] == 3:  # pydicom converts YBR to RGB when decoding
        scale = 2.0**decoded.colour_bits - 1
        return (values.astype(np.float64) / scale).clip(0.0, 1.0).astype(np.float32)
    raise ImageReadError(
        file,
        f"DICOM photometric interpretation '{decoded.photometric}' gave pixel data of shape "
        f"{values.shape}, not rows x columns x 3; convert the file to MONOCHROME2 or RGB",
    )
