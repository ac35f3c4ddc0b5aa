"""``python -m nervus_lightning.evaluate predictions=PATH``: rebuild a run's evaluation report.

This module owns the step from a run folder's files to its ``evaluation/`` folder:
:func:`evaluate_run` reads ``predictions.csv``, the ``schema.json`` next to it and, when the run
has them, ``model_summary.json`` (what was trained, shown at the top of the report),
``.hydra/config.yaml`` (shown folded at the end) and ``learning_curve.csv``, then
calls :func:`nervus_lightning.evaluation.report.evaluate_predictions`, which writes
``metrics.csv`` (with confidence intervals), figures and ``report.html``.

Training and prediction call :func:`evaluate_run` at their end; the command line re-runs it on an
existing run, e.g. with more bootstrap resamples or another threshold rule::

    python -m nervus_lightning.evaluate predictions=outputs/2025-01-01/12-00-00/predictions.csv \
        evaluation.n_bootstrap=2000 evaluation.threshold=sensitivity \
        evaluation.target_sensitivity=0.95
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.report import evaluate_predictions
from nervus_lightning.tasks.base import evaluation_options
from nervus_lightning.tasks.registry import task_class

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
# pandas' default missing-value markers, kept for the numeric columns.
_DEFAULT_NA = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip


def _read_schema(predictions_path: Path) -> dict:
    schema_path = predictions_path.parent / "schema.json"
    if not schema_path.is_file():
        raise NervusInputError(
            f"schema.json not found next to {predictions_path} (looked for {schema_path}). "
            "The evaluation needs the schema that training or prediction wrote into the same "
            "folder as predictions.csv; copy it there."
        )
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NervusInputError(f"{schema_path} is not valid JSON: {err}") from err
    if not isinstance(schema, dict) or not schema.get("labels"):
        raise NervusInputError(
            f"{schema_path} names no labels; it is not a nervus_lightning schema.json."
        )
    return schema


def _evaluable_schema(predictions: pd.DataFrame, schema: dict, source: Path) -> dict:
    """The schema restricted to the labels whose true values are in the predictions.

    A prediction CSV may lack some (or all) true labels, e.g. an external set labelled for one
    target only; those labels are skipped. Missing prediction columns mean the schema belongs to
    another run, which is an error.
    """
    if "split" not in predictions.columns:
        raise NervusInputError(f"{source} has no 'split' column; it is not a predictions.csv.")
    labels, skipped = [], []
    for label in schema["labels"]:
        task = task_class(label.get("task"), f"schema.json: label {label['name']!r} task")
        missing = [c for c in task.score_columns(label) if c not in predictions.columns]
        if missing:
            raise NervusInputError(
                f"{source} lacks the prediction column(s) {missing} of label {label['name']!r} "
                "named by the schema.json next to it; the two files come from different runs."
            )
        truth = task.truth_columns(label)
        if all(c in predictions.columns for c in truth) and predictions[truth].notna().any().all():
            labels.append(label)
        else:
            skipped.append(label["name"])
    if not labels:
        raise NervusInputError(
            f"{source} has no true values for any label of its schema "
            f"({[lab['name'] for lab in schema['labels']]}); there is nothing to evaluate. "
            "Predict on a CSV that has the label columns to get metrics."
        )
    if skipped:
        log.warning("no true values for label(s) %s in %s: not evaluated", skipped, source)
    group = schema.get("group") or schema.get("group_column")
    if group and group not in predictions.columns:
        log.warning("group column %r is not in %s: metrics are not split by group", group, source)
        group = None
    return {**schema, "labels": labels, "group": group}


def check_evaluation_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``evaluation.*`` settings (names and values) before any work; return them.

    ``threshold``, ``target_sensitivity`` and ``positive_class`` may be ``None`` (use the
    model's stored contract). Positive class *names* are checked against the labels where the
    labels are known (``NervusModule``, or ``schema.json`` in :func:`evaluate_run`). The
    settings are declared once: the shared ones in
    :class:`~nervus_lightning.evaluation.options.EvaluationOptions`, each task kind's in its
    ``options_class`` (:func:`~nervus_lightning.tasks.base.evaluation_options` checks both).
    """
    options = dict(options)
    evaluation_options(options)
    return options


def read_predictions(path: Path, schema: Mapping) -> pd.DataFrame:
    """Read ``predictions.csv`` with class columns as text, exactly as written.

    Class names such as ``"01"``, ``"1.0"``, ``"True"`` or ``"NA"`` must not be turned into
    numbers, booleans or missing values; only an empty cell is a missing label.
    """
    text_columns = []
    for label in schema.get("labels", []):
        if label.get("classes"):
            text_columns += [label["name"], f"pred_{label['name']}"]
    text_columns += ["split", "uniqID"]
    if schema.get("group"):
        text_columns.append(schema["group"])
    try:
        header = pd.read_csv(path, nrows=0).columns
        text = [c for c in text_columns if c in header]
        return pd.read_csv(
            path,
            dtype={c: str for c in text},
            keep_default_na=False,
            na_values={c: [""] for c in text} | {c: _DEFAULT_NA for c in header if c not in text},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise NervusInputError(f"{path} could not be read as CSV: {err}") from err


def _run_config(run_dir: Path) -> dict | None:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    config = OmegaConf.load(path)
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except Exception:  # an interpolation that only Hydra can resolve; show it as written
        plain = OmegaConf.to_container(config, resolve=False)
    plain.pop("hydra", None)
    return plain


def _model_summary(run_dir: Path) -> dict | None:
    """``model_summary.json`` of a training run (None for a prediction folder or an older run)."""
    path = run_dir / "model_summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; the report has no model summary", path)
        return None
    return summary if isinstance(summary, dict) else None


def _learning_curve(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "learning_curve.csv"
    if not path.is_file():
        return None
    curve = pd.read_csv(path)
    return curve if "epoch" in curve.columns and not curve.empty else None


def evaluate_run(
    predictions_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    threshold: str | None = None,
    target_sensitivity: float | None = None,
    positive_class: Mapping[str, str] | None = None,
    train_figures: bool = False,
    train_metrics: bool = True,
    max_rows_exact: int = 100_000,
    max_rows_bootstrap: int = 5_000,
    proportion_ci: str = "wilson",
) -> pd.DataFrame:
    """Write the evaluation report of a run's ``predictions.csv``.

    The keyword arguments are those of the ``evaluation:`` config block, so a caller holding a
    config may pass ``**cfg.evaluation``.

    Args:
        predictions_path: a ``predictions.csv`` written by training or prediction; the
            ``schema.json`` of the same run must be in the same folder.
        out_dir: where ``metrics.csv``, ``metrics_notes.csv``, ``figures/`` and ``report.html``
            go; default ``<folder of predictions_path>/evaluation``.
        n_bootstrap: bootstrap resamples per confidence interval; 0 skips the intervals.
        ci: confidence level of the intervals, in (0, 1).
        seed: seed of the bootstrap.
        threshold: how binary operating thresholds are chosen on ``val``: ``"youden"``
            (maximum sensitivity + specificity - 1) or ``"sensitivity"`` (the best specificity
            with sensitivity at least ``target_sensitivity``). ``None`` (default): the model's
            contract stored in ``schema.json`` -- its method and the threshold it chose on the
            training run's ``val`` split. A value that differs from the contract is an override:
            the threshold is re-chosen on ``val`` of these predictions, said in the log and in
            ``metrics_notes.csv``.
        target_sensitivity: used by ``threshold="sensitivity"``; ``None``: the stored one.
        positive_class: label name -> positive class of a binary label; ``None``: the stored
            one (an override when it differs, as for ``threshold``).
        train_figures: also draw the ``train`` split in the report's figures.
        train_metrics: compute the ``train`` split's metrics (``False``: ``metrics.csv`` and the
            report have no ``train`` rows; training aggregates are still used).
        max_rows_exact: a split with more cases computes its censoring-weighted survival
            metrics (Uno's C, td-AUC, IBS) on a seeded random subsample of this many cases
            (Harrell's C and the log-rank test use every case); said in ``metrics_notes.csv``.
        max_rows_bootstrap: a split with more cases is bootstrapped with resamples of this
            many cases (m-out-of-n, intervals rescaled to the split's size; see
            :mod:`nervus_lightning.evaluation.bootstrap`); said in ``metrics_notes.csv``.
        proportion_ci: interval of the proportions at the operating point (sensitivity,
            specificity, PPV, NPV, accuracy): ``"wilson"`` (score interval) or ``"exact"``
            (Clopper-Pearson); see :mod:`nervus_lightning.evaluation.intervals`. These and the
            AUROC's score interval are given even with ``n_bootstrap=0``.

    Returns:
        The rows of ``metrics.csv``: ``split, group, label, metric, value, ci_lower, ci_upper,
        ci_method``.

    Raises:
        NervusInputError: a missing or unreadable file, predictions that do not match their
            schema, or an invalid option.
    """
    predictions_path = Path(predictions_path)
    if not predictions_path.is_file():
        raise NervusInputError(
            f"predictions file not found: {predictions_path}. Pass predictions=PATH of the "
            "predictions.csv in a run folder."
        )
    options = evaluation_options(
        {
            "n_bootstrap": n_bootstrap,
            "ci": ci,
            "seed": seed,
            "threshold": threshold,
            "target_sensitivity": target_sensitivity,
            "positive_class": positive_class,
            "train_figures": train_figures,
            "train_metrics": train_metrics,
            "max_rows_exact": max_rows_exact,
            "max_rows_bootstrap": max_rows_bootstrap,
            "proportion_ci": proportion_ci,
        }
    )

    run_dir = predictions_path.parent
    schema = _read_schema(predictions_path)
    predictions = read_predictions(predictions_path, schema)
    schema = _evaluable_schema(predictions, schema, predictions_path)

    config_summary: dict[str, Any] = {"predictions": str(predictions_path)}
    run_config = _run_config(run_dir)
    if run_config:
        config_summary["run"] = run_config
    config_summary["evaluation"] = {k: v for k, v in options.to_dict().items() if v is not None}

    out = Path(out_dir) if out_dir is not None else run_dir / EVALUATION_DIR
    metrics = evaluate_predictions(
        predictions,
        schema,
        out,
        options,
        config_summary=config_summary,
        learning_curve=_learning_curve(run_dir),
        model_summary=_model_summary(run_dir),
        explain_dir=run_dir / "explain",
    )
    log.info("evaluation of %s written to %s", predictions_path, out)
    return metrics
