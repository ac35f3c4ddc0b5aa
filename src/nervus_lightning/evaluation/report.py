"""Evaluation of a run's predictions: metrics table, figures and a self-contained HTML report.

:func:`evaluate_predictions` turns ``predictions.csv`` + ``schema.json`` of a run into

- ``metrics.csv``: one row per split x group x label x metric with columns
  ``split, group, label, metric, value, ci_lower, ci_upper, ci_method`` (``group`` is ``all`` for
  the whole split, else one value of the schema's group column; ``ci_method`` names how the
  interval was made: ``wilson`` or ``exact`` for proportions, ``newcombe`` for AUROCs,
  ``bootstrap`` (percentile bootstrap) for the rest, see
  :mod:`nervus_lightning.evaluation.intervals`);
- ``metrics_notes.csv``: the same keys with a ``note`` wherever a value or interval needs one
  (why it is missing, where the threshold came from, skipped resamples);
- ``figures/<label>/<kind>.png``: the figures a reader needs, each with the splits overlaid or
  one panel per split (val, test, external; train only with ``train_figures``), chosen by
  by each task's ``figures`` from the arrays its ``evaluate`` keeps per split x group;
- ``report.html``: one offline page rendered by :func:`render_report` from
  ``templates/report.html.j2`` (jinja2, autoescaped): per label a headline table (test and
  external splits, val marked; with competing risks a second one, per cause) and its figures
  first; data, learning curves, the full
  split x group tables and the configuration after it, the last two folded. When the run folder
  holds explanations (``explain/``, see :mod:`nervus_lightning.workflows.explain`), each label
  also shows a small gallery of Grad-CAM overlays and a chart of how much each input mattered.

What a label's metrics, notes, tables and figures are is its task's business: each label is
evaluated by ``task_class(label["task"]).evaluate`` and drawn by ``.figures`` (the classes of
:mod:`nervus_lightning.tasks`, one per kind; the pieces they share are in
:mod:`nervus_lightning.evaluation.sections`). This module only puts them together: it checks the
predictions against the schema, writes the tables and renders the page.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.intervals import METHOD_NAMES
from nervus_lightning.evaluation.sections import (
    ALL_GROUPS,
    METRIC_COLUMNS,
    EvalContext,
    LabelSection,
    safe_name,
    split_order,
)
from nervus_lightning.tasks.registry import task_class

log = logging.getLogger(__name__)


def select_figures(section: LabelSection, ctx: EvalContext) -> None:
    """Draw the figures of one evaluated label into ``section.figures`` (PNG files)."""
    task_class(section.task).figures(section, ctx)


def _validate(predictions: pd.DataFrame, schema: Mapping) -> str | None:
    if "labels" not in schema or not schema["labels"]:
        raise ValueError("schema has no 'labels'")
    missing = [c for c in ("split",) if c not in predictions.columns]
    for label in schema["labels"]:
        task = task_class(label.get("task"), f"schema label {label.get('name')!r} task")
        required = task.truth_columns(label) + task.score_columns(label)
        missing += [c for c in required if c not in predictions.columns]
    group = schema.get("group")
    if group and group not in predictions.columns:
        missing.append(group)
    if missing:
        raise ValueError(f"predictions lack column(s) {missing} named by the schema")
    if predictions["split"].isna().any():
        rows = np.flatnonzero(predictions["split"].isna().to_numpy())[:10].tolist()
        raise ValueError(f"predictions have no split at row(s) {rows}")
    return group or None


def evaluate_predictions(
    predictions: pd.DataFrame,
    schema: dict,
    out_dir: str | Path,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    threshold_method: str | None = None,
    target_sensitivity: float | None = None,
    positive_class: dict[str, str] | None = None,
    config_summary: dict | None = None,
    learning_curve: pd.DataFrame | None = None,
    train_figures: bool = False,
    explain_dir: str | Path | None = None,
    train_metrics: bool = True,
    max_rows_exact: int = 100_000,
    max_rows_bootstrap: int = 5_000,
    proportion_ci: str = "wilson",
    model_summary: Mapping | None = None,
) -> pd.DataFrame:
    """Evaluate a run's predictions; write metrics.csv, figures and report.html to ``out_dir``.

    Args:
        predictions: the run's ``predictions.csv`` as a DataFrame.
        schema: the run's ``schema.json`` (labels with task and classes, group column).
        out_dir: folder for ``metrics.csv``, ``metrics_notes.csv``, ``figures/``, ``report.html``.
        n_bootstrap: bootstrap resamples per CI; 0 skips the intervals.
        ci: confidence level of the intervals.
        seed: seed of the bootstrap (the same for every split, group and label).
        threshold_method: ``"youden"`` or ``"sensitivity"`` (see ``choose_threshold``);
            ``None`` keeps the method stored in the schema (the model's contract).
        target_sensitivity: the sensitivity aimed at by ``threshold_method="sensitivity"``;
            ``None`` keeps the stored one.
        positive_class: label name -> its positive class (binary labels); labels not named keep
            the stored positive class. A value that differs from the stored contract re-chooses
            the threshold on ``val`` (see :func:`_binary_threshold`).
        config_summary: run configuration shown, folded, at the end of the report (nested dicts
            allowed).
        learning_curve: per-epoch losses/metrics (an ``epoch`` column and numeric columns).
        explain_dir: the run's ``explain`` folder; where it holds ``cases.csv`` and
            ``attribution.csv``, the report shows a gallery of overlays and an attribution chart
            per label.
        train_figures: also draw the ``train`` split in the figures (its metrics are in
            ``metrics.csv`` and in the full table of the report unless ``train_metrics=False``).
        train_metrics, max_rows_exact, max_rows_bootstrap, proportion_ci: see
            :func:`nervus_lightning.evaluate.evaluate_run`.
        model_summary: what was trained (see :func:`nervus_lightning.outputs.model_summary`),
            shown at the top of the report; its ``best_epoch`` is marked on the learning curves.

    Returns:
        The rows of ``metrics.csv`` (columns ``split, group, label, metric, value, ci_lower,
        ci_upper``).
    """
    group_column = _validate(predictions, schema)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predictions.reset_index(drop=True).copy()
    predictions["split"] = predictions["split"].astype(str)
    splits = split_order([s for s in predictions["split"].unique() if s != "exclude"])
    if not train_metrics and len(splits) > 1:
        splits = [s for s in splits if s != "train"]
    ctx = EvalContext(
        splits,
        group_column,
        out_dir,
        n_bootstrap,
        ci,
        seed,
        threshold_method,
        target_sensitivity,
        positive_class or {},
        train_figures,
        max_rows_exact,
        max_rows_bootstrap,
        proportion_ci,
        schema.get("time_unit"),
    )
    sections = [
        task_class(label["task"]).evaluate(predictions, label, ctx) for label in schema["labels"]
    ]
    for section in sections:
        select_figures(section, ctx)
    galleries = explanations(Path(explain_dir), sections, out_dir) if explain_dir else {}

    all_rows = pd.DataFrame(
        [row for s in sections for row in s.rows], columns=[*METRIC_COLUMNS, "note"]
    )
    metrics = all_rows[METRIC_COLUMNS].astype(
        {"value": float, "ci_lower": float, "ci_upper": float}
    )
    # No interval: an empty cell, read back as NaN; the returned table is what the file reads as.
    method = metrics["ci_method"].replace("", np.nan)
    metrics["ci_method"] = method.astype(float) if method.isna().all() else method
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    notes = all_rows[all_rows["note"] != ""][["split", "group", "label", "metric", "note"]]
    notes.to_csv(out_dir / "metrics_notes.csv", index=False)

    curve_png = None
    best_epoch = (model_summary or {}).get("best_epoch")
    if learning_curve is not None and not learning_curve.empty:
        curve_png = plots.save_figure(
            plots.plot_learning_curves(
                learning_curve,
                best_epoch=best_epoch,
                best_label=f"checkpoint chosen (epoch {best_epoch})",
            ),
            out_dir / "figures" / "learning_curves.png",
        )
    page = render_report(
        predictions, sections, ctx, config_summary, curve_png, galleries, model_summary,
        learning_curve,
    )  # fmt: skip
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return metrics


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


def _data_uri(path: Path) -> str:
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
                    {"caption": caption, "src": _data_uri(path), "number": next(figure_numbers)}
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
        "learning_curve": _data_uri(learning_curve_png) if learning_curve_png else None,
        "model": [(str(k), str(v)) for k, v in (model_summary or {}).get("rows", [])],
        "curve_caption": _curve_caption(model_summary, learning_curve),
        "config": config,
    }


def _curve_caption(model_summary: Mapping | None, curve: pd.DataFrame | None) -> str:
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
    best = (model_summary or {}).get("best_epoch")
    if best is not None:
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
) -> str:
    """The HTML page (a string, everything embedded) from ``templates/report.html.j2``."""
    context = report_context(
        predictions,
        sections,
        ctx,
        config_summary,
        learning_curve_png,
        galleries,
        model_summary,
        learning_curve,
    )
    return _TEMPLATES.get_template("report.html.j2").render(**context)


# -- explanations (python -m nervus_lightning.explain, or explain.after_training) ---------------
_GALLERY_SIZE = 4


def explanations(
    explain_dir: Path, sections: list[LabelSection], out_dir: Path
) -> dict[str, list[dict]]:
    """Per label, the gallery rows of its Grad-CAM overlays (from ``cases.csv``); the chart of
    ``attribution.csv`` is added to the label's figures. Nothing when the files are absent."""
    attribution_path = explain_dir / "attribution.csv"
    if attribution_path.is_file():
        attribution = pd.read_csv(attribution_path, dtype={"label": str, "input": str})
        for section in sections:
            rows = attribution[attribution["label"] == section.name]
            if rows.empty:
                continue
            png = plots.save_figure(
                _attribution_chart(rows),
                out_dir / "figures" / safe_name(section.name) / "attribution.png",
            )
            n = int(rows["cases"].iloc[0])
            section.figures.append(
                (
                    f"How much each input moved the explained output (mean |Integrated Gradients| "
                    f"over {n} case(s), baseline a black image and the training mean of each "
                    "input; an image (or view) is the sum over its pixels).",
                    png,
                )
            )
    cases_path = explain_dir / "cases.csv"
    if not cases_path.is_file():
        return {}
    text = {c: str for c in ("uniqID", "split", "label", "explained", "truth")}
    cases = pd.read_csv(cases_path, dtype=text, keep_default_na=False, na_values={"truth": [""]})
    # One overlay column per view (``overlay_<view>``), or ``overlay`` for a single image.
    views = [c.removeprefix("overlay_") for c in cases.columns if c.startswith("overlay_")]
    columns = [f"overlay_{v}" for v in views] or ["overlay"]
    if not set(columns) <= set(cases.columns):
        return {}
    overlays = cases[columns].fillna("").astype(str)
    galleries = {}
    for section in sections:
        rows = cases[(cases["label"] == section.name) & (overlays != "").any(axis=1)]
        groups = _gallery_groups(rows, section.info.get("classes"), section.info.get("positive"))
        galleries[section.name] = [
            {
                "title": title,
                "cases": [
                    {
                        "views": [
                            {
                                "name": view,
                                "src": _data_uri(explain_dir / overlays.at[index, column])
                                if overlays.at[index, column]
                                else None,
                            }
                            for view, column in zip(views or [None], columns, strict=True)
                        ],
                        "caption": f"{row.uniqID} ({row.split}): {row.explained} "
                        f"{row.score:.3g}" + ("" if pd.isna(row.truth) else f", true {row.truth}"),
                    }
                    for index, row in chosen.head(_GALLERY_SIZE).iterrows()
                ],
            }
            for title, chosen in groups
            if not chosen.empty
        ]
    return galleries


def _gallery_groups(
    rows: pd.DataFrame, classes: list[str] | None, positive: str | None
) -> list[tuple[str, pd.DataFrame]]:
    """(title, cases most confident first) of a label's explained cases."""
    by_score = rows.sort_values("score", ascending=False, kind="stable")
    known = by_score[by_score["truth"].notna()]
    if positive is not None:
        said = known["explained"] == positive
        truly = known["truth"] == positive
        return [
            ("True positives", known[said & truly]),
            ("False positives", known[said & ~truly]),
            ("False negatives", known[~said & truly]),
        ]
    if classes:
        right = known["explained"] == known["truth"]
        return [("Correct", known[right]), ("Wrong", known[~right])]
    return [("Highest output", by_score), ("Lowest output", by_score.iloc[::-1])]


def _attribution_chart(rows: pd.DataFrame):
    rows = rows.iloc[::-1]  # largest at the top
    fig = plots.new_figure(5.0, 0.45 * len(rows) + 1.2)
    ax = fig.add_subplot()
    ax.barh(rows["input"], rows["mean_abs_attribution"], color="#4a6fa5")
    for y, (value, share) in enumerate(
        zip(rows["mean_abs_attribution"], rows["share"], strict=True)
    ):
        ax.text(value, y, f" {share:.0%}", va="center", fontsize=8)
    ax.set_xlabel("mean |attribution| (output units)")
    ax.margins(x=0.15)
    return fig
