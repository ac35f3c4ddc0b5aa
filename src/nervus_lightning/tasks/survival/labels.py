"""The CSV contract of a survival label: an event column and its time column.

An event label holds 0 (censored) and 1 (event), or for competing risks 0 and the cause
1..K of the first event; its time column is ``period_<name>`` (or ``periods_<name>``; a lone
period column pairs with a lone label, as in the original Nervus). Every time column must be
paired with an event label. :class:`~nervus_lightning.tasks.survival.task.SurvivalTask` answers
the schema's questions about its labels with these functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nervus_lightning.data.schema import (
    LabelSpec,
    check_no_missing,
    numeric_column,
    period_column_for,
)
from nervus_lightning.errors import (
    LABEL_PREFIX,
    PERIOD_PREFIXES,
    SPLIT_COLUMN,
    VAL,
    NervusInputError,
    csv_lines,
)


def _codes(values: pd.Series) -> str:
    """The first few distinct values of a column, as a user wrote them (e.g. ``[1.5, 3]``)."""
    return "[" + ", ".join(f"{v:g}" for v in sorted(values.unique())[:3]) + "]"


def survival_label_spec(
    df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index, kind: str = "survival"
) -> LabelSpec:
    """Event label 0/1 (or competing causes 0/1..K) with its time column ``period_<name>``
    (or ``periods_<name>``)."""
    period = period_column_for(column, df.columns)
    if period is None:
        periods = [c for c in df.columns if c.startswith(PERIOD_PREFIXES)]
        labels = [c for c in df.columns if c.startswith(LABEL_PREFIX)]
        if len(periods) == 1 and len(labels) == 1:
            period = periods[0]  # the original Nervus pairs a lone period with a lone label
        else:
            name = column[len(LABEL_PREFIX) :]
            raise NervusInputError(
                f"{path}: survival label '{column}' has no time column; add "
                f"'period_{name}' (time to event or censoring, >= 0)."
            )
    events = numeric_column(df, column, path, df.index, "survival event, 0 = censored, 1 = event")
    times = numeric_column(df, period, path, df.index, "survival time")
    causes = event_causes(events, path, column, train_rows)
    has_event = events.notna()
    check_no_missing(
        times[has_event | times.index.isin(train_rows)],
        period,
        path,
        "survival time",
        "Every case with a known event status needs a time; or set split=exclude.",
    )
    negative = times < 0
    if negative.any():
        raise NervusInputError(
            f"{path}: survival time column '{period}' has negative values at "
            f"{csv_lines(times.index[negative])}. Times must be >= 0."
        )
    if (events[train_rows] != 0).sum() == 0:
        raise NervusInputError(
            f"{path}: survival label '{column}' has no events (all 0) in the training split; "
            "a Cox model cannot learn without events."
        )
    check_validation_events(df, path, column, events)
    return LabelSpec(name=column, task=kind, period=period, causes=causes)


def check_validation_events(df: pd.DataFrame, path: Path, column: str, events: pd.Series) -> None:
    """Stop when the validation rows of a survival label hold no event: nothing can then be
    chosen on them. A Cox validation loss (the partial likelihood of the events) is 0 for every
    model, a discrete-time one only rewards predicting that nobody has the event, and no
    C-index can be computed, so the linear start's penalty, the epochs and the checkpoint would
    be chosen blind. (No validation row at all is refused when training starts:
    ``NervusDataModule.val_dataloader``.)"""
    if SPLIT_COLUMN not in df.columns:
        return
    val_rows = df.index[df[SPLIT_COLUMN] == VAL]
    known = events[val_rows].dropna()
    if len(known) == 0 or (known != 0).any():
        return
    raise NervusInputError(
        f"{path}: survival label '{column}' has no event in the validation split: its "
        f"{len(known)} case(s) with an event status ({csv_lines(known.index)}) are all "
        "censored (0), so nothing can be chosen on them (a Cox validation loss is 0 for every "
        "model, and no C-index can be computed): the penalty, the epochs and the checkpoint "
        "would be chosen blind. Move some cases with events into split=val (with 20 or more "
        "there the penalty is chosen on them alone)."
    )


def event_causes(events: pd.Series, path: Path, column: str, train_rows: pd.Index) -> int | None:
    """K for an event column coding competing causes 0 (censored) / 1..K, K >= 2; None for
    a 0/1 event column (see :mod:`nervus_lightning.survival.competing`)."""
    known = events.notna()
    bad = known & ((events < 0) | (events != events.round()))
    if bad.any():
        raise NervusInputError(
            f"{path}: survival event column '{column}' must be 0 (censored) or 1 (event), or "
            "for competing risks the cause 1, 2, ... of the first event, but has "
            f"{_codes(events[bad])} at {csv_lines(events.index[bad])}."
        )
    trained = events[train_rows].dropna()
    causes = int(trained.max()) if len(trained) else 0
    if causes < 2:
        beyond = known & (events > 1)
        if beyond.any():
            raise NervusInputError(
                f"{path}: survival event column '{column}' has causes "
                f"{_codes(events[beyond])} at {csv_lines(events.index[beyond])} "
                "but the training split has only 0/1: a cause needs training events. "
                "Move cases with those causes into the training split or recode them."
            )
        return None
    unseen = [c for c in range(1, causes + 1) if not (trained == c).any()]
    if unseen:
        raise NervusInputError(
            f"{path}: survival event column '{column}' codes competing causes 1..{causes}, "
            f"but cause(s) {unseen} have no event in the training split; the model cannot "
            "learn a cause without events. Number the causes 1..K without gaps, or merge "
            "rare causes."
        )
    beyond = known & (events > causes)
    if beyond.any():
        raise NervusInputError(
            f"{path}: survival event column '{column}' has cause(s) "
            f"{_codes(events[beyond])} at {csv_lines(events.index[beyond])} "
            f"beyond the training split's causes 1..{causes}: a cause needs training "
            "events. Move such cases into the training split or recode them."
        )
    return causes


def check_time_columns(df: pd.DataFrame, path: Path, label_columns: list[str]) -> None:
    """Every time column must be paired with an event label."""
    periods = [c for c in df.columns if c.startswith(PERIOD_PREFIXES)]
    if len(periods) == 1 and len(label_columns) == 1:
        return
    paired = {period_column_for(c, df.columns) for c in label_columns}
    unpaired = [p for p in periods if p not in paired]
    if unpaired:
        raise NervusInputError(
            f"{path}: time column(s) {unpaired} have no matching event label (expected "
            "'label_<name>' for 'period_<name>'). Add the label or remove the column."
        )


def check_prediction_events(df: pd.DataFrame, path: Path, spec: LabelSpec) -> None:
    """Validate the (optional) event and time columns of a CSV to predict."""
    events = numeric_column(df, spec.name, path, df.index, "survival label")
    bad = events.notna() & ~events.isin(np.arange(spec.causes + 1)) if spec.causes else None
    if bad is not None and bad.any():
        raise NervusInputError(
            f"{path}: survival label '{spec.name}' must hold 0 (censored) or a cause "
            f"1..{spec.causes} (the model's competing causes) but has "
            f"{_codes(events[bad])} at {csv_lines(events.index[bad])}."
        )
    if spec.period and spec.period in df.columns:
        numeric_column(df, spec.period, path, df.index, "survival time")
