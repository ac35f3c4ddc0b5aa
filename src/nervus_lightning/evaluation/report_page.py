"""The report's HTML page: the tables and the template context of ``report.html``.

:func:`render_report` renders ``templates/report.html.j2`` (jinja2, autoescaped) from the
evaluated labels (:class:`~nervus_lightning.evaluation.sections.LabelSection`): per label a
headline table (:func:`headline_table`: test and external splits, val marked; with competing
risks a second one per cause, :func:`cause_table`) and its figures first; data, learning curves,
the full split x group tables (:func:`full_table`) and the configuration after it, the last two
folded. Everything is embedded (figures as data URIs), so the page works offline. The numbers
come from :func:`nervus_lightning.evaluation.report.evaluate_predictions`; this module only
formats and lays them out.
"""

from __future__ import annotations

import base64
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from nervus_lightning.evaluation.intervals import METHOD_NAMES
from nervus_lightning.evaluation.sections import ALL_GROUPS, EvalContext, LabelSection, safe_name
from nervus_lightning.tasks.registry import task_class

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("nervus_lightning.evaluation", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


_METRIC_NAMES = {
    "auroc": "AUROC",
    "ap": "AP",
    "brier": "Brier",
    "ece": "ECE",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "pearson_r": "Pearson r",
    "c_index": "Harrell's C",
    "c_index_uno": "Uno's C",
    "td_auc_mean": "mean td-AUC",
    "ibs": "IBS",
    "ipa": "IPA",
    "logrank_p": "log-rank p",
    "ibs_null": "null-model IBS",
    "tp": "TP",
    "fp": "FP",
    "fn": "FN",
    "tn": "TN",
}


_TD_AUC_AT = re.compile(r"^td_auc_t(.+)$")


def _metric_name(metric: str, time_unit: str | None = None) -> str:
    if metric.startswith("auroc[") and metric.endswith("]"):
        return f"AUROC {metric[6:-1]}"
    if (at := _TD_AUC_AT.match(metric)) and time_unit:
        return f"td-AUC at t = {at.group(1)} {time_unit}"
    return _METRIC_NAMES.get(metric, metric)


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI, so that the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _flatten(config: Mapping, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten(value, name)
        else:
            yield name, value


def _fmt(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if metric in ("n", "events", "tp", "fp", "fn", "tn") or metric.startswith("events_cause"):
        return f"{value:.0f}"
    if metric == "logrank_p":
        return "< 0.001" if value < 0.001 else f"{value:.3f}"
    if metric in ("mae", "rmse", "threshold"):
        return f"{value:#.4g}"  # '#' keeps trailing zeros, so a column's digits line up
    return f"{value:.3f}"


def _cell(row: Mapping | None, metric: str, footnotes: list[str], where: str) -> dict:
    """One table cell: value, its interval and the number of its footnote (0: none); cells with
    the same note share one footnote."""
    if row is None:
        return {"value": "", "ci": "", "note": 0}
    ci = ""
    if row["ci_lower"] is not None and row["ci_upper"] is not None:
        ci = f"{_fmt(row['ci_lower'], metric)} – {_fmt(row['ci_upper'], metric)}"
    note = 0
    if row["note"] and metric != "threshold":
        text = f"{where}: {row['note']}"
        if text not in footnotes:
            footnotes.append(text)
        note = footnotes.index(text) + 1
    return {"value": _fmt(row["value"], metric), "ci": ci, "note": note}


# Competing-risk metrics of one cause (``<kind>_cause<c>`` or, per evaluation time,
# ``<kind>_cause<c>_t<time>``): the per-cause table's columns, kinds in this order.
_CAUSE_METRIC = re.compile(
    r"^(events|c_index|c_index_uno|td_auc|ibs|ibs_null|ipa|cif_observed|cif_predicted)"
    r"_cause(\d+)"
    r"(?:_t(.+))?$"
)
_CAUSE_COLUMNS = {
    "events": "events",
    "c_index": "Wolbers' C",
    "c_index_uno": "Wolbers' C, Uno weights",
    "td_auc": "td-AUC",
    "ibs": "IBS of the CIF",
    "ipa": "IPA",
    "cif_observed": "observed CIF",
    "cif_predicted": "mean predicted CIF",
}


def _headline_splits(rows: list[dict], ctx: EvalContext) -> list[str]:
    """Every evaluated split but train (test and external first, val last); train alone when
    nothing else was evaluated."""
    present = [s for s in ctx.splits if any(r["split"] == s for r in rows)]
    splits = [s for s in present if s not in ("train", "val")]
    splits += [s for s in present if s == "val"]
    return splits or present


#: The 2 x 2 table of a binary label at its operating threshold (one headline column).
_COUNTS = ("tp", "fp", "fn", "tn")


def headline_table(section: LabelSection, ctx: EvalContext) -> dict:
    """Headline metrics with CIs of every evaluated split but train (test and external first,
    val last and marked); the threshold and time-dependent AUCs stay in the full table, the
    per-cause metrics of competing risks go to :func:`cause_table`."""
    rows = [r for r in section.rows if r["group"] == ALL_GROUPS]
    metrics = [
        m
        for m in dict.fromkeys(r["metric"] for r in rows)
        if m not in ("threshold", "ibs_null")
        and not m.startswith("td_auc_t")
        and not _CAUSE_METRIC.match(m)
    ]
    lookup = {(r["split"], r["metric"]): r for r in rows}
    splits = _headline_splits(rows, ctx)
    footnotes: list[str] = []
    # The 2 x 2 counts share one column, so that the table fits the page.
    counts = [m for m in _COUNTS if m in metrics]
    if counts:
        metrics = [m for m in metrics if m not in counts]
        metrics.insert(metrics.index("prevalence") + 1 if "prevalence" in metrics else 1, _COUNTS)

    def cell(split: str, metric: str | tuple) -> dict:
        if isinstance(metric, tuple):
            parts = [_cell(lookup.get((split, m)), m, footnotes, split)["value"] for m in metric]
            # No-break spaces: the four counts stay on one line.
            return {"value": "\u00a0/\u00a0".join(parts), "ci": "", "note": 0}
        return _cell(lookup.get((split, metric)), metric, footnotes, split)

    body = [
        {
            "split": split,
            "development": split == "val",
            "cells": [cell(split, m) for m in metrics],
        }
        for split in splits
    ]
    return {
        "columns": [
            " / ".join(_metric_name(c) for c in m) if isinstance(m, tuple) else _metric_name(m)
            for m in metrics
        ],
        "rows": body,
        "footnotes": footnotes,
        "has_val": "val" in splits,
    }


def cause_table(section: LabelSection, ctx: EvalContext) -> dict | None:
    """Competing risks: one row per split (as the headline table) and cause, one column per
    per-cause metric (``events_cause<c>``, ``c_index_cause<c>``, ``td_auc_cause<c>_t<time>``,
    ...); None without causes."""
    rows = [r for r in section.rows if r["group"] == ALL_GROUPS]
    parsed = [
        (m.group(1), int(m.group(2)), m.group(3))
        for r in rows
        if (m := _CAUSE_METRIC.match(r["metric"]))
    ]
    if not parsed:
        return None
    # The null model's scores stay in the full table (the IPA column says how they compare).
    parsed = [x for x in parsed if x[0] in _CAUSE_COLUMNS]
    # (kind, time) columns: kinds in _CAUSE_COLUMNS order, times in the order they come.
    columns = list(dict.fromkeys((kind, at) for kind, _, at in parsed))
    columns.sort(key=lambda column: list(_CAUSE_COLUMNS).index(column[0]))
    causes = sorted({c for _, c, _ in parsed})
    lookup = {(r["split"], r["metric"]): r for r in rows}
    footnotes: list[str] = []

    def metric(kind: str, c: int, at: str | None) -> str:
        return f"{kind}_cause{c}" + ("" if at is None else f"_t{at}")

    body = [
        {
            "split": split,
            "group": str(c),
            "development": split == "val",
            "cells": [
                _cell(lookup.get((split, metric(k, c, at))), metric(k, c, at), footnotes, split)
                for k, at in columns
            ],
        }
        for split in _headline_splits(rows, ctx)
        for c in causes
    ]
    calibration = section.info.get("calibration_time")
    names = []
    for kind, at in columns:
        if at is None and kind.startswith("cif_") and calibration is not None:
            at = f"{calibration:g}"  # the observed and predicted CIFs are read there
        unit = f" {ctx.time_unit}" if ctx.time_unit else ""
        names.append(_CAUSE_COLUMNS[kind] + ("" if at is None else f" at t = {at}{unit}"))
    return {"columns": names, "rows": body, "footnotes": footnotes}


def full_table(section: LabelSection, time_unit: str | None = None) -> dict:
    """Every split x group x metric row of the label, as in metrics.csv."""
    metrics = list(dict.fromkeys(r["metric"] for r in section.rows))
    keys = list(dict.fromkeys((r["split"], r["group"]) for r in section.rows))
    lookup = {(r["split"], r["group"], r["metric"]): r for r in section.rows}
    footnotes: list[str] = []
    body = [
        {
            "split": split,
            "group": group,
            "development": False,
            "cells": [
                _cell(lookup.get((split, group, m)), m, footnotes, f"{split} / {group}")
                for m in metrics
            ],
        }
        for split, group in keys
    ]
    return {
        "columns": [_metric_name(m, time_unit) for m in metrics],
        "rows": body,
        "footnotes": footnotes,
    }


def _plain_table(frame: pd.DataFrame) -> dict:
    def text(value: object) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return f"{value:.4g}"
        return str(value)

    return {
        "columns": [str(c) for c in frame.columns],
        "rows": [[text(v) for v in row] for row in frame.itertuples(index=False)],
    }


def _data_table(predictions: pd.DataFrame, ctx: EvalContext) -> dict:
    counts = predictions.groupby("split").size().reindex(ctx.splits).rename("cases")
    frame = counts.to_frame()
    if ctx.group_column:
        by_group = pd.crosstab(predictions["split"], predictions[ctx.group_column].astype(str))
        frame = frame.join(by_group.reindex(ctx.splits).add_prefix(f"{ctx.group_column}="))
    return _plain_table(frame.rename_axis("split").reset_index())


def report_context(
    predictions: pd.DataFrame,
    sections: list[LabelSection],
    ctx: EvalContext,
    config_summary: Mapping | None,
    learning_curve_png: Path | None,
    galleries: Mapping[str, list[dict]] | None = None,
    model_summary: Mapping | None = None,
    learning_curve: pd.DataFrame | None = None,
    warnings: list[str] | None = None,
) -> dict:
    """Everything the template shows, as plain values (escaping is the template's job)."""
    sizes = predictions.groupby("split").size()
    shown = [s for s in ctx.splits if s != "train" or ctx.train_figures] or ctx.splits
    figure_numbers = itertools.count(1)  # figures are numbered through the whole page
    labels = []
    for section in sections:
        labels.append(
            {
                "name": section.name,
                "task": section.task,
                "anchor": safe_name(section.name),
                "notes": section.notes,
                "headline": headline_table(section, ctx) if section.rows else None,
                "causes": cause_table(section, ctx) if section.rows else None,
                "figures": [
                    {"caption": caption, "src": data_uri(path), "number": next(figure_numbers)}
                    for caption, path in section.figures
                ],
                "val_selects": task_class(section.task).val_selects,
                "gallery": (galleries or {}).get(section.name, []),
                "full": full_table(section, ctx.time_unit) if section.rows else None,
                "tables": [(caption, _plain_table(t)) for caption, t in section.tables],
                "summary_title": task_class(section.task).summary_title,
                "summary": (
                    _plain_table(section.summary)
                    if section.summary is not None and not section.summary.empty
                    else None
                ),
            }
        )
    config = (
        [(name, str(value)) for name, value in _flatten(config_summary)] if config_summary else []
    )
    interval_methods: dict[str, list[str]] = {}
    for section in sections:
        for row in section.rows:
            if row.get("ci_method"):
                names = interval_methods.setdefault(row["ci_method"], [])
                if row["metric"].startswith("auroc["):
                    name = "per-class AUROC"
                elif row["metric"] == "auroc" and row["ci_method"] == "bootstrap":
                    name = "macro AUROC (multi-class)"  # binary AUROCs have a score interval
                else:
                    name = _metric_name(row["metric"], ctx.time_unit)
                if name not in names:
                    names.append(name)
    return {
        "source": (config_summary or {}).get("predictions", ""),
        "splits": [(s, int(sizes.get(s, 0))) for s in ctx.splits],
        "figure_splits": shown,
        "resampling_notes": list(
            dict.fromkeys(
                note for s in sections if (note := task_class(s.task).resampling_note) is not None
            )
        ),
        "train_hidden": "train" in ctx.splits and "train" not in shown,
        "n_bootstrap": ctx.n_bootstrap,
        # Method -> the metrics whose intervals it made, bootstrap last.
        "interval_methods": [
            (METHOD_NAMES.get(method, method), names)
            for method, names in sorted(
                interval_methods.items(), key=lambda item: item[0] == "bootstrap"
            )
        ],
        "ci": f"{ctx.ci:.0%}",
        "group_column": ctx.group_column,
        "labels": labels,
        "data": _data_table(predictions, ctx),
        "learning_curve": data_uri(learning_curve_png) if learning_curve_png else None,
        "model": [(str(k), str(v)) for k, v in (model_summary or {}).get("rows", [])],
        "curve_caption": _curve_caption(
            model_summary,
            learning_curve,
            dict.fromkeys(s.curve_note for s in sections if s.curve_note),
        ),
        "config": config,
        # The run diagnostics' findings, atop the page.
        "warnings": list(warnings or []),
    }


def _curve_notes(sections: list[LabelSection]) -> list[str]:
    """Each label task's sentence for the learning-curve caption, each once, in label order."""
    return list(dict.fromkeys(s.curve_note for s in sections if s.curve_note))


def _curve_caption(
    model_summary: Mapping | None, curve: pd.DataFrame | None, notes: Iterable[str] = ()
) -> str:
    text = (
        "Loss per epoch (epochs counted from 0) on the training split (train_loss, the mean "
        "over the epoch's batches, with dropout and augmentation on) and on the validation split "
        "(val_loss, after the epoch), summed over labels"
    )
    columns = [] if curve is None else [c for c in curve.columns if c != "epoch"]
    if any(c.startswith(("train_loss_", "val_loss_")) for c in columns):
        text += " and per label"
    if any("loss" not in c for c in columns):
        text += "; right panel: the validation metrics logged during training"
    text += "."
    for note in notes:  # the labels' tasks' own words (LabelSection.curve_note)
        text += " " + note
    best = (model_summary or {}).get("best_epoch")
    if (model_summary or {}).get("linear_start_kept"):
        text += (
            " The model as it started, before training (the penalised linear start), was "
            "kept: no epoch's validation loss was lower than the start's by more than one "
            "standard error (the model table gives both). It made every prediction in this report."
        )
    elif best is not None:
        monitor = (model_summary or {}).get("monitor") or "val_loss"
        text += (
            f" Dashed line: epoch {best}, whose checkpoint was kept (best {monitor}) and "
            "made every prediction in this report."
        )
    return text


def render_report(
    predictions: pd.DataFrame,
    sections: list[LabelSection],
    ctx: EvalContext,
    config_summary: Mapping | None,
    learning_curve_png: Path | None,
    galleries: Mapping[str, list[dict]] | None = None,
    model_summary: Mapping | None = None,
    learning_curve: pd.DataFrame | None = None,
    warnings: list[str] | None = None,
) -> str:
    """The HTML page (a string, everything embedded) from ``templates/report.html.j2``;
    ``warnings`` (:func:`nervus_lightning.evaluation.diagnostics.run_warnings`) head it."""
    context = report_context(
        predictions,
        sections,
        ctx,
        config_summary,
        learning_curve_png,
        galleries,
        model_summary,
        learning_curve,
        warnings,
    )
    return _TEMPLATES.get_template("report.html.j2").render(**context)
