"""``data.window``: the setting, the data set's automatic windows per modality and the VOI LUT /
window step that turns modality-LUT values into display values in ``[0, 1]``.

:func:`choose_auto_window` chooses, on the training files, one window per ``Modality`` for the
grayscale files without their own (:class:`AutoWindow`, stored with the model);
:func:`resolve_window` picks one file's window and :func:`display_values` applies it. The
meaning of each setting is in :mod:`.dicom`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nervus_lightning.data.dicom_decode import (
    DEFAULT_FRAME,
    MONOCHROME,
    decode_frame,
    frame_header,
    has_voi_lut_sequence,
    has_window,
    import_pydicom,
    is_dicom_file,
    modality_of,
    photometric_of,
)
from nervus_lightning.errors import ImageReadError, NervusInputError

#: Percentiles of the training files' modality values that bound the data set's window.
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
#: At most this many training files (drawn with a fixed seed) are decoded to choose it, and at
#: most this many values of each are pooled.
AUTO_WINDOW_MAX_FILES = 200
_AUTO_WINDOW_MAX_VALUES = 65_536


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


def resolve_window(window: Window, header, ds) -> Window:
    """The window of one file: an :class:`AutoWindow` becomes ``auto`` for a file with its own
    VOI LUT or window, else its modality's ``(center, width)`` (``auto`` when there is none)."""
    if not isinstance(window, AutoWindow):
        return window
    if has_voi_lut_sequence(header) or has_window(header):
        return "auto"
    return window.for_modality(modality_of(ds)) or "auto"


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
    return pool_auto_window(
        paths,
        lambda file: _windowless_modality(file, frame),
        lambda file: _value_sample(file, frame),
        max_files=max_files,
        seed=seed,
        max_workers=max_workers,
    )


def pool_auto_window(
    paths: Sequence[str | os.PathLike],
    group_of: Callable[[Path], str | None],
    values_of: Callable[[Path], np.ndarray],
    *,
    max_files: int = AUTO_WINDOW_MAX_FILES,
    seed: int = 0,
    max_workers: int | None = None,
    what: str = "DICOM files",
    unit: str = "file(s)",
) -> AutoWindowChoice:
    """The rule of :func:`choose_auto_window` for any kind of file: ``group_of(file)`` names the
    window a file without its own gets (None: it has its own, or is not windowed), and
    ``values_of(file)`` gives its modality-LUT values, at most 65,536 of them
    (:func:`evenly_spaced`). ``what`` and ``unit`` name the files in the log's sentence."""
    files = list(dict.fromkeys(Path(p) for p in paths))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        groups = list(pool.map(group_of, files))
        by_modality: dict[str, list[Path]] = {}
        for file, modality in zip(files, groups, strict=True):
            if modality is not None:
                by_modality.setdefault(modality, []).append(file)
        if not by_modality:
            return AutoWindowChoice(None, {}, f"every one of the {what} has its own window")
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
            pooled = np.concatenate(list(pool.map(values_of, group)))
            if pooled.size == 0:
                raise ImageReadError(group[0], "the image has no pixels")
            low, high = np.percentile(pooled, AUTO_WINDOW_PERCENTILES)
            width = max(float(high - low), 1.0)  # DICOM's LINEAR window needs a width >= 1
            windows.append((modality, float((low + high) / 2), width))
    window = AutoWindow(tuple(windows))
    counts = {m: (len(by_modality[m]), len(drawn[m])) for m in drawn}
    low_p, high_p = AUTO_WINDOW_PERCENTILES
    listed = "; ".join(
        f"{total} {m or '(no Modality)'} {unit}"
        + (f" ({used} drawn)" if used < total else "")
        + f" -> center {c:g} width {w:g}"
        for (m, c, w), (total, used) in zip(window.by_modality, counts.values(), strict=True)
    )
    reason = (
        f"training {what} without their own window are shown with one window per modality, "
        f"from the {low_p:g}th to {high_p:g}th percentiles of their modality-LUT values: {listed}"
    )
    return AutoWindowChoice(window, counts, reason)


def evenly_spaced(values: np.ndarray) -> np.ndarray:
    """At most 65,536 evenly spaced values of ``values`` (flattened), as float64."""
    values = np.asarray(values, dtype=np.float64).ravel()
    step = max(1, -(-values.size // _AUTO_WINDOW_MAX_VALUES))
    return values[::step]


def _windowless_modality(file: Path, frame: str) -> str | None:
    """The Modality of a grayscale DICOM file without its own VOI LUT or window; else None."""
    if not (file.is_file() and is_dicom_file(file)):
        return None
    pydicom = import_pydicom(file)
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:
        raise ImageReadError(file, f"the DICOM header is damaged ({exc})") from exc
    if photometric_of(ds) not in MONOCHROME or "Rows" not in ds:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = {"first": 0, "middle": frames // 2, "mean": frames // 2}[frame]
    header = frame_header(ds, index)
    if has_voi_lut_sequence(header) or has_window(header):
        return None
    return modality_of(ds)


def _value_sample(file: Path, frame: str) -> np.ndarray:
    """At most 65,536 evenly spaced modality-LUT values of the chosen frame of ``file``."""
    return evenly_spaced(decode_frame(file, frame, file_voi=False).values)


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


def display_values(values: np.ndarray, ds, window: Window, monochrome1: bool) -> np.ndarray:
    """Modality-LUT output -> VOI LUT / window -> ``[0, 1]`` -> MONOCHROME1 inverted."""
    from pydicom.pixels import apply_voi_lut

    if isinstance(window, tuple):
        view = _window_view(ds, *window)
        shown = apply_voi_lut(values, view)
        low, high = _modality_output_range(view)
    elif window == "auto" and has_voi_lut_sequence(ds):
        shown = apply_voi_lut(values, ds)
        low, high = 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif window == "auto" and has_window(ds):
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
