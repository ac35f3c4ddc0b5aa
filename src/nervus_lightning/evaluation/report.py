"""Evaluation of a run's predictions: metrics table, figures and a self-contained HTML report.

:func:`evaluate_predictions` turns ``predictions.csv`` + ``schema.json`` of a run into

- ``metrics.csv``: one row per split x group x label x metric with columns
  ``split, group, label, metric, value, ci_lower, ci_upper`` (``group`` is ``all`` for the whole
  split, else one value of the schema's group column; CIs are percentile bootstrap intervals);
- ``metrics_notes.csv``: the same keys with a ``note`` wherever a value or interval needs one
  (why it is missing, where the threshold came from, skipped resamples);
- ``figures/<label>/<kind>.png``: the figures a reader needs, each with the splits overlaid or
  one panel per split (val, test, external; train only with ``train_figures``), chosen by
  :func:`select_figures` from the arrays the evaluators keep per split x group;
- ``report.html``: one offline page rendered by :func:`render_report` from
  ``templates/report.html.j2`` (jinja2, autoescaped): per label a headline table (test and
  external splits, val marked) and its figures first; data, learning curves, the full
  split x group tables and the configuration after it, the last two folded.

Survival labels get the metrics of :mod:`nervus_lightning.survival.metrics` with CIs, Kaplan-Meier
curves by training-defined risk group and calibration at the middle evaluation time
(``survival_calibration_<label>.csv``, a table and a figure, one panel per split).

Binary operating thresholds are chosen on the ``val`` split (``train`` when there is no usable
``val``, said in the report) and applied unchanged to every other split. Classification CIs come
from a bootstrap stratified by true class, regression and survival CIs from a plain one (see
:mod:`nervus_lightning.evaluation.bootstrap`).
"""

from __future__ import annotations

import base64
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jinja2
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
    ECE_BINS,
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
from nervus_lightning.survival.plots import plot_km_risk_group_panels
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
    train_figures: bool = False


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
        section.subsets.append(Subset(split, group, {"y": y, "prob": p}))
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    section.info.update(classes=classes, positive=positive, threshold=threshold)
    return section


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
        section.subsets.append(Subset(split, group, {"y": y, "pred": pred}))
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
        predicted = reference.survival(risk, [calibration_time])[:, 0]
        table = survival_calibration_table(time, event, predicted, calibration_time)
        calibration_tables.append(table.assign(split=split, group=group))
        section.subsets.append(
            Subset(
                split,
                group,
                {"time": time, "event": event, "risk_group": assign_risk_groups(risk, cutpoints)},
                calibration=table,
            )
        )
    section.info.update(calibration_time=calibration_time)
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
# Figure selection: which figures a reader needs, drawn from the subsets the evaluators kept

_SPLIT_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def figure_splits(section: LabelSection, ctx: EvalContext) -> list[str]:
    """Splits drawn in the figures: every evaluated split but ``train`` (unless
    ``ctx.train_figures``); ``train`` alone when it is the only split."""
    present = [s for s in ctx.splits if any(x.split == s for x in section.subsets)]
    shown = [s for s in present if s != "train" or ctx.train_figures]
    return shown or present


def split_styles(splits: list[str]) -> dict[str, dict[str, object]]:
    """One colour per split, the same in every figure; ``val`` dashed grey, ``train`` dotted."""
    styles: dict[str, dict[str, object]] = {}
    colours = iter(_SPLIT_COLOURS * 4)
    for split in splits:
        if split == "val":
            styles[split] = {"color": "#555555", "ls": "--"}
        elif split == "train":
            styles[split] = {"color": "#ff7f0e", "ls": ":"}
        else:
            styles[split] = {"color": next(colours)}
    return styles


def _main_split(splits: list[str]) -> str:
    """The split whose groups are compared: test, else the first external split, else val."""
    for split in splits:
        if split not in ("train", "val"):
            return split
    return "val" if "val" in splits else splits[0]


def _subset(section: LabelSection, split: str, group: str = ALL_GROUPS) -> Subset | None:
    return next((x for x in section.subsets if x.split == split and x.group == group), None)


def _interval(
    section: LabelSection, split: str, group: str, metric: str
) -> tuple[float, float] | None:
    for row in section.rows:
        if (row["split"], row["group"], row["metric"]) == (split, group, metric):
            if row["ci_lower"] is None or row["ci_upper"] is None:
                return None
            return float(row["ci_lower"]), float(row["ci_upper"])
    return None


def _save(section: LabelSection, ctx: EvalContext, kind: str, caption: str, fig: object) -> None:
    path = ctx.out_dir / "figures" / _safe_name(section.name) / f"{kind}.png"
    plots.save_figure(fig, path)
    section.figures.append((caption, path))


def _group_series(section: LabelSection, split: str, keys: tuple[str, str]) -> dict:
    """Group value -> arrays ``keys`` of the groups of ``split`` (empty without groups)."""
    return {
        x.group: tuple(x.arrays[k] for k in keys)
        for x in section.subsets
        if x.split == split and x.group != ALL_GROUPS
    }


def _both_classes(y: np.ndarray, classes: list[str], positive: str | None) -> bool:
    present = set(y)
    return positive in present and len(present) > 1 if positive else len(present) > 1


def classification_figures(section: LabelSection, ctx: EvalContext) -> None:
    """ROC and precision-recall curves with the splits overlaid (multi-class: one one-vs-rest
    panel per class), ROC by group on the main split, reliability diagram; confusion matrices
    per split for multi-class labels."""
    name, info = section.name, section.info
    classes, positive, threshold = info["classes"], info["positive"], info["threshold"]
    splits = figure_splits(section, ctx)
    styles = split_styles(splits)
    series = {s: (x.arrays["y"], x.arrays["prob"]) for s in splits if (x := _subset(section, s))}
    ci_text = f"{ctx.ci:.0%} bootstrap CI" if ctx.n_bootstrap > 0 else "no CI"
    val_text = " val (dashed) is the development split." if "val" in series else ""
    targets = [positive] if positive else classes
    auc_key = (lambda c: "auroc") if positive else (lambda c: f"auroc[{c}]")
    curves = {s: v for s, v in series.items() if _both_classes(v[0], classes, positive)}
    if curves:
        where = ", ".join(curves)
        if positive:
            what = (
                f"ROC curve of {name} ({positive!r} positive) on {where}, AUC with {ci_text}."
                + (
                    f" Dots: the operating point at threshold {threshold:.3g}."
                    if threshold is not None
                    else ""
                )
            )
        else:
            what = (
                f"One-vs-rest ROC curves of {name}, one panel per class, splits overlaid "
                f"({where}); per-class AUC with {ci_text}."
            )
        _save(
            section,
            ctx,
            "roc",
            what + val_text,
            plots.plot_roc(
                curves,
                classes,
                positive_class=positive,
                intervals={
                    s: {c: _interval(section, s, ALL_GROUPS, auc_key(c)) for c in targets}
                    for s in curves
                },
                ci=ctx.ci,
                threshold=threshold,
                styles=styles,
                title=f"{name}: ROC",
            ),
        )
        pr_intervals = (
            {s: {positive: _interval(section, s, ALL_GROUPS, "ap")} for s in curves}
            if positive
            else {}
        )
        _save(
            section,
            ctx,
            "pr",
            (
                f"Precision-recall curve of {name} ({positive!r} positive)"
                if positive
                else f"One-vs-rest precision-recall curves of {name}, one panel per class"
            )
            + f", splits overlaid ({where}); average precision"
            + (f" with {ci_text}" if positive else "")
            + "; dotted: the split's prevalence (a model without skill)."
            + val_text,
            plots.plot_precision_recall(
                curves,
                classes,
                positive_class=positive,
                intervals=pr_intervals,
                ci=ctx.ci,
                styles=styles,
                title=f"{name}: precision-recall",
            ),
        )
    main = _main_split(splits)
    by_group = {
        g: v
        for g, v in _group_series(section, main, ("y", "prob")).items()
        if _both_classes(v[0], classes, positive)
    }
    if len(by_group) > 1:
        _save(
            section,
            ctx,
            "roc_by_group",
            f"ROC curves of {name} on {main} by {ctx.group_column}"
            + (" (one-vs-rest, one panel per class)" if not positive else "")
            + f", AUC with {ci_text}.",
            plots.plot_roc(
                by_group,
                classes,
                positive_class=positive,
                intervals={
                    g: {c: _interval(section, main, g, auc_key(c)) for c in targets}
                    for g in by_group
                },
                ci=ctx.ci,
                threshold=threshold,
                title=f"{name}: ROC on {main} by {ctx.group_column}",
            ),
        )
    if series:
        what = (
            f"probability of {positive!r}"
            if positive
            else "top-class probability against its accuracy (as the ECE)"
        )
        _save(
            section,
            ctx,
            "reliability",
            f"Reliability diagram of {name} ({what}) in {ECE_BINS} equal-width bins, splits "
            "overlaid; only bins holding cases are drawn, the lower panel counts the cases per "
            "bin." + val_text,
            plots.plot_reliability(
                series,
                classes,
                positive_class=positive,
                styles=styles,
                title=f"{name}: calibration",
            ),
        )
        if positive is None:
            # Binary labels: the headline table's sensitivity, specificity, PPV and NPV already
            # say what the 2 x 2 matrix would; multi-class labels need the matrix to show which
            # classes are confused.
            _save(
                section,
                ctx,
                "confusion",
                f"Confusion matrices of {name} per split (arg-max class): counts and share of "
                "the true class.",
                plots.plot_confusion_matrices(
                    {
                        s: (y, np.asarray(classes, dtype=object)[np.argmax(p, axis=1)])
                        for s, (y, p) in series.items()
                    },
                    classes,
                    title=f"{name}: confusion matrix (arg-max class)",
                ),
            )


def regression_figures(section: LabelSection, ctx: EvalContext) -> None:
    """Predicted vs true and Bland-Altman, one panel per split; predicted vs true by group."""
    name = section.name
    splits = figure_splits(section, ctx)
    styles = split_styles(splits)
    panels = {
        s: {s: (x.arrays["y"], x.arrays["pred"])} for s in splits if (x := _subset(section, s))
    }
    if not panels:
        return
    where = ", ".join(panels)
    _save(
        section,
        ctx,
        "scatter",
        f"Predicted against true {name}, one panel per split ({where}); dotted: identity.",
        plots.plot_regression_scatter(
            panels, label=name, styles=styles, title=f"{name}: predicted vs true"
        ),
    )
    _save(
        section,
        ctx,
        "bland_altman",
        f"Bland-Altman plots of {name}, one panel per split ({where}): predicted - true against "
        "their mean, with the bias (solid) and the 95% limits of agreement (dashed).",
        plots.plot_bland_altman(panels, label=name, styles=styles, title=f"{name}: Bland-Altman"),
    )
    main = _main_split(splits)
    by_group = _group_series(section, main, ("y", "pred"))
    if len(by_group) > 1:
        _save(
            section,
            ctx,
            "scatter_by_group",
            f"Predicted against true {name} on {main}, by {ctx.group_column}.",
            plots.plot_regression_scatter(
                {main: by_group}, label=name, title=f"{name} on {main} by {ctx.group_column}"
            ),
        )


def survival_figures(section: LabelSection, ctx: EvalContext) -> None:
    """Kaplan-Meier curves by training-defined risk group and calibration at the middle
    evaluation time, each one figure with one panel per split."""
    name = section.name
    splits = figure_splits(section, ctx)
    chosen = {s: x for s in splits if (x := _subset(section, s))}
    if not chosen:
        return
    where = ", ".join(chosen)
    _save(
        section,
        ctx,
        "km",
        f"Kaplan-Meier survival of {name} by risk group (cut-points from the training risk "
        f"scores), one panel per split ({where}), with the log-rank p-value and the numbers at "
        "risk.",
        plot_km_risk_group_panels(
            {
                s: (x.arrays["time"], x.arrays["event"], x.arrays["risk_group"])
                for s, x in chosen.items()
            },
            title=f"{name}: Kaplan-Meier by risk group",
        ),
    )
    t = section.info["calibration_time"]
    tables = {s: x.calibration for s, x in chosen.items() if x.calibration is not None}
    _save(
        section,
        ctx,
        "calibration",
        f"Calibration of {name} at t = {t:g} (the middle evaluation time), one panel per split "
        f"({where}): Kaplan-Meier observed survival (95% interval) against mean predicted "
        "survival in equal-sized bins of predicted survival; dotted: perfect calibration.",
        plot_survival_calibration(
            tables, t, styles=split_styles(splits), title=f"{name}: calibration at t = {t:g}"
        ),
    )


FIGURE_BUILDERS: dict[str, Callable[[LabelSection, EvalContext], None]] = {
    "classification": classification_figures,
    "regression": regression_figures,
    "survival": survival_figures,
}


def select_figures(section: LabelSection, ctx: EvalContext) -> None:
    """Draw the figures of one evaluated label into ``section.figures`` (PNG files)."""
    FIGURE_BUILDERS[section.task](section, ctx)


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
    train_figures: bool = False,
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
        train_figures: also draw the ``train`` split in the figures (its metrics are always in
            ``metrics.csv`` and in the full table of the report).

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
        train_figures,
    )
    sections = [
        TASK_EVALUATORS[label["task"]](predictions, label, ctx) for label in schema["labels"]
    ]
    for section in sections:
        select_figures(section, ctx)

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
# HTML: the data of the page (tables as rows of text, figures as data URIs) and its template

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
    "logrank_p": "log-rank p",
}
_TASK_SUMMARY = {
    "classification": "class balance",
    "regression": "distribution",
    "survival": "events and follow-up",
}


def _metric_name(metric: str) -> str:
    if metric.startswith("auroc[") and metric.endswith("]"):
        return f"AUROC {metric[6:-1]}"
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
    if metric in ("n", "events"):
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


def headline_table(section: LabelSection, ctx: EvalContext) -> dict:
    """Headline metrics with CIs of every evaluated split but train (test and external first,
    val last and marked); the threshold and time-dependent AUCs stay in the full table."""
    rows = [r for r in section.rows if r["group"] == ALL_GROUPS]
    metrics = [
        m
        for m in dict.fromkeys(r["metric"] for r in rows)
        if m != "threshold" and not m.startswith("td_auc_t")
    ]
    lookup = {(r["split"], r["metric"]): r for r in rows}
    present = [s for s in ctx.splits if any(r["split"] == s for r in rows)]
    splits = [s for s in present if s not in ("train", "val")]
    splits += [s for s in present if s == "val"]
    if not splits:
        splits = present
    footnotes: list[str] = []
    body = [
        {
            "split": split,
            "development": split == "val",
            "cells": [_cell(lookup.get((split, m)), m, footnotes, split) for m in metrics],
        }
        for split in splits
    ]
    return {
        "columns": [_metric_name(m) for m in metrics],
        "rows": body,
        "footnotes": footnotes,
        "has_val": "val" in splits,
    }


def full_table(section: LabelSection) -> dict:
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
    return {"columns": [_metric_name(m) for m in metrics], "rows": body, "footnotes": footnotes}


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
) -> dict:
    """Everything the template shows, as plain values (escaping is the template's job)."""
    sizes = predictions.groupby("split").size()
    shown = [s for s in ctx.splits if s != "train" or ctx.train_figures] or ctx.splits
    labels = []
    for section in sections:
        labels.append(
            {
                "name": section.name,
                "task": section.task,
                "anchor": _safe_name(section.name),
                "notes": section.notes,
                "headline": headline_table(section, ctx) if section.rows else None,
                "figures": [
                    {"caption": caption, "src": _data_uri(path)}
                    for caption, path in section.figures
                ],
                "full": full_table(section) if section.rows else None,
                "tables": [(caption, _plain_table(t)) for caption, t in section.tables],
                "summary_title": _TASK_SUMMARY[section.task],
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
    return {
        "source": (config_summary or {}).get("predictions", ""),
        "splits": [(s, int(sizes.get(s, 0))) for s in ctx.splits],
        "figure_splits": shown,
        "has_classification": any(s.task == "classification" for s in sections),
        "train_hidden": "train" in ctx.splits and "train" not in shown,
        "n_bootstrap": ctx.n_bootstrap,
        "ci": f"{ctx.ci:.0%}",
        "group_column": ctx.group_column,
        "labels": labels,
        "data": _data_table(predictions, ctx),
        "learning_curve": _data_uri(learning_curve_png) if learning_curve_png else None,
        "config": config,
    }


def render_report(
    predictions: pd.DataFrame,
    sections: list[LabelSection],
    ctx: EvalContext,
    config_summary: Mapping | None,
    learning_curve_png: Path | None,
) -> str:
    """The HTML page (a string, everything embedded) from ``templates/report.html.j2``."""
    context = report_context(predictions, sections, ctx, config_summary, learning_curve_png)
    return _TEMPLATES.get_template("report.html.j2").render(**context)
