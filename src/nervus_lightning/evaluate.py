"""``python -m nervus_lightning.evaluate predictions=PATH``: rebuild a run's evaluation report.

This module owns the step from a run folder's files to its ``evaluation/`` folder:
:func:`evaluate_run` reads ``predictions.csv``, the ``schema.json`` next to it and, when the run
has them, ``.hydra/config.yaml`` (shown at the top of the report) and ``learning_curve.csv``, then
calls :func:`nervus_lightning.evaluation.report.evaluate_predictions`, which writes
``metrics.csv`` (with bootstrap confidence intervals), figures and ``report.html``.

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

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from nervus_lightning.__main__ import report_user_error
from nervus_lightning.config import config_dir
from nervus_lightning.data.schema import NervusInputError

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
THRESHOLD_METHODS = ("youden", "sensitivity")


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


def _truth_columns(label: Mapping) -> list[str]:
    columns = [label["name"]]
    if label.get("task") == "survival" and label.get("period"):
        columns.append(label["period"])
    return columns


def _prediction_columns(label: Mapping) -> list[str]:
    name, task = label["name"], label.get("task")
    if task == "classification":
        return [f"prob_{name}_{c}" for c in label.get("classes") or []]
    if task == "regression":
        return [f"pred_{name}"]
    if task == "survival":
        return [f"risk_{name}"]
    raise NervusInputError(
        f"schema.json: label {name!r} has task {task!r}; expected classification, regression or "
        "survival."
    )


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
        missing = [c for c in _prediction_columns(label) if c not in predictions.columns]
        if missing:
            raise NervusInputError(
                f"{source} lacks the prediction column(s) {missing} of label {label['name']!r} "
                "named by the schema.json next to it; the two files come from different runs."
            )
        truth = _truth_columns(label)
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
    threshold: str = "youden",
    target_sensitivity: float = 0.9,
    positive_class: Mapping[str, str] | None = None,
    train_figures: bool = False,
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
            with sensitivity at least ``target_sensitivity``).
        target_sensitivity: used by ``threshold="sensitivity"``.
        positive_class: label name -> positive class of a binary label (default: the last
            class of the label, in the schema's order).
        train_figures: also draw the ``train`` split in the report's figures (its metrics are
            always computed).

    Returns:
        The rows of ``metrics.csv``: ``split, group, label, metric, value, ci_lower, ci_upper``.

    Raises:
        NervusInputError: a missing or unreadable file, predictions that do not match their
            schema, or an invalid option.
    """
    from nervus_lightning.evaluation.report import evaluate_predictions

    predictions_path = Path(predictions_path)
    if not predictions_path.is_file():
        raise NervusInputError(
            f"predictions file not found: {predictions_path}. Pass predictions=PATH of the "
            "predictions.csv in a run folder."
        )
    if threshold not in THRESHOLD_METHODS:
        raise NervusInputError(
            f"evaluation.threshold={threshold!r} is not one of {list(THRESHOLD_METHODS)}."
        )
    if not 0 < ci < 1:
        raise NervusInputError(f"evaluation.ci={ci} must be between 0 and 1 (e.g. 0.95).")
    if not 0 < target_sensitivity <= 1:
        raise NervusInputError(
            f"evaluation.target_sensitivity={target_sensitivity} must be in (0, 1]."
        )
    if n_bootstrap < 0:
        raise NervusInputError(f"evaluation.n_bootstrap={n_bootstrap} must be 0 or more.")

    run_dir = predictions_path.parent
    schema = _read_schema(predictions_path)
    try:
        predictions = pd.read_csv(predictions_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise NervusInputError(f"{predictions_path} could not be read as CSV: {err}") from err
    schema = _evaluable_schema(predictions, schema, predictions_path)

    settings = {
        "n_bootstrap": int(n_bootstrap),
        "ci": float(ci),
        "seed": int(seed),
        "threshold": threshold,
        "target_sensitivity": float(target_sensitivity),
        "positive_class": dict(positive_class) if positive_class else None,
        "train_figures": bool(train_figures),
    }
    config_summary: dict[str, Any] = {"predictions": str(predictions_path)}
    run_config = _run_config(run_dir)
    if run_config:
        config_summary["run"] = run_config
    config_summary["evaluation"] = {k: v for k, v in settings.items() if v is not None}

    out = Path(out_dir) if out_dir is not None else run_dir / EVALUATION_DIR
    metrics = evaluate_predictions(
        predictions,
        schema,
        out,
        n_bootstrap=settings["n_bootstrap"],
        ci=settings["ci"],
        seed=settings["seed"],
        threshold_method=threshold,
        target_sensitivity=settings["target_sensitivity"],
        positive_class=settings["positive_class"],
        config_summary=config_summary,
        learning_curve=_learning_curve(run_dir),
        train_figures=settings["train_figures"],
    )
    log.info("evaluation of %s written to %s", predictions_path, out)
    return metrics


@hydra.main(config_path=config_dir(), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "predictions"):
            raise NervusInputError(
                "no predictions file given; run "
                "`python -m nervus_lightning.evaluate predictions=PATH/predictions.csv`."
            )
        options = OmegaConf.to_container(cfg.evaluation, resolve=True)
        evaluate_run(cfg.predictions, cfg.get("out"), **options)
    except NervusInputError as err:
        report_user_error(err)


if __name__ == "__main__":
    main()
