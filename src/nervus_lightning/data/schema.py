"""Reading and validating a Nervus CSV, once, at the boundary.

This module owns the CSV contract (see DESIGN.md) common to every task: which columns are ids,
inputs, images, labels, splits and groups; what counts as bad input; and the *schema* that
describes a data set to the rest of the library (label kinds, class lists, training statistics).
What a label column of one task kind must hold (classes, numbers, events with their time column)
is that task's ``label_spec`` in :mod:`nervus_lightning.tasks`, passed in as a
:class:`LabelContract` (the tasks build on this module, not the other way round). The column
names themselves are :mod:`nervus_lightning.errors`'s, the column-level checks (numbers, missing
values, classes, splits) :mod:`.columns`'s and the image columns of several views
:mod:`.views`'s; their names stay importable from here. Everything after :func:`load_table` may
trust its inputs.

Every problem is reported as one :class:`NervusInputError` whose message names the file, the
column, the CSV line numbers (the header is line 1, the first case line 2) and what to do.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from nervus_lightning.data.columns import (  # noqa: F401  (re-exported: moved from here)
    MANY_CLASSES,
    check_class_count,
    check_no_missing,
    numeric_column,
    period_column_for,
    read_csv,
    select_label_columns,
    sort_classes,
    validate_splits,
)
from nervus_lightning.data.views import (  # noqa: F401  (re-exported: moved from here)
    MISSING_VIEWS,
    check_missing_views,
    check_view_cells,
    find_views,
    resolve_image_paths,
    view_column,
)

# The column conventions and the error live in the leaf module errors.py; they are imported
# here for the functions below and so that ``from nervus_lightning.data.schema import
# NervusInputError`` (and the column names) keeps working for users.
from nervus_lightning.errors import (  # noqa: F401
    EXCLUDE,
    EXTERNAL,
    GROUP_COLUMN,
    ID_COLUMN,
    IMAGE_COLUMN,
    INPUT_PREFIX,
    LABEL_PREFIX,
    MAX_LISTED,
    PERIOD_PREFIXES,
    PLAIN_VIEW,
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    VAL,
    VIEW_PREFIX,
    NervusInputError,
    csv_lines,
    is_valid_split,
)


class LabelContract(Protocol):
    """What one task kind requires of its label columns: a task class of
    :mod:`nervus_lightning.tasks` (``task_class("survival")``...), passed to :func:`load_table`
    and :func:`validate_for_prediction` so that this module knows no task kind itself."""

    def label_spec(
        self, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec: ...

    def check_columns(
        self, df: pd.DataFrame, path: Path, label_columns: list[str], explicit: bool
    ) -> None: ...

    def check_prediction_labels(self, df: pd.DataFrame, path: Path, spec: LabelSpec) -> None: ...


@dataclass
class LabelSpec:
    """One prediction target (one head).

    ``classes`` is the sorted class list of the training split (classification);
    ``mean``/``std`` are training statistics of a regression target; ``period`` is the time
    column paired with a survival event label; ``causes`` is K for a survival label coding
    competing causes 1..K (0 = censored; None for a 0/1 event).
    """

    name: str
    task: str
    classes: list[str] | None = None
    mean: float | None = None
    std: float | None = None
    period: str | None = None
    causes: int | None = None


@dataclass
class DataSchema:
    """What a model needs to know about its data; JSON-serialisable via :meth:`to_dict`.

    ``bit_depth`` is the intensity scaling of the images, chosen once on the training data
    (``data.bit_depth``) and reused unchanged for prediction: images wider than 8 bits are
    divided by ``2**bit_depth - 1``. It is None without images, and in schemas written before
    the field existed (each image's depth was then guessed from the image alone).

    ``window`` and ``frame`` are how DICOM images are shown to the model (``data.window``:
    ``"auto"``, ``"none"`` or ``[center, width]``; ``data.frame``: ``"middle"``, ``"first"`` or
    ``"mean"``; see :mod:`nervus_lightning.data.dicom`), fixed at training and reused unchanged
    for prediction. None without images, and in schemas written before the fields existed
    (DICOM files were then read as ``window="none"``, ``frame="first"``). ``auto_window``
    completes ``window="auto"``: ``{modality: [center, width]}`` for files without a window of
    their own, chosen on the training images (percentiles of many images' values, an aggregate);
    None when no training file lacked a window, and in schemas written before it existed (such
    files were then shown at their full range).

    Images come in one of two layouts. *Single view* (the Nervus CSV): one ``imgpath`` column,
    named by ``image_column``; ``views`` is empty and batches carry ``image`` as (B, C, H, W).
    *Several views*: ``imgpath_<view>`` columns (a plain ``imgpath`` beside them is the view
    ``image``), named in order by ``view_columns`` with their view names in ``views``;
    ``image_column`` is None and batches carry ``image`` as (B, V, C, H, W) in this order.
    ``missing_views`` says whether an empty view cell was refused (``refuse``) or replaced by a
    learned embedding (``allow``; batches then carry ``view_mask``). Bit depth, window and frame
    are shared by every view.

    ``time_unit`` is the unit of the survival time columns (``data.time_unit``: ``hours``,
    ``days``, ``weeks``, ``months`` or ``years``), shown on time axes and in table headers; None
    when it was not given (shown as plain "time").

    ``volume`` is set when every image cell names a 3D volume (``data.volume_size``): ``shape``
    ``[D, H, W]``, ``spacing`` ``[z, y, x]`` mm or None, and ``orientation`` (``LPS``); batches
    then carry ``image`` as (B, 1, D, H, W) (or (B, V, 1, D, H, W)), read as
    :mod:`~nervus_lightning.data.volume_input` says, with ``window``. None for 2D images.
    """

    labels: list[LabelSpec]
    input_columns: list[str] = field(default_factory=list)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)
    image_column: str | None = None
    group_column: str | None = None
    bit_depth: int | None = None
    window: str | list[float] | None = None
    frame: str | None = None
    views: list[str] = field(default_factory=list)
    view_columns: list[str] = field(default_factory=list)
    missing_views: str = "refuse"
    auto_window: dict[str, list[float]] | None = None
    time_unit: str | None = None
    volume: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        return self.labels[0].task

    @property
    def has_images(self) -> bool:
        """Whether the model reads images (one view or several)."""
        return bool(self.image_column or self.views)

    @property
    def is_volume(self) -> bool:
        """Whether the images are 3D volumes (``data.volume_size``)."""
        return self.has_images and self.volume is not None

    @property
    def multiview(self) -> bool:
        """Whether images come as several views per case (batches of shape (B, V, C, H, W))."""
        return bool(self.views)

    @property
    def image_columns(self) -> list[str]:
        """Every image column, in view order (``[image_column]`` for a single view)."""
        return list(self.view_columns) if self.views else [c for c in [self.image_column] if c]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSchema:
        d = dict(d)
        d["labels"] = [LabelSpec(**lab) for lab in d["labels"]]
        return cls(**d)


def load_table(
    csv: str | os.PathLike,
    *,
    task: LabelContract,
    labels: Sequence[str] | None = None,
    use_images: bool = True,
    use_tabular: bool = True,
    require_train: bool = True,
    missing_views: str = "refuse",
) -> tuple[pd.DataFrame, DataSchema]:
    """Read and validate a Nervus CSV for training; return the kept rows and the fitted schema.

    Excluded rows (``split == exclude``) are dropped; the returned frame's index is each row's
    position in the CSV (0 = the first line after the header), so that messages name CSV lines.
    Classes, input and target statistics are computed on the training split only. Image paths
    that are relative are resolved against the CSV's folder. ``imgpath_<view>`` columns make a
    multi-view schema (see :func:`find_views`); ``missing_views`` (``refuse`` or ``allow``) says
    what an empty view cell means. ``task`` is the task class whose label contract the label
    columns must meet (``nervus_lightning.tasks.task_class(kind)``).
    """
    path = Path(csv)
    df = read_csv(path)
    if ID_COLUMN not in df.columns:
        raise NervusInputError(
            f"{path}: required column '{ID_COLUMN}' (one unique id per case) is missing."
        )
    validate_splits(df, path)
    df = df[df[SPLIT_COLUMN] != EXCLUDE]  # the index stays the CSV row: csv_lines
    check_no_missing(df[ID_COLUMN], ID_COLUMN, path, "case id", "Give every case an id.")
    dup = df[ID_COLUMN].duplicated(keep=False)
    if dup.any():
        raise NervusInputError(
            f"{path}: column '{ID_COLUMN}' must be unique but "
            f"{df.loc[dup, ID_COLUMN].nunique()} id(s) "
            f"repeat (e.g. '{df.loc[dup, ID_COLUMN].iloc[0]}') at {csv_lines(df.index[dup])}."
        )
    train_rows = df.index[df[SPLIT_COLUMN] == TRAIN]
    if require_train and len(train_rows) == 0:
        raise NervusInputError(
            f"{path}: no training rows (no case has split == 'train'). Mark the training cases."
        )
    label_cols = select_label_columns(df, path, labels)
    for col in label_cols:
        hint = "Fill in the label or set split=exclude for those cases."
        check_no_missing(df.loc[train_rows, col], col, path, "label, training split", hint)
    specs = [task.label_spec(df, path, col, train_rows) for col in label_cols]
    task.check_columns(df, path, label_cols, explicit=labels is not None)

    input_cols = [c for c in df.columns if c.startswith(INPUT_PREFIX)] if use_tabular else []
    mean, std = _fit_inputs(df, path, input_cols, train_rows)
    image_col, views, view_cols = _image_inputs(
        df, path, use_images, missing_views, has_tabular=bool(input_cols)
    )
    if not image_col and not views and not input_cols:
        raise NervusInputError(
            f"{path}: no input to learn from: no '{IMAGE_COLUMN}' or '{VIEW_PREFIX}<view>' column "
            "(or images turned off with model/extractor=none) and no 'input_*' columns (or "
            "model/tabular=none)."
        )
    group_col = GROUP_COLUMN if GROUP_COLUMN in df.columns else None
    schema = DataSchema(
        labels=specs,
        input_columns=input_cols,
        input_mean=mean,
        input_std=std,
        image_column=image_col,
        group_column=group_col,
        views=views,
        view_columns=view_cols,
        missing_views=missing_views if views else "refuse",
    )
    return df, schema


def _image_inputs(
    df: pd.DataFrame, path: Path, use_images: bool, missing_views: str, has_tabular: bool
) -> tuple[str | None, list[str], list[str]]:
    """The training CSV's image column (one view) or views and their columns, checked, with
    their paths resolved against the CSV's folder (in place)."""
    check_missing_views(missing_views)
    views = find_views(df.columns, path) if use_images else []
    image_col = IMAGE_COLUMN if use_images and not views and IMAGE_COLUMN in df.columns else None
    if image_col:
        check_no_missing(df[image_col], image_col, path, "image path", "Give every case an image.")
        resolve_image_paths(df, image_col, path)
    view_cols = [view_column(v) for v in views]
    if views:
        check_view_cells(df, path, views, view_cols, missing_views, has_tabular=has_tabular)
        for col in view_cols:
            resolve_image_paths(df, col, path)
    return image_col, views, view_cols


def _fit_inputs(
    df: pd.DataFrame, path: Path, cols: Sequence[str], train_rows: pd.Index
) -> tuple[list[float], list[float]]:
    """Check tabular inputs are numeric and complete; fit the standardiser on the training split.

    An input with one value on every training row gets sd 0: the model standardises it to 0 for
    every case (:meth:`~nervus_lightning.models.tabular.TabularMLP.standardise`), in every split
    and in later predictions, so it is ignored. Its weights could learn nothing (their gradient
    is 0 throughout training), and with sd 1 (before 2026-12-08) another value in a validation,
    test or external row, e.g. the indicator of a site absent from training, reached the
    network through weights left at their random start. A warning names such inputs.
    """
    means, stds = [], []
    constant: list[str] = []
    for col in cols:
        values = numeric_column(df, col, path, df.index, "tabular input")
        check_no_missing(
            values,
            col,
            path,
            "tabular input",
            "Missing inputs are not imputed: fill them in, or set split=exclude for those cases.",
        )
        df[col] = values
        tr = values[train_rows]
        mean = float(tr.mean()) if len(tr) else 0.0
        std = float(tr.std(ddof=0)) if len(tr) else 1.0
        if len(tr) and not std > 0:
            std = 0.0
            others = values.index[(values != tr.iloc[0]).to_numpy()]
            elsewhere = f", other values at {csv_lines(others)}" if len(others) else ""
            constant.append(f"'{col}' ({tr.iloc[0]:g} on every training row{elsewhere})")
        means.append(mean)
        stds.append(std)
    if constant:
        warnings.warn(
            f"{path}: input(s) {', '.join(constant)} never vary in the training split, so the "
            "model cannot learn from them and ignores them (standardised to 0 for every case, "
            "in every split and in predictions). Drop them, or put cases with other values "
            "into training.",
            stacklevel=2,
        )
    return means, stds


def _warn_ignored_inputs(df: pd.DataFrame, path: Path, schema: DataSchema) -> None:
    """Warn when rows to predict give another value to an input that had one value on every
    training row (sd 0: :func:`_fit_inputs`): the model ignores it, so those cases are predicted
    as if they had the training value. Schemas written before such inputs got sd 0 have none."""
    ignored = []
    for col, mean, std in zip(
        schema.input_columns, schema.input_mean, schema.input_std, strict=False
    ):
        if std != 0:
            continue
        differ = df.index[(df[col] - mean).abs() > 1e-12 + 1e-9 * abs(mean)]
        if len(differ):
            ignored.append(f"'{col}' ({mean:g} in training; other values at {csv_lines(differ)})")
    if ignored:
        warnings.warn(
            f"{path}: input(s) {', '.join(ignored)} had one value on every training row, so the "
            "model ignores them: these cases are predicted as if they had the training value. "
            "If the input matters here (a site or scanner the training data never had), the "
            "model cannot account for it; retrain with such cases in training.",
            stacklevel=3,
        )


def validate_for_prediction(
    csv: str | os.PathLike, schema: DataSchema, task: LabelContract
) -> pd.DataFrame:
    """Read a CSV to predict with a trained model's schema: inputs required, labels optional.

    As in :func:`load_table`, excluded rows are dropped and the index is the CSV row position;
    label columns that are present must meet the contract of ``task`` (the schema's task class).
    """
    path = Path(csv)
    df = read_csv(path)
    if ID_COLUMN not in df.columns:
        raise NervusInputError(f"{path}: required column '{ID_COLUMN}' is missing.")
    if SPLIT_COLUMN not in df.columns:
        df[SPLIT_COLUMN] = EXTERNAL
    validate_splits(df, path)
    df = df[df[SPLIT_COLUMN] != EXCLUDE]  # the index stays the CSV row: csv_lines
    dup = df[ID_COLUMN].duplicated(keep=False)
    if dup.any():
        raise NervusInputError(
            f"{path}: column '{ID_COLUMN}' must be unique; repeats at {csv_lines(df.index[dup])}."
        )
    if schema.views:
        lacking = [c for c in schema.view_columns if c not in df.columns]
        if lacking:
            trained = ", ".join(
                f"{v} ({c})" for v, c in zip(schema.views, schema.view_columns, strict=True)
            )
            raise NervusInputError(
                f"{path}: the model was trained on the views {trained}; the CSV lacks the "
                f"column(s) {lacking}. Add them (same names), with the image of that view for "
                "each case."
            )
    needed = list(schema.input_columns) + ([schema.image_column] if schema.image_column else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise NervusInputError(f"{path}: the model needs column(s) {missing}, which the CSV lacks.")
    for col in schema.input_columns:
        df[col] = numeric_column(df, col, path, df.index, "tabular input")
        check_no_missing(df[col], col, path, "tabular input", "Fill in the values.")
    _warn_ignored_inputs(df, path, schema)
    if schema.image_column:
        col = schema.image_column
        check_no_missing(df[col], col, path, "image path", "Give every case an image.")
        df[col] = [p if os.path.isabs(p) else str(path.parent / p) for p in df[col].astype(str)]
    if schema.views:
        check_view_cells(
            df,
            path,
            schema.views,
            schema.view_columns,
            schema.missing_views,
            has_tabular=bool(schema.input_columns),
            training=False,
        )
        for col in schema.view_columns:
            resolve_image_paths(df, col, path)
    for spec in schema.labels:
        if spec.name in df.columns:
            task.check_prediction_labels(df, path, spec)
    return df
