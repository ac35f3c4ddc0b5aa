"""Several images per case: the ``imgpath_<view>`` columns of a multi-view CSV, their view
names, what an empty view cell means (``data.missing_views``) and the image paths, relative to
the CSV's folder. The schema records the views (:class:`~nervus_lightning.data.schema.DataSchema`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nervus_lightning.data.columns import check_no_missing
from nervus_lightning.errors import (
    IMAGE_COLUMN,
    PLAIN_VIEW,
    VIEW_PREFIX,
    NervusInputError,
    csv_lines,
)

#: ``data.missing_views``: an empty cell in a view column is refused, or replaced by a learned
#: "missing" embedding.
MISSING_VIEWS = ("refuse", "allow")
_VIEW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def view_column(view: str) -> str:
    """The CSV column of a view: ``imgpath`` for the plain view ``image``, else
    ``imgpath_<view>``."""
    return IMAGE_COLUMN if view == PLAIN_VIEW else VIEW_PREFIX + view


def find_views(columns: Sequence[str], path: Path) -> list[str]:
    """The views of a CSV, in column order; empty for a single-view (plain ``imgpath``) CSV.

    ``imgpath_<view>`` columns make a multi-view CSV. A plain ``imgpath`` column beside them is
    one more view, named ``image``, placed first (so ``imgpath_image`` is refused as a clash).
    View names are letters, digits and ``-`` (they name preview and explanation files).
    """
    suffixes = [c[len(VIEW_PREFIX) :] for c in columns if c.startswith(VIEW_PREFIX)]
    if not suffixes:
        return []
    bad = [VIEW_PREFIX + v for v in suffixes if not _VIEW_NAME.match(v)]
    if bad:
        raise NervusInputError(
            f"{path}: image column(s) {bad} do not name a view. Name each view column "
            f"'{VIEW_PREFIX}<view>' with a view name of letters, digits and '-' (e.g. "
            f"{VIEW_PREFIX}frontal, {VIEW_PREFIX}lateral)."
        )
    if IMAGE_COLUMN in columns:
        if PLAIN_VIEW in suffixes:
            raise NervusInputError(
                f"{path}: columns '{IMAGE_COLUMN}' and '{VIEW_PREFIX}{PLAIN_VIEW}' would both be "
                f"the view '{PLAIN_VIEW}' (a plain '{IMAGE_COLUMN}' beside view columns is the "
                f"view '{PLAIN_VIEW}'). Rename one of them, e.g. '{IMAGE_COLUMN}' to "
                f"'{VIEW_PREFIX}frontal'."
            )
        return [PLAIN_VIEW, *suffixes]
    return suffixes


def check_missing_views(value: str) -> None:
    """``data.missing_views`` must be one of :data:`MISSING_VIEWS`."""
    if value not in MISSING_VIEWS:
        raise NervusInputError(
            f"data.missing_views must be one of {list(MISSING_VIEWS)}, got {value!r}: refuse "
            "stops on an empty view cell, allow replaces the view by a learned embedding."
        )


def resolve_image_paths(df: pd.DataFrame, col: str, path: Path) -> None:
    """Relative image paths are relative to the CSV's folder; empty cells stay empty."""
    df[col] = [
        p if not isinstance(p, str) or os.path.isabs(p) else str(path.parent / p) for p in df[col]
    ]


def check_view_cells(
    df: pd.DataFrame,
    path: Path,
    views: Sequence[str],
    columns: Sequence[str],
    missing_views: str,
    has_tabular: bool,
    training: bool = True,
) -> None:
    """Empty view cells: refused (``refuse``) or allowed while a case keeps some input."""
    if missing_views == "refuse":
        hint = (
            "or set data.missing_views=allow to replace a missing view by a learned embedding."
            if training
            else "or use a model trained with data.missing_views=allow."
        )
        for col in columns:
            check_no_missing(
                df[col],
                col,
                path,
                "image path of one view",
                "Give every case an image for every view, set split=exclude for those cases, "
                + hint,
            )
        return
    if has_tabular:
        return
    none = df[list(columns)].isna().all(axis=1)
    if none.any():
        raise NervusInputError(
            f"{path}: {int(none.sum())} case(s) have no image in any view column "
            f"({', '.join(columns)}) and the model has no tabular inputs, so there is nothing "
            f"to predict from, at {csv_lines(df.index[none])}. Give them an image or set "
            "split=exclude."
        )
