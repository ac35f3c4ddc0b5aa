"""How a data set's images are read: every image header checked before training, and the
settings every image is read with (``data.bit_depth``, ``data.window``, ``data.frame``) parsed,
or taken from a trained model's schema and checked against what the user asked for. Choosing
them on the training images is the data module's (it logs what it chose).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from nervus_lightning.data.dataset import dicom_settings
from nervus_lightning.data.dicom import AutoWindow, Window, window_key
from nervus_lightning.data.images import CANDIDATE_BIT_DEPTHS, check_image_files
from nervus_lightning.data.schema import DataSchema
from nervus_lightning.errors import MAX_LISTED, NervusInputError, csv_lines

BIT_DEPTHS = ("auto", *CANDIDATE_BIT_DEPTHS)


def parse_bit_depth(value: str | int) -> int | None:
    """``data.bit_depth`` as a number of bits, or None for ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if not isinstance(value, bool) and text.isdigit() and int(text) in CANDIDATE_BIT_DEPTHS:
        return int(text)
    raise NervusInputError(
        f"data.bit_depth must be one of {', '.join(map(str, BIT_DEPTHS))}, got {value!r}. "
        "Use auto to read it from the training images, or the number of significant bits of "
        "your images (e.g. 12 for 12-bit radiographs stored in 16-bit files)."
    )


def window_for_schema(window: Window) -> str | list[float]:
    """``data.window`` as the schema stores it (the data set's windows are kept apart)."""
    return "auto" if isinstance(window, AutoWindow) else window_key(window)


def check_image_columns(
    csv: os.PathLike,
    frame: pd.DataFrame,
    columns: Sequence[str],
    csv_rows: np.ndarray,
    check: Callable[[list[str]], list[tuple[str, str]]] = check_image_files,
    what: str = "image file",
) -> None:
    """Every image header of every image column, before training; the first bad column is
    reported with its files and, for each, the CSV lines (``csv_rows``) that name it. ``check``
    and ``what``: the check of a list of paths (``(path, reason)`` of the bad ones) and what a
    path is called (volumes: :func:`~nervus_lightning.data.volume_input.check_volume_files`)."""
    for column in columns:
        cells = frame[column].dropna()
        # A file named on several lines is opened once and reported with each of its lines.
        bad = dict(check(list(dict.fromkeys(cells))))
        if not bad:
            continue
        lines = {path: csv_rows[cells.index[cells == path]] for path in bad}
        listed = "\n".join(
            f"  CSV {csv_lines(lines[path])}: {path}: {reason}"
            for path, reason in list(bad.items())[:MAX_LISTED]
        )
        more = len(bad) - MAX_LISTED
        more = f"\n  ... and {more} more file(s)" if more > 0 else ""
        on_lines = sum(len(rows) for rows in lines.values())
        raise NervusInputError(
            f"{csv}: {len(bad)} {what}(s) in column '{column}', named on "
            f"{on_lines} CSV line(s), are missing or unreadable:\n{listed}{more}\nFix the "
            "paths (relative paths are relative to the CSV's folder) or set split=exclude "
            "for those cases."
        )


def check_stored_bit_depth(
    schema: DataSchema, requested: int | None, stacklevel: int = 1
) -> DataSchema:
    """A trained model's schema with its bit depth, checked against ``data.bit_depth``; a
    schema without one (older versions) takes the requested depth, or warns, ``stacklevel``
    frames above the caller (1: the caller's line)."""
    stored = schema.bit_depth
    if stored is None:
        if requested is not None:
            return dataclasses.replace(schema, bit_depth=requested)
        warnings.warn(
            "the model's schema holds no bit depth (it was trained with an older version); "
            "each image's scaling is guessed from the image alone, as it was in training.",
            stacklevel=stacklevel + 1,
        )
    elif requested is not None and requested != stored:
        raise NervusInputError(
            f"data.bit_depth={requested} differs from the {stored} bits the model was "
            "trained with; images must be scaled as in training. Leave data.bit_depth=auto "
            "to use the model's depth."
        )
    return schema


def check_stored_dicom_settings(
    schema: DataSchema, window: Window | None, frame: str | None
) -> DataSchema:
    """A trained model's schema with its DICOM window and frame (those of older schemas filled
    in), checked against ``data.window`` and ``data.frame``."""
    stored_window, stored_frame = dicom_settings(schema)
    for key, requested, stored in (
        ("window", window, stored_window),
        ("frame", frame, stored_frame),
    ):
        if key == "window" and requested is not None:
            requested, stored = window_for_schema(requested), window_for_schema(stored)
        if requested is not None and requested != stored:
            shown = window_for_schema(stored) if key == "window" else stored
            raise NervusInputError(
                f"data.{key}={window_for_schema(requested)} differs from the {key} the "
                f"model was trained with ({shown}); DICOM images must be read as in "
                f"training. Leave data.{key} unset to use the model's."
            )
    return dataclasses.replace(schema, window=window_for_schema(stored_window), frame=stored_frame)
