"""The column-level checks of a Nervus CSV: reading it, its ``split`` values, numbers, missing
values, class lists, and which columns are labels and survival times. Each failure is one
:class:`~nervus_lightning.errors.NervusInputError` naming the file, the column and the CSV lines
(the header is line 1). The whole contract and the schema are :mod:`.schema`'s.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nervus_lightning.errors import (
    EXCLUDE,
    EXTERNAL,
    LABEL_PREFIX,
    PERIOD_PREFIXES,
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    VAL,
    NervusInputError,
    csv_lines,
    is_valid_split,
)

#: A classification label is taken for a mistake (a number, an id) when it has more classes than
#: this in the training split and fewer than two training cases per class on average: no
#: classifier learns a class it saw once, and a measurement read as classes has about one class
#: per case. Many classes with enough cases each (a 100-class problem) are not refused.
MANY_CLASSES = 20


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


def validate_splits(df: pd.DataFrame, path: Path) -> None:
    """A ``split`` column of valid values (the error suggests the closest one)."""
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
