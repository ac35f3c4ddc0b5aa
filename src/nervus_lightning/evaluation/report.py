"""Evaluation of a run's predictions: metrics table, figures and a self-contained HTML report.

:func:`evaluate_predictions` turns ``predictions.csv`` + ``schema.json`` of a run into

- ``metrics.csv``: one row per split x group x label x metric with columns
  ``split, group, label, metric, value, ci_lower, ci_upper`` (``group`` is ``all`` for the whole
  split, else one value of the schema's group column; CIs are percentile bootstrap intervals);
- ``metrics_notes.csv``: the same keys with a ``note`` wherever a value or interval needs one
  (why it is missing, where the threshold came from, skipped resamples);
- ``figures/<label>/<split>_<kind>.png`` and ``report.html``: one offline page, figures embedded.

Survival labels get the metrics of :mod:`nervus_lightning.survival.metrics` with CIs, a
Kaplan-Meier figure by training-defined risk group per split, and calibration at the middle
evaluation time (``survival_calibration_<label>.csv``, a table and a figure per split).

Binary operating thresholds are chosen on the ``val`` split (``train`` when there is no usable
``val``, said in the report) and applied unchanged to every other split. Classification CIs come
from a bootstrap stratified by true class, regression and survival CIs from a plain one (see
:mod:`nervus_lightning.evaluation.bootstrap`).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.bootstrap import (
    BootstrapCI,
    bootstrap_distributions,
    percentile_interval,
    weighted_bootstrap_distributions,
    weighted_classification_metrics,
    weighted_regression_metrics,
)
from nervus_lightning.evaluation.metrics import (
    MetricValues,
    classification_metrics,
    is_missing_label,
    regression_metrics,
)
from nervus_lightning.evaluation.survival_calibration import (
    plot_survival_calibration,
    survival_calibration_table,
)
from nervus_lightning.evaluation.thresholds import choose_threshold
from nervus_lightning.survival.metrics import assign_risk_groups, survival_metrics
from nervus_lightning.survival.plots import plot_km_risk_groups
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.tasks.classification import obvious_positive_class

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["split", "group", "label", "metric", "value", "ci_lower", "ci_upper"]
ALL_GROUPS = "all"
_SPLIT_RANK = {"train": 0, "val": 1, "test": 2, "external": 3}
_THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


@dataclass
class EvalContext:
    """Settings shared by all labels of one evaluation."""

    splits: list[str]
    group_column: str | None
    out_dir: Path
    n_bootstrap: int
    ci: float
    seed: int
    #: Overrides of the stored evaluation contract (None / empty: use the stored one).
    threshold_method: str | None
    target_sensitivity: float | None
    positive_class: Mapping[str, str]


@dataclass
class LabelSection:
    """What one label contributes: metric rows, figures, data summary and notes."""

    name: str
    task: str
    rows: list[dict] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png)
    summary: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)

    def add(
        self,
        split: str,
        group: str,
        metric: str,
        value: float | None,
        interval: BootstrapCI | None = None,
        note: str | None = None,
    ) -> None:
        lower = upper = None
        notes = [note] if note else []
        if interval is not None and value is not None:
            lower, upper = interval.lower, interval.upper
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
                "note": "; ".join(notes),
            }
        )


# --------------------------------------------------------------------------------------------
# Helpers


def split_order(splits: list[str]) -> list[str]:
    """train, val, test, external, then external_<name> and anything else alphabetically."""

    def rank(s: str) -> tuple[int, str]:
        if s in _SPLIT_RANK:
            return _SPLIT_RANK[s], ""
        return (4, s) if s.startswith("external_") else (5, s)

    return sorted(splits, key=rank)


def _class_name(value: object) -> object:
    """CSV readers turn class '1' into 1 or 1.0; map those back to the schema's string."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return value


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _subsets(df: pd.DataFrame, ctx: EvalContext) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(split, group, rows) for every split, the whole split first, then each group."""
    for split in ctx.splits:
        in_split = df[df["split"] == split]
        yield split, ALL_GROUPS, in_split
        if ctx.group_column:
            groups = in_split[ctx.group_column]
            for value in sorted(groups.dropna().astype(str).unique()):
                yield split, value, in_split[groups.astype(str) == value]


def _where(split: str, group: str) -> str:
    """Figure name and caption part of a subset: the split, or ``split, group <value>``."""
    return split if group == ALL_GROUPS else f"{split}, group {group}"


def _intervals(distributions: dict[str, np.ndarray], ci: float) -> dict[str, BootstrapCI]:
    with warnings.catch_warnings():
        # Skipped resamples are reported per row in the notes instead of as warnings.
        warnings.simplefilter("ignore", RuntimeWarning)
        return {name: percentile_interval(values, ci) for name, values in distributions.items()}


def _add_metrics(
    section: LabelSection,
    split: str,
    group: str,
    point: MetricValues,
    intervals: Mapping[str, BootstrapCI],
    extra_note: Callable[[str], str | None],
) -> None:
    for metric, value in point.items():
        notes = [n for n in (point.reasons.get(metric), extra_note(metric)) if n]
        section.add(split, group, metric, value, intervals.get(metric), "; ".join(notes) or None)


def _figure(
    section: LabelSection, ctx: EvalContext, split: str, kind: str, caption: str, fig: object
) -> None:
    path = ctx.out_dir / "figures" / _safe_name(section.name) / f"{_safe_name(split)}_{kind}.png"
    plots.save_figure(fig, path)
    section.figures.append((caption, path))


# --------------------------------------------------------------------------------------------
# Classification


def _binary_threshold(
    y: pd.Series,
    score: np.ndarray,
    split: pd.Series,
    positive: str,
    method: str,
    target: float,
    section: LabelSection,
    stored: float | None = None,
    overrides: list[str] | None = None,
) -> tuple[float | None, str | None]:
    """The operating threshold of a binary label and the split it was chosen on.

    The model's contract comes first: the threshold chosen on the training run's ``val`` split
    (stored in the checkpoint and ``schema.json``) is applied unchanged, whether or not these
    predictions hold ``val`` rows. When the user overrides the contract (another method, target
    sensitivity or positive class), the threshold is re-chosen on ``val`` of these predictions,
    and it is an error if there is none. Without a stored threshold (the training ``val`` split
    lacked a class), it is chosen on ``val``, else on ``train`` (flagged optimistic), else the
    arg-max class is used -- each said in the notes.
    """
    how = method if method == "youden" else f"sensitivity >= {target:g}"
    if overrides:
        section.notes.append(
            "Evaluation contract overridden: " + "; ".join(overrides) + ". The threshold is "
            "re-chosen on 'val' of these predictions instead of the stored one."
        )
    elif stored is not None:
        section.notes.append(
            f"Threshold {stored:.4g} chosen on the training run's 'val' split ({how}) and "
            "applied unchanged to every split."
        )
        return float(stored), "val"
    candidates = ("val",) if overrides else ("val", "train")
    for candidate in candidates:
        use = (split == candidate).to_numpy()
        y_pos = (y[use] == positive).to_numpy()
        if y_pos.any() and not y_pos.all():
            threshold = choose_threshold(y_pos, score[use], method, target)
            if candidate == "train":
                section.notes.append(
                    f"No 'val' split with both classes: the threshold ({how}) was chosen on "
                    "'train', so threshold-based metrics on 'train' are optimistic."
                )
            else:
                section.notes.append(
                    f"Threshold {threshold:.4g} chosen on 'val' ({how}) and "
                    "applied unchanged to the other splits."
                )
            return threshold, candidate
    if overrides:
        raise NervusInputError(
            f"label {section.name!r}: " + "; ".join(overrides) + " needs a new threshold, but "
            "these predictions have no 'val' rows with both classes to choose it on. Drop the "
            "override to use the threshold stored with the model, or add validation rows "
            "(split=val) to the CSV."
        )
    section.notes.append(
        "No threshold stored with the model and neither 'val' nor 'train' has both classes: "
        "threshold-based metrics use the arg-max class."
    )
    warnings.warn(
        f"label {section.name!r}: no operating threshold available; using the arg-max class",
        RuntimeWarning,
        stacklevel=2,
    )
    return None, None


def _threshold_note(fitted_on: str | None, overrides: list[str]) -> str:
    note = f"chosen on '{fitted_on}'" if fitted_on else "arg-max (none chosen)"
    if overrides:
        note += "; contract overridden at evaluation: " + "; ".join(overrides)
    return note


def _contract(label: Mapping, ctx: EvalContext, classes: list[str]) -> tuple[str, str, float, list]:
    """Positive class, threshold method and target sensitivity of a binary label: the stored
    contract of ``schema.json`` unless the evaluation settings override it (listed)."""
    name = label["name"]
    stored_positive = label.get("positive_class")
    positive = ctx.positive_class.get(name)
    if positive is not None:
        positive = str(positive)
    positive = positive or stored_positive or obvious_positive_class(classes)
    if positive is None:
        raise NervusInputError(
            f"binary label {name!r} has classes {classes} and its schema.json names no positive "
            f"class: pass evaluation.positive_class={{{name}:<class>}}."
        )
    if positive not in classes:
        raise NervusInputError(
            f"evaluation.positive_class.{name}={positive!r} is not one of its classes {classes}."
        )
    stored_method = label.get("threshold_method")
    method = ctx.threshold_method or stored_method or "youden"
    stored_target = label.get("target_sensitivity")
    target = ctx.target_sensitivity
    if target is None:
        target = stored_target if stored_target is not None else 0.9
    overrides = []
    if stored_positive is not None and positive != stored_positive:
        overrides.append(f"positive class {positive!r} instead of the stored {stored_positive!r}")
    if stored_method is not None and method != stored_method:
        overrides.append(f"threshold method {method!r} instead of the stored {stored_method!r}")
    elif method == "sensitivity" and stored_target is not None and target != stored_target:
        overrides.append(f"target sensitivity {target:g} instead of the stored {stored_target:g}")
    return positive, method, float(target), overrides


def evaluate_classification(df: pd.DataFrame, label: Mapping, ctx: EvalContext) -> LabelSection:
    """Metrics with CIs and figures of one classification label."""
    name = label["name"]
    classes = [str(c) for c in label["classes"]]
    section = LabelSection(name, "classification")
    prob_columns = [f"prob_{name}_{c}" for c in classes]
    y_all = df[name].map(_class_name)
    known = ~is_missing_label(y_all.to_numpy())
    unknown = sorted(set(y_all[known].astype(str)) - set(classes))
    if unknown:
        raise ValueError(
            f"column {name!r} has values {unknown} that are not among the schema's "
            f"classes {classes}; check schema.json against predictions.csv"
        )
    df = df[known].assign(**{name: y_all[known].astype(str)})
    if (~known).any():
        section.notes.append(
            f"{int((~known).sum())} case(s) without a true {name!r} are left out of its metrics."
        )
    prob = df[prob_columns].to_numpy(dtype=float)
    binary = len(classes) == 2
    positive, threshold, fitted_on, overrides = None, None, None, []
    if binary:
        positive, method, target, overrides = _contract(label, ctx, classes)
        if overrides:
            log.warning("label %r: %s", name, "; ".join(overrides))
        score = prob[:, classes.index(positive)]
        threshold, fitted_on = _binary_threshold(
            df[name],
            score,
            df["split"],
            positive,
            method,
            target,
            section,
            stored=label.get("threshold"),
            overrides=overrides,
        )
        section.notes.append(f"Positive class: {positive!r}.")

    def extra_note(split: str) -> Callable[[str], str | None]:
        def note(metric: str) -> str | None:
            if binary and split == fitted_on and metric in _THRESHOLD_METRICS:
                return "threshold chosen on this split (optimistic)"
            return None

        return note

    summary: dict[str, dict[str, str]] = {}
    for split, group, rows in _subsets(df, ctx):
        if rows.empty:
            continue
        y = rows[name].to_numpy(dtype=object)
        p = prob[df.index.get_indexer(rows.index)]
        point = classification_metrics(y, p, classes, positive_class=positive, threshold=threshold)
        intervals: dict[str, BootstrapCI] = {}
        if ctx.n_bootstrap > 0:
            y_idx = np.array([classes.index(v) for v in y])
            pos_index = classes.index(positive) if binary else None
            distributions = weighted_bootstrap_distributions(
                partial(
                    weighted_classification_metrics,
                    classes=classes,
                    positive_index=pos_index,
                    threshold=threshold,
                ),
                y_idx,
                p,
                n_resamples=ctx.n_bootstrap,
                seed=ctx.seed,
                strata=y_idx,
            )
            intervals = _intervals(distributions, ctx.ci)
        _add_metrics(section, split, group, point, intervals, extra_note(split))
        if binary:
            section.add(
                split,
                group,
                "threshold",
                threshold,
                note=_threshold_note(fitted_on, overrides),
            )
        if group == ALL_GROUPS:
            counts = pd.Series(y).value_counts()
            summary[split] = {
                c: f"{counts.get(c, 0)} ({counts.get(c, 0) / len(y):.1%})" for c in classes
            }
        _classification_figures(
            section, ctx, _where(split, group), y, p, classes, positive, threshold, intervals
        )
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    return section


def _classification_figures(
    section: LabelSection,
    ctx: EvalContext,
    split: str,
    y: np.ndarray,
    p: np.ndarray,
    classes: list[str],
    positive: str | None,
    threshold: float | None,
    intervals: Mapping[str, BootstrapCI],
) -> None:
    name = section.name
    if positive is not None:
        auc_ci = {positive: tuple(intervals["auroc"])} if "auroc" in intervals else {}
        ap_ci = {positive: tuple(intervals["ap"])} if "ap" in intervals else {}
    else:
        auc_ci = {c: tuple(intervals[f"auroc[{c}]"]) for c in classes if f"auroc[{c}]" in intervals}
        ap_ci = {}
    if len(set(y)) > 1:
        if positive is None and "auroc" in intervals:
            auc_ci[plots.MACRO] = tuple(intervals["auroc"])
        _figure(
            section,
            ctx,
            split,
            "roc",
            f"{name}, {split}: ROC curve",
            plots.plot_roc(
                y,
                p,
                classes,
                positive_class=positive,
                intervals=auc_ci,
                ci=ctx.ci,
                threshold=threshold,
                title=f"{name} - {split}",
            ),
        )
        _figure(
            section,
            ctx,
            split,
            "pr",
            f"{name}, {split}: precision-recall curve",
            plots.plot_precision_recall(
                y,
                p,
                classes,
                positive_class=positive,
                intervals=ap_ci,
                ci=ctx.ci,
                title=f"{name} - {split}",
            ),
        )
    if positive is not None and threshold is not None:
        negative = next(c for c in classes if c != positive)
        y_pred = np.where(p[:, classes.index(positive)] >= threshold, positive, negative)
        how = f"threshold {threshold:.3g}"
    else:
        y_pred = np.asarray(classes, dtype=object)[np.argmax(p, axis=1)]
        how = "arg-max class"
    _figure(
        section,
        ctx,
        split,
        "confusion",
        f"{name}, {split}: confusion matrix ({how})",
        plots.plot_confusion_matrix(y, y_pred, classes, title=f"{name} - {split} ({how})"),
    )
    _figure(
        section,
        ctx,
        split,
        "reliability",
        f"{name}, {split}: reliability diagram",
        plots.plot_reliability(y, p, classes, positive_class=positive, title=f"{name} - {split}"),
    )


# --------------------------------------------------------------------------------------------
# Regression


def evaluate_regression(df: pd.DataFrame, label: Mapping, ctx: EvalContext) -> LabelSection:
    """Metrics with CIs and figures of one regression label."""
    name = label["name"]
    section = LabelSection(name, "regression")
    y_all = pd.to_numeric(df[name], errors="coerce")
    known = y_all.notna().to_numpy()
    if (~known).any():
        section.notes.append(
            f"{int((~known).sum())} case(s) without a true {name!r} are left out of its metrics."
        )
    df = df[known]
    summary = {}
    for split, group, rows in _subsets(df, ctx):
        if rows.empty:
            continue
        y = pd.to_numeric(rows[name]).to_numpy(dtype=float)
        pred = pd.to_numeric(rows[f"pred_{name}"]).to_numpy(dtype=float)
        point = regression_metrics(y, pred)
        intervals: dict[str, BootstrapCI] = {}
        if ctx.n_bootstrap > 0:
            intervals = _intervals(
                weighted_bootstrap_distributions(
                    weighted_regression_metrics, y, pred, n_resamples=ctx.n_bootstrap, seed=ctx.seed
                ),
                ctx.ci,
            )
        _add_metrics(section, split, group, point, intervals, lambda _m: None)
        if group == ALL_GROUPS:
            summary[split] = {
                "n": len(y),
                "mean": y.mean(),
                "sd": y.std(ddof=1) if len(y) > 1 else np.nan,
                "median": np.median(y),
                "min": y.min(),
                "max": y.max(),
            }
        where = _where(split, group)
        _figure(
            section,
            ctx,
            where,
            "scatter",
            f"{name}, {where}: predicted vs true",
            plots.plot_regression_scatter(y, pred, label=name, title=f"{name} - {where}"),
        )
        _figure(
            section,
            ctx,
            where,
            "bland_altman",
            f"{name}, {where}: Bland-Altman",
            plots.plot_bland_altman(y, pred, label=name, title=f"{name} - {where}"),
        )
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    return section


# --------------------------------------------------------------------------------------------
# Survival


def _survival_reference(
    train: pd.DataFrame, label: Mapping, name: str, period: str
) -> tuple[SurvivalReference, list[str]]:
    """Training-split aggregates of a survival label: from the schema when it has them (fitted
    at training time), else fitted on the ``train`` rows of the predictions."""
    if all(label.get(k) is not None for k in SurvivalReference.JSON_KEYS):
        return SurvivalReference.from_json(dict(label)), [
            "Censoring distribution, baseline hazard, evaluation times and risk cut-points "
            "from the training run (schema.json)."
        ]
    train_time = train[period].to_numpy(dtype=float)
    train_event = train[name].to_numpy(dtype=float)
    train_risk = train[f"risk_{name}"].to_numpy(dtype=float)
    reference = SurvivalReference.fit(
        train_time,
        train_event,
        train_risk,
        eval_times=label.get("eval_times") or None,
        risk_cutpoints=label.get("risk_cutpoints") or None,
    )
    return reference, ["No survival reference in the schema: fitted on the 'train' rows."]


def evaluate_survival(df: pd.DataFrame, label: Mapping, ctx: EvalContext) -> LabelSection:
    """Survival metrics with CIs, Kaplan-Meier risk-group curves and calibration at one time.

    Metrics are those of :func:`nervus_lightning.survival.metrics.survival_metrics` (the
    log-rank p-value without an interval), bootstrapped unstratified; every resample recomputes
    all of them, so survival CIs cost about 10 ms x ``n_bootstrap`` per split and group.
    """
    name = label["name"]
    period = label["period"]
    risk_column = f"risk_{name}"
    section = LabelSection(name, "survival")
    values = df[[name, period, risk_column]].apply(pd.to_numeric, errors="coerce")
    known = values.notna().all(axis=1).to_numpy()
    if (~known).any():
        section.notes.append(
            f"{int((~known).sum())} case(s) without event, time or risk are "
            "left out of the survival metrics."
        )
    df = df[known].assign(**{c: values.loc[known, c] for c in values.columns})
    train = df[df["split"] == "train"]
    from_schema = all(label.get(k) is not None for k in SurvivalReference.JSON_KEYS)
    if not from_schema and (train.empty or not (train[name] != 0).any()):
        section.notes.append(
            "No 'train' split with events in the predictions: survival metrics "
            "need the training follow-up and were not computed."
        )
        return section
    reference, notes = _survival_reference(train, label, name, period)
    eval_times, cutpoints = reference.eval_times, reference.risk_cutpoints
    section.notes += notes
    calibration_time = float(np.median(eval_times))
    section.notes.append(
        f"Calibration at t = {calibration_time:g} (middle evaluation time); "
        "risk groups from the training cut-points "
        f"{', '.join(f'{c:.3g}' for c in cutpoints)}."
    )

    def metrics(
        time: np.ndarray, event: np.ndarray, risk: np.ndarray, reasons: dict[str, str] | None = None
    ) -> dict[str, float | None]:
        return survival_metrics(reference, time, event, risk, reasons=reasons)

    summary, calibration_tables = {}, []
    for split, group, rows in _subsets(df, ctx):
        if rows.empty:
            continue
        time = rows[period].to_numpy(dtype=float)
        event = rows[name].to_numpy(dtype=float)
        risk = rows[risk_column].to_numpy(dtype=float)
        reasons: dict[str, str] = {}
        point = metrics(time, event, risk, reasons)
        intervals: dict[str, BootstrapCI] = {}
        if ctx.n_bootstrap > 0 and len(rows) > 1:
            distributions = bootstrap_distributions(
                metrics, time, event, risk, n_resamples=ctx.n_bootstrap, seed=ctx.seed
            )
            distributions.pop("logrank_p", None)  # a p-value has no confidence interval
            intervals = _intervals(distributions, ctx.ci)
        section.add(split, group, "n", float(len(rows)))
        section.add(split, group, "events", float((event != 0).sum()))
        for metric, value in point.items():
            section.add(split, group, metric, value, intervals.get(metric), reasons.get(metric))
        if group == ALL_GROUPS:
            summary[split] = {
                "n": len(rows),
                "events": int((event != 0).sum()),
                "event rate": f"{(event != 0).mean():.1%}",
                "median time": float(np.median(time)),
            }
        where = _where(split, group)
        path = ctx.out_dir / "figures" / _safe_name(name) / f"{_safe_name(where)}_km.png"
        plot_km_risk_groups(
            time, event, assign_risk_groups(risk, cutpoints), path, title=f"{name} - {where}"
        )
        section.figures.append((f"{name}, {where}: Kaplan-Meier by risk group", path))
        predicted = reference.survival(risk, [calibration_time])[:, 0]
        table = survival_calibration_table(time, event, predicted, calibration_time)
        calibration_tables.append(table.assign(split=split, group=group))
        _figure(
            section,
            ctx,
            where,
            "calibration",
            f"{name}, {where}: calibration at t = {calibration_time:g}",
            plot_survival_calibration(table, calibration_time, title=f"{name} - {where}"),
        )
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    if calibration_tables:
        table = pd.concat(calibration_tables, ignore_index=True)
        table = table[["split", "group", *table.columns.drop(["split", "group"])]]
        table.to_csv(ctx.out_dir / f"survival_calibration_{_safe_name(name)}.csv", index=False)
        section.tables.append(
            (
                f"Calibration at t = {calibration_time:g} by bin of predicted "
                "survival (1 = highest risk)",
                table,
            )
        )
    return section


TASK_EVALUATORS: dict[str, Callable[[pd.DataFrame, Mapping, EvalContext], LabelSection]] = {
    "classification": evaluate_classification,
    "regression": evaluate_regression,
    "survival": evaluate_survival,
}


# --------------------------------------------------------------------------------------------
# Validation and entry point


def _required_columns(label: Mapping) -> list[str]:
    name = label["name"]
    task = label["task"]
    if task == "classification":
        return [name] + [f"prob_{name}_{c}" for c in label["classes"]]
    if task == "regression":
        return [name, f"pred_{name}"]
    if task == "survival":
        return [name, label["period"], f"risk_{name}"]
    raise ValueError(
        f"label {name!r} has unknown task {task!r}; expected one of {sorted(TASK_EVALUATORS)}"
    )


def _validate(predictions: pd.DataFrame, schema: Mapping) -> str | None:
    if "labels" not in schema or not schema["labels"]:
        raise ValueError("schema has no 'labels'")
    missing = [c for c in ("split",) if c not in predictions.columns]
    for label in schema["labels"]:
        missing += [c for c in _required_columns(label) if c not in predictions.columns]
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
        config_summary: run configuration shown at the top of the report (nested dicts allowed).
        learning_curve: per-epoch losses/metrics (an ``epoch`` column and numeric columns).

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
    )
    sections = [
        TASK_EVALUATORS[label["task"]](predictions, label, ctx) for label in schema["labels"]
    ]

    all_rows = pd.DataFrame(
        [row for s in sections for row in s.rows], columns=[*METRIC_COLUMNS, "note"]
    )
    metrics = all_rows[METRIC_COLUMNS].astype(
        {"value": float, "ci_lower": float, "ci_upper": float}
    )
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    notes = all_rows[all_rows["note"] != ""][["split", "group", "label", "metric", "note"]]
    notes.to_csv(out_dir / "metrics_notes.csv", index=False)

    curve_png = None
    if learning_curve is not None and not learning_curve.empty:
        curve_png = plots.save_figure(
            plots.plot_learning_curves(learning_curve), out_dir / "figures" / "learning_curves.png"
        )
    page = render_report(predictions, sections, ctx, config_summary, curve_png)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return metrics


# --------------------------------------------------------------------------------------------
# HTML


_CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{border-bottom:2px solid #446}h2{margin-top:2em;border-bottom:1px solid #aab}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.88em}
th,td{border:1px solid #ccd;padding:3px 7px;text-align:right}th{background:#eef}
td:first-child,th:first-child,td.key{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:380px}
figure img{width:100%;border:1px solid #ddd}figcaption{font-size:0.8em;color:#555}
.note{color:#555;font-size:0.85em}ul.notes{font-size:0.85em;color:#444}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


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
    if metric in ("n", "events"):
        return f"{value:.0f}"
    if metric == "logrank_p":
        return "< 0.001" if value < 0.001 else f"{value:.3f}"
    if metric in ("mae", "rmse", "threshold"):
        return f"{value:.4g}"
    return f"{value:.3f}"


def _metrics_table(section: LabelSection, ci: float) -> str:
    rows = section.rows
    metric_names = list(dict.fromkeys(r["metric"] for r in rows))
    keys = list(dict.fromkeys((r["split"], r["group"]) for r in rows))
    lookup = {(r["split"], r["group"], r["metric"]): r for r in rows}
    out = ["<table><tr><th>split</th><th>group</th>"]
    out += [f"<th>{html.escape(m)}</th>" for m in metric_names]
    out.append("</tr>")
    footnotes: list[str] = []
    for split, group in keys:
        out.append(
            f"<tr><td class=key>{html.escape(split)}</td><td class=key>{html.escape(group)}</td>"
        )
        for metric in metric_names:
            row = lookup.get((split, group, metric))
            if row is None:
                out.append("<td></td>")
                continue
            text = _fmt(row["value"], metric)
            if row["ci_lower"] is not None and row["ci_upper"] is not None:
                text += (
                    f"<br><span class=note>({_fmt(row['ci_lower'], metric)}, "
                    f"{_fmt(row['ci_upper'], metric)})</span>"
                )
            if row["note"] and metric != "threshold":
                footnotes.append(f"{split} / {group} / {metric}: {row['note']}")
                text += f"<sup>{len(footnotes)}</sup>"
            out.append(f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</table>")
    out.append(f"<p class=note>In brackets: {ci:.0%} percentile bootstrap confidence interval.</p>")
    if footnotes:
        out.append(
            "<ol class=notes>" + "".join(f"<li>{html.escape(f)}</li>" for f in footnotes) + "</ol>"
        )
    return "\n".join(out)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(
        index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, escape=True
    )


def render_report(
    predictions: pd.DataFrame,
    sections: list[LabelSection],
    ctx: EvalContext,
    config_summary: Mapping | None,
    learning_curve_png: Path | None,
) -> str:
    """The HTML page (a string) with everything embedded."""
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<title>nervus_lightning evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Evaluation report</h1>",
    ]
    if config_summary:
        parts.append("<h2>Configuration</h2>")
        parts.append(
            _table(
                pd.DataFrame(list(_flatten(config_summary)), columns=["setting", "value"]).astype(
                    str
                )
            )
        )

    parts.append("<h2>Data</h2>")
    counts = predictions.groupby("split").size().reindex(ctx.splits).rename("cases")
    frame = counts.to_frame()
    if ctx.group_column:
        by_group = pd.crosstab(predictions["split"], predictions[ctx.group_column].astype(str))
        frame = frame.join(by_group.reindex(ctx.splits).add_prefix(f"{ctx.group_column}="))
    parts.append(_table(frame.rename_axis("split").reset_index()))
    for section in sections:
        if section.summary is not None and not section.summary.empty:
            what = {
                "classification": "class balance",
                "regression": "distribution",
                "survival": "events and follow-up",
            }[section.task]
            parts.append(f"<h3>{html.escape(section.name)}: {what}</h3>")
            parts.append(_table(section.summary))

    if learning_curve_png is not None:
        parts.append("<h2>Learning curves</h2>")
        parts.append(f"<figure style='width:720px'>{_img(learning_curve_png)}</figure>")

    for section in sections:
        parts.append(f"<h2>{html.escape(section.name)} ({section.task})</h2>")
        if section.notes:
            parts.append(
                "<ul class=notes>"
                + "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
                + "</ul>"
            )
        if section.rows:
            parts.append(_metrics_table(section, ctx.ci))
        for caption, table in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(_table(table))
        if section.figures:
            parts.append("<div class=figs>")
            for caption, path in section.figures:
                parts.append(
                    f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
