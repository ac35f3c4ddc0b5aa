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
  each task's ``figures`` from the arrays its ``evaluate`` keeps per split x group;
- ``report.html``: one offline page (:mod:`nervus_lightning.evaluation.report_page`), with the
  run's explanations when it has them (:mod:`nervus_lightning.evaluation.explanations`).

What a label's metrics, notes, tables and figures are is its task's business: each label is
evaluated by ``task_class(label["task"]).evaluate`` and drawn by ``.figures`` (the classes of
:mod:`nervus_lightning.tasks`, one per kind; the pieces they share are in
:mod:`nervus_lightning.evaluation.sections`), with the settings checked once into an
:class:`~nervus_lightning.evaluation.options.EvaluationOptions`. This module only puts them
together: it checks the predictions against the schema, writes the tables and the page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.diagnostics import run_warnings
from nervus_lightning.evaluation.explanations import explanations
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.evaluation.report_page import _TEMPLATES, render_report
from nervus_lightning.evaluation.sections import (
    METRIC_COLUMNS,
    EvalContext,
    LabelSection,
    split_order,
)
from nervus_lightning.tasks.base import evaluation_options
from nervus_lightning.tasks.registry import task_class

# Where users and tests found them before the page and the explanations had modules of their own.
__all__ = [
    "METRIC_COLUMNS",
    "_TEMPLATES",
    "evaluate_predictions",
    "explanations",
    "render_report",
    "select_figures",
]

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
    options: EvaluationOptions | None = None,
    *,
    config_summary: dict | None = None,
    learning_curve: pd.DataFrame | None = None,
    explain_dir: str | Path | None = None,
    model_summary: Mapping | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """Evaluate a run's predictions; write metrics.csv, figures and report.html to ``out_dir``.

    Args:
        predictions: the run's ``predictions.csv`` as a DataFrame.
        schema: the run's ``schema.json`` (labels with task and classes, group column).
        out_dir: folder for ``metrics.csv``, ``metrics_notes.csv``, ``figures/``, ``report.html``.
        options: the evaluation settings, checked
            (:func:`nervus_lightning.tasks.base.evaluation_options`); ``None``: ``settings``.
        config_summary: run configuration shown, folded, at the end of the report (nested dicts
            allowed).
        learning_curve: per-epoch losses/metrics (an ``epoch`` column and numeric columns).
        explain_dir: the run's ``explain`` folder; where it holds ``cases.csv`` and
            ``attribution.csv``, the report shows a gallery of overlays and an attribution chart
            per label.
        model_summary: what was trained (see :func:`nervus_lightning.outputs.model_summary`),
            shown at the top of the report; its ``best_epoch`` is marked on the learning curves.
        **settings: instead of ``options``, the ``evaluation.*`` settings as keywords
            (``n_bootstrap=0``, ``threshold="sensitivity"``...; see
            :func:`nervus_lightning.workflows.evaluate.evaluate_run`), checked here.
            Classification's
            ``threshold``, ``target_sensitivity`` and ``positive_class`` left out keep the
            contract stored in the schema; a value that differs from it re-chooses the
            threshold on ``val``.

    Returns:
        The rows of ``metrics.csv`` (columns ``split, group, label, metric, value, ci_lower,
        ci_upper``).

    Raises:
        NervusInputError: a bad setting.
        ValueError: predictions that do not match the schema.
    """
    if options is not None and settings:
        raise TypeError(
            f"evaluate_predictions takes the settings as options or as keywords, not both "
            f"(got options and {sorted(settings)})"
        )
    options = evaluation_options(settings if options is None else options)
    group_column = _validate(predictions, schema)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predictions.reset_index(drop=True).copy()
    predictions["split"] = predictions["split"].astype(str)
    splits = split_order([s for s in predictions["split"].unique() if s != "exclude"])
    if not options.train_metrics and len(splits) > 1:
        splits = [s for s in splits if s != "train"]
    ctx = EvalContext.of_options(
        options,
        splits=splits,
        group_column=group_column,
        out_dir=out_dir,
        time_unit=schema.get("time_unit"),
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
    method = metrics["ci_method"].mask(metrics["ci_method"] == "")  # replace() warns (pandas 2)
    metrics["ci_method"] = method.astype(float) if method.isna().all() else method
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    notes = all_rows[all_rows["note"] != ""][["split", "group", "label", "metric", "note"]]
    notes.to_csv(out_dir / "metrics_notes.csv", index=False)

    # Silent failures (overfitted, worse than the reference without inputs, collapsed,
    # diverged), from validation and training rows only: in the log and atop the report.
    found = run_warnings(
        metrics,
        [label["name"] for label in schema["labels"]],
        predictions,
        learning_curve,
        linear_start_kept=bool((model_summary or {}).get("linear_start_kept")),
        linear_starts=(model_summary or {}).get("linear_start"),
    )
    for message in found:
        log.warning("%s", message)
    metrics.attrs["warnings"] = found

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
        learning_curve, warnings=found,
    )  # fmt: skip
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return metrics
