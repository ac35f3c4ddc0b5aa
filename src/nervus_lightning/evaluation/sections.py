"""What the evaluation of one label is made of, shared by every task kind.

This module owns the pieces that each task's evaluation (``Task.evaluate`` and
``Task.figures`` in :mod:`nervus_lightning.tasks`) builds on and that the report
(:mod:`nervus_lightning.evaluation.report`) reads: the settings of one evaluation
(:class:`EvalContext`: the checked
:class:`~nervus_lightning.evaluation.options.EvaluationOptions` with the splits, group column and
folder of this evaluation), what one label contributes (:class:`LabelSection`: metric rows with
CIs, notes, tables, figures) and the arrays kept per split x group for the figures
(:class:`Subset`); iteration over splits and groups, bootstrap intervals, and the split colours
and figure files shared by every kind's figures.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.bootstrap import (
    BootstrapCI,
    percentile_interval,
)
from nervus_lightning.evaluation.intervals import Interval
from nervus_lightning.evaluation.metrics import (
    MetricValues,
)
from nervus_lightning.evaluation.options import EvaluationOptions

log = logging.getLogger(__name__)


METRIC_COLUMNS = [
    "split",
    "group",
    "label",
    "metric",
    "value",
    "ci_lower",
    "ci_upper",
    "ci_method",
]


ALL_GROUPS = "all"


SPLIT_RANK = {"train": 0, "val": 1, "test": 2, "external": 3}


@dataclass(frozen=True, kw_only=True)
class EvalContext(EvaluationOptions):
    """One evaluation: its settings (the checked :class:`EvaluationOptions`, each task kind's
    own in ``tasks``) and what the predictions fixed."""

    splits: list[str]
    group_column: str | None
    out_dir: Path
    #: Unit of survival times (the schema's ``time_unit``), None when unknown.
    time_unit: str | None = None

    @classmethod
    def of_options(cls, options: EvaluationOptions, **fixed: Any) -> EvalContext:
        """The context of an evaluation with ``options`` and the ``fixed`` fields above."""
        settings = {f.name: getattr(options, f.name) for f in fields(EvaluationOptions)}
        return cls(**settings, **fixed)


@dataclass
class Subset:
    """The arrays of one split x group that the figures of its label are drawn from."""

    split: str
    group: str
    arrays: dict[str, np.ndarray]
    calibration: pd.DataFrame | None = None


@dataclass
class LabelSection:
    """What one label contributes: metric rows, figure data, figures, data summary and notes."""

    name: str
    task: str
    rows: list[dict] = field(default_factory=list)
    subsets: list[Subset] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # label-wide figure inputs (classes, threshold...)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png)
    summary: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    #: A sentence the learning-curve caption adds for this label's task (once per page).
    curve_note: str | None = None

    def add(
        self,
        split: str,
        group: str,
        metric: str,
        value: float | None,
        interval: BootstrapCI | Interval | None = None,
        note: str | None = None,
    ) -> None:
        """One metric row; ``ci_method`` names the interval's method (``bootstrap`` for a
        :class:`BootstrapCI`, else the :class:`Interval`'s), empty without an interval."""
        lower = upper = None
        method = ""
        notes = [note] if note else []
        if interval is not None and value is not None:
            lower, upper = interval.lower, interval.upper
            if lower is not None and upper is not None:
                method = getattr(interval, "method", "bootstrap")
            if interval.reason:
                notes.append(f"CI: {interval.reason}")
        self.rows.append(
            {
                "split": split,
                "group": group,
                "label": self.name,
                "metric": metric,
                "value": value,
                "ci_lower": lower,
                "ci_upper": upper,
                "ci_method": method,
                "note": "; ".join(notes),
            }
        )


def split_order(splits: list[str]) -> list[str]:
    """train, val, test, external, then external_<name> and anything else alphabetically."""

    def rank(s: str) -> tuple[int, str]:
        if s in SPLIT_RANK:
            return SPLIT_RANK[s], ""
        return (4, s) if s.startswith("external_") else (5, s)

    return sorted(splits, key=rank)


def class_name_of(value: object) -> object:
    """CSV readers turn class '1' into 1 or 1.0; map those back to the schema's string."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return value


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def iter_subsets(df: pd.DataFrame, ctx: EvalContext) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(split, group, rows) for every split, the whole split first, then each group."""
    for split in ctx.splits:
        in_split = df[df["split"] == split]
        yield split, ALL_GROUPS, in_split
        if ctx.group_column:
            groups = in_split[ctx.group_column]
            for value in sorted(groups.dropna().astype(str).unique()):
                yield split, value, in_split[groups.astype(str) == value]


def bootstrap_intervals(distributions: dict[str, np.ndarray], ci: float) -> dict[str, BootstrapCI]:
    """Percentile intervals of each metric's bootstrap distribution. An interval of zero width
    (every resample gave the same value, e.g. an AP of 1 on separated classes) is not an
    interval: it is dropped and the note says why."""
    with warnings.catch_warnings():
        # Skipped resamples are reported per row in the notes instead of as warnings.
        warnings.simplefilter("ignore", RuntimeWarning)
        intervals = {
            name: percentile_interval(values, ci) for name, values in distributions.items()
        }
    for name, interval in intervals.items():
        if interval.lower is not None and interval.lower == interval.upper:
            intervals[name] = BootstrapCI(
                None,
                None,
                interval.n_resamples,
                interval.n_skipped,
                f"every resample gave {interval.lower:.4g}; a percentile bootstrap has no width "
                "there (a boundary value), so no interval is given",
            )
    return intervals


def add_metric_rows(
    section: LabelSection,
    split: str,
    group: str,
    point: MetricValues,
    intervals: Mapping[str, BootstrapCI | Interval],
    extra_note: Callable[[str], str | None],
) -> None:
    for metric, value in point.items():
        notes = [n for n in (point.reasons.get(metric), extra_note(metric)) if n]
        section.add(split, group, metric, value, intervals.get(metric), "; ".join(notes) or None)


SPLIT_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def figure_splits(section: LabelSection, ctx: EvalContext) -> list[str]:
    """Splits drawn in the figures: every evaluated split but ``train`` (unless
    ``ctx.train_figures``); ``train`` alone when it is the only split."""
    present = [s for s in ctx.splits if any(x.split == s for x in section.subsets)]
    shown = [s for s in present if s != "train" or ctx.train_figures]
    return shown or present


def split_styles(splits: list[str]) -> dict[str, dict[str, object]]:
    """One colour per split, the same in every figure; ``val`` dashed grey, ``train`` dotted."""
    styles: dict[str, dict[str, object]] = {}
    colours = iter(SPLIT_COLOURS * 4)
    for split in splits:
        if split == "val":
            styles[split] = {"color": "#555555", "ls": "--"}
        elif split == "train":
            styles[split] = {"color": "#ff7f0e", "ls": ":"}
        else:
            styles[split] = {"color": next(colours)}
    return styles


def main_split(splits: list[str]) -> str:
    """The split whose groups are compared: test, else the first external split, else val."""
    for split in splits:
        if split not in ("train", "val"):
            return split
    return "val" if "val" in splits else splits[0]


def find_subset(section: LabelSection, split: str, group: str = ALL_GROUPS) -> Subset | None:
    return next((x for x in section.subsets if x.split == split and x.group == group), None)


def interval_of(
    section: LabelSection, split: str, group: str, metric: str
) -> tuple[float, float] | None:
    for row in section.rows:
        if (row["split"], row["group"], row["metric"]) == (split, group, metric):
            if row["ci_lower"] is None or row["ci_upper"] is None:
                return None
            return float(row["ci_lower"]), float(row["ci_upper"])
    return None


def add_figure(
    section: LabelSection, ctx: EvalContext, kind: str, caption: str, fig: object
) -> None:
    path = ctx.out_dir / "figures" / safe_name(section.name) / f"{kind}.png"
    plots.save_figure(fig, path)
    section.figures.append((caption, path))


def group_series(section: LabelSection, split: str, keys: tuple[str, str]) -> dict:
    """Group value -> arrays ``keys`` of the groups of ``split`` (empty without groups)."""
    return {
        x.group: tuple(x.arrays[k] for k in keys)
        for x in section.subsets
        if x.split == split and x.group != ALL_GROUPS
    }
