"""Reading and validating a Nervus CSV, once, at the boundary.

This module owns the CSV contract (see DESIGN.md) common to every task: which columns are ids,
inputs, images, labels, splits and groups; what counts as bad input; and the *schema* that
describes a data set to the rest of the library (label kinds, class lists, training statistics).
What a label column of one task kind must hold (classes, numbers, events with their time column)
is that task's ``label_spec`` in :mod:`nervus_lightning.tasks`, passed in as a
:class:`LabelContract` (the tasks build on this module, not the other way round). The column
names themselves are :mod:`nervus_lightning.errors`'s. Everything after :func:`load_table` may
trust its inputs.

Every problem is reported as one :class:`NervusInputError` whose message names the file, the
column, the CSV line numbers (the header is line 1, the first case line 2) and what to do.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

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

#: ``data.missing_views``: an empty cell in a view column is refused, or replaced by a learned
#: "missing" embedding.
MISSING_VIEWS = ("refuse", "allow")
_VIEW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
#: A classification label is taken for a mistake (a number, an id) when it has more classes than
#: this in the training split and fewer than two training cases per class on average: no
#: classifier learns a class it saw once, and a measurement read as classes has about one class
#: per case. Many classes with enough cases each (a 100-class problem) are not refused.
MANY_CLASSES = 20


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

    @property
    def task(self) -> str:
        return self.labels[0].task

    @property
    def has_images(self) -> bool:
        """Whether the model reads images (one view or several)."""
        return bool(self.image_column or self.views)

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


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV as strings (typed per column later); a clear message when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise NervusInputError(
            f"CSV file not found: {path}. Check the path given as data.csv "
            "(relative paths are relative to the directory you ran the command from)."
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise NervusInputError(
            f"{path}: cannot be read as a CSV ({err}). Check that it is a comma-separated "
            "text file "
            "with one header line and the same number of fields on every line."
        ) from err
    df.columns = [str(c).strip() for c in df.columns]
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise NervusInputError(f"{path}: duplicate column names {dupes}; rename them.")
    for col in df.columns:
        df[col] = df[col].str.strip()
    return df.reset_index(drop=True)


def period_column_for(label: str, columns: Sequence[str]) -> str | None:
    """The time column paired with ``label_<name>``: ``period_<name>`` or ``periods_<name>``."""
    name = label[len(LABEL_PREFIX) :]
    found = [p + name for p in PERIOD_PREFIXES if p + name in columns]
    return found[0] if found else None


def sort_classes(values: Sequence[str]) -> list[str]:
    """Sorted unique class names: numerically when all are numbers (so 2 < 10), else as text."""
    uniq = sorted(set(values))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


def check_class_count(
    df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index, classes: list[str]
) -> None:
    """Refuse a label whose training values are too many ``classes`` to be classes.

    See :data:`MANY_CLASSES`. The message names the column, shows a few values and says how to
    use the column instead: as a number (``task=regression``) or not as a target (``data.labels``
    without it).
    """
    values = df.loc[train_rows, column]
    if len(classes) <= MANY_CLASSES or 2 * len(classes) <= len(values):
        return
    examples = ", ".join(str(v) for v in values.drop_duplicates().iloc[:3])
    numeric = pd.to_numeric(values, errors="coerce").notna().all()
    others = [c for c in df.columns if c.startswith(LABEL_PREFIX) and c != column]
    keep = f"data.labels=[{','.join(others)}]" if others else "data.labels=[...]"
    regression = f"task=regression data.labels=[{column}]" if others else "task=regression"
    as_number = f"If it is a number, train it with {regression}; if" if numeric else "If"
    raise NervusInputError(
        f"{path}: label '{column}' has {len(classes):,} distinct values in {len(values):,} "
        f"training cases (e.g. {examples}, ...): too many to be classes. {as_number} it should "
        f"not be a target, leave it out with {keep}."
    )


def numeric_column(df: pd.DataFrame, col: str, path: Path, rows: pd.Index, what: str) -> pd.Series:
    """Convert one column to float, failing with the offending lines when values are not numbers."""
    raw = df.loc[rows, col]
    num = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & num.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in raw[bad].unique()[:3])
        raise NervusInputError(
            f"{path}: column '{col}' ({what}) must be numeric but has non-numeric values "
            f"({examples}) at {csv_lines(raw.index[bad])}. Encode categories as numbers "
            "(e.g. one-hot 0/1 columns) or fix the values."
        )
    return num.astype(float)


def check_no_missing(series: pd.Series, col: str, path: Path, what: str, hint: str) -> None:
    miss = series.isna()
    if miss.any():
        raise NervusInputError(
            f"{path}: column '{col}' ({what}) has {int(miss.sum())} missing value(s) at "
            f"{csv_lines(series.index[miss])}. {hint}"
        )


def select_label_columns(df: pd.DataFrame, path: Path, labels: Sequence[str] | None) -> list[str]:
    if labels:
        missing = [c for c in labels if c not in df.columns]
        if missing:
            raise NervusInputError(
                f"{path}: label column(s) {missing} named in the config are not in the CSV "
                f"(its label columns: {[c for c in df.columns if c.startswith(LABEL_PREFIX)]})."
            )
        return list(labels)
    cols = [c for c in df.columns if c.startswith(LABEL_PREFIX)]
    if not cols:
        raise NervusInputError(
            f"{path}: no label column. Name each target column 'label_<name>' "
            f"(e.g. label_cancer) or list them in data.labels."
        )
    return cols


def _validate_splits(df: pd.DataFrame, path: Path) -> None:
    if SPLIT_COLUMN not in df.columns:
        raise NervusInputError(
            f"{path}: required column '{SPLIT_COLUMN}' is missing. Add it with one of "
            "train, val, test, exclude, external or external_<name> per case."
        )
    split = df[SPLIT_COLUMN].fillna("")
    bad = ~split.map(is_valid_split)
    if bad.any():
        value = split[bad].iloc[0]
        close = difflib.get_close_matches(value.lower(), [TRAIN, VAL, TEST, EXCLUDE, EXTERNAL], 1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise NervusInputError(
            f"{path}: column '{SPLIT_COLUMN}' has invalid value '{value}' at "
            f"{csv_lines(split.index[split == value])}.{hint} Valid values: train, val, test, "
            "exclude, external, external_<name>."
        )


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
    _validate_splits(df, path)
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
    check_missing_views(missing_views)
    views = find_views(df.columns, path) if use_images else []
    image_col = IMAGE_COLUMN if use_images and not views and IMAGE_COLUMN in df.columns else None
    if image_col:
        check_no_missing(df[image_col], image_col, path, "image path", "Give every case an image.")
        _resolve_paths(df, image_col, path)
    view_cols = [view_column(v) for v in views]
    if views:
        _check_view_cells(df, path, views, view_cols, missing_views, has_tabular=bool(input_cols))
        for col in view_cols:
            _resolve_paths(df, col, path)
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
    if value not in MISSING_VIEWS:
        raise NervusInputError(
            f"data.missing_views must be one of {list(MISSING_VIEWS)}, got {value!r}: refuse "
            "stops on an empty view cell, allow replaces the view by a learned embedding."
        )


def _resolve_paths(df: pd.DataFrame, col: str, path: Path) -> None:
    """Relative image paths are relative to the CSV's folder; empty cells stay empty."""
    df[col] = [
        p if not isinstance(p, str) or os.path.isabs(p) else str(path.parent / p) for p in df[col]
    ]


def _check_view_cells(
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


def _fit_inputs(
    df: pd.DataFrame, path: Path, cols: Sequence[str], train_rows: pd.Index
) -> tuple[list[float], list[float]]:
    """Check tabular inputs are numeric and complete; fit the standardiser on the training split."""
    means, stds = [], []
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
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return means, stds


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
    _validate_splits(df, path)
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
    if schema.image_column:
        col = schema.image_column
        check_no_missing(df[col], col, path, "image path", "Give every case an image.")
        df[col] = [p if os.path.isabs(p) else str(path.parent / p) for p in df[col].astype(str)]
    if schema.views:
        _check_view_cells(
            df,
            path,
            schema.views,
            schema.view_columns,
            schema.missing_views,
            has_tabular=bool(schema.input_columns),
            training=False,
        )
        for col in schema.view_columns:
            _resolve_paths(df, col, path)
    for spec in schema.labels:
        if spec.name in df.columns:
            task.check_prediction_labels(df, path, spec)
    return df
