"""The report's classification section: metrics with bootstrap (or closed-form) intervals,
notes and tables of one classification label, from ``predictions.csv`` and ``schema.json``
alone (no model needed); its figures are drawn by :mod:`.figures` (``classification_figures``
is importable from here too).

A binary label is evaluated at the operating threshold stored with the model (chosen on the
validation split after training) and for its positive class (:mod:`.classes`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.bootstrap import (
    BootstrapCI,
    weighted_bootstrap_distributions,
    weighted_classification_metrics,
)
from nervus_lightning.evaluation.intervals import Interval, auroc_interval, proportion_interval
from nervus_lightning.evaluation.metrics import (
    MetricValues,
    binary_confusion,
    classification_metrics,
    is_missing_label,
)
from nervus_lightning.evaluation.sections import (
    ALL_GROUPS,
    EvalContext,
    LabelSection,
    Subset,
    add_metric_rows,
    bootstrap_intervals,
    class_name_of,
    iter_subsets,
)
from nervus_lightning.evaluation.thresholds import choose_threshold
from nervus_lightning.tasks.classification.classes import obvious_positive_class
from nervus_lightning.tasks.classification.figures import classification_figures
from nervus_lightning.tasks.classification.options import ClassificationOptions

__all__ = [
    "COUNT_METRICS",
    "classification_figures",
    "closed_form_intervals",
    "evaluate_classification",
]

log = logging.getLogger(__name__)


_THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


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


def _contract(
    label: Mapping, options: ClassificationOptions, classes: list[str]
) -> tuple[str, str, float, list]:
    """Positive class, threshold method and target sensitivity of a binary label: the stored
    contract of ``schema.json`` unless the evaluation settings override it (listed)."""
    name = label["name"]
    stored_positive = label.get("positive_class")
    positive = (options.positive_class or {}).get(name)
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
    method = options.threshold or stored_method or options.default_threshold
    stored_target = label.get("target_sensitivity")
    target = options.target_sensitivity
    if target is None:
        target = stored_target if stored_target is not None else options.default_target_sensitivity
    overrides = []
    if stored_positive is not None and positive != stored_positive:
        overrides.append(f"positive class {positive!r} instead of the stored {stored_positive!r}")
    if stored_method is not None and method != stored_method:
        overrides.append(f"threshold method {method!r} instead of the stored {stored_method!r}")
    elif method == "sensitivity" and stored_target is not None and target != stored_target:
        overrides.append(f"target sensitivity {target:g} instead of the stored {stored_target:g}")
    return positive, method, float(target), overrides


def _rows_with_label(
    df: pd.DataFrame, name: str, classes: list[str], section: LabelSection
) -> pd.DataFrame:
    """The rows with a known true class (the others counted in a note), as class names; an
    error for a value that is not one of the schema's classes."""
    y_all = df[name].map(class_name_of)
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
    return df


def _operating_point(
    df: pd.DataFrame,
    label: Mapping,
    options: ClassificationOptions,
    classes: list[str],
    prob: np.ndarray,
    section: LabelSection,
) -> tuple[str, float | None, str | None, list[str]]:
    """A binary label's positive class, operating threshold, the split that threshold was
    chosen on and the overrides of the stored contract (each said in the notes)."""
    name = label["name"]
    positive, method, target, overrides = _contract(label, options, classes)
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
    return positive, threshold, fitted_on, overrides


def _subset_intervals(
    y: np.ndarray,
    p: np.ndarray,
    classes: list[str],
    positive: str | None,
    threshold: float | None,
    ctx: EvalContext,
) -> dict[str, BootstrapCI | Interval]:
    """Stratified bootstrap intervals of every metric, replaced by the closed-form ones where
    a metric has one (:func:`closed_form_intervals`)."""
    intervals: dict[str, BootstrapCI | Interval] = {}
    if ctx.n_bootstrap > 0:
        y_idx = np.array([classes.index(v) for v in y])
        pos_index = classes.index(positive) if positive is not None else None
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
        intervals = bootstrap_intervals(distributions, ctx.ci)
    intervals.update(
        closed_form_intervals(y, p, classes, positive, threshold, ctx.ci, ctx.proportion_ci)
    )
    return intervals


def _optimism_note(fitted_on: str | None, split: str) -> Callable[[str], str | None]:
    """The note of a threshold-based metric on the split its threshold was chosen on."""

    def note(metric: str) -> str | None:
        if split == fitted_on and metric in _THRESHOLD_METRICS:
            return "threshold chosen on this split (optimistic)"
        return None

    return note


def evaluate_classification(
    df: pd.DataFrame, label: Mapping, ctx: EvalContext, options: ClassificationOptions
) -> LabelSection:
    """Metrics with CIs and figures of one classification label."""
    name = label["name"]
    classes = [str(c) for c in label["classes"]]
    section = LabelSection(name, "classification")
    prob_columns = [f"prob_{name}_{c}" for c in classes]
    df = _rows_with_label(df, name, classes, section)
    prob = df[prob_columns].to_numpy(dtype=float)
    binary = len(classes) == 2
    positive, threshold, fitted_on, overrides = None, None, None, []
    if binary:
        positive, threshold, fitted_on, overrides = _operating_point(
            df, label, options, classes, prob, section
        )

    summary: dict[str, dict[str, str]] = {}
    for split, group, rows in iter_subsets(df, ctx):
        if rows.empty:
            continue
        y = rows[name].to_numpy(dtype=object)
        p = prob[df.index.get_indexer(rows.index)]
        point = classification_metrics(y, p, classes, positive_class=positive, threshold=threshold)
        if binary:
            point = _with_counts(point, y == positive, p, classes.index(positive), threshold)
        intervals = _subset_intervals(y, p, classes, positive, threshold, ctx)
        note = _optimism_note(fitted_on, split)
        add_metric_rows(section, split, group, point, intervals, note)
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


#: Rows of the 2 x 2 table at the operating threshold, shown beside ``n`` (binary labels).
COUNT_METRICS = ("prevalence", "tp", "fp", "fn", "tn")


def _predicted_positive(prob: np.ndarray, pos: int, threshold: float | None) -> np.ndarray:
    """The operating point of :func:`classification_metrics`: ``p_pos >= threshold``, else the
    arg-max class."""
    if threshold is None:
        return np.argmax(prob, axis=1) == pos
    return prob[:, pos] >= threshold


def _with_counts(
    point: MetricValues, y_pos: np.ndarray, prob: np.ndarray, pos: int, threshold: float | None
) -> MetricValues:
    """``point`` with the prevalence and the 2 x 2 counts at the operating threshold right after
    ``n`` (so that Table 1 shows them beside it)."""
    tp, fp, tn, fn = binary_confusion(y_pos, _predicted_positive(prob, pos, threshold))
    out = MetricValues()
    for name, value in point.items():
        out.set(name, value, point.reasons.get(name))
        if name == "n":
            n = tp + fp + tn + fn
            out.set("prevalence", (tp + fn) / n if n else None, None if n else "no cases")
            for count_name, count in zip(("tp", "fp", "fn", "tn"), (tp, fp, fn, tn), strict=True):
                out.set(count_name, float(count))
    return out


def closed_form_intervals(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    positive: str | None,
    threshold: float | None,
    ci: float,
    proportion_ci: str = "wilson",
) -> dict[str, Interval]:
    """Score intervals (:mod:`nervus_lightning.evaluation.intervals`) of the metrics that have
    one: the proportions at the operating point (sensitivity, specificity, PPV, NPV, accuracy;
    multi-class: accuracy of the arg-max class) and the (one-vs-rest) AUROC of each class. The
    macro AUROC, AP, Brier, ECE and F1 keep their bootstrap intervals."""
    y = np.asarray(y, dtype=object)
    out: dict[str, Interval] = {}
    if y.shape[0] == 0:
        return out

    def proportion(name: str, k: int, n: int) -> None:
        out[name] = proportion_interval(k, n, ci, proportion_ci)

    if positive is not None:
        pos = classes.index(positive)
        y_pos = y == positive
        tp, fp, tn, fn = binary_confusion(y_pos, _predicted_positive(prob, pos, threshold))
        proportion("sensitivity", tp, tp + fn)
        proportion("specificity", tn, tn + fp)
        proportion("ppv", tp, tp + fp)
        proportion("npv", tn, tn + fn)
        proportion("accuracy", tp + tn, tp + fp + tn + fn)
        out["auroc"] = auroc_interval(
            roc_auc_score(y_pos, prob[:, pos]) if 0 < y_pos.sum() < y.shape[0] else 0.5,
            int(y_pos.sum()),
            int((~y_pos).sum()),
            ci,
        )
        return out
    arg = np.asarray(classes, dtype=object)[np.argmax(prob, axis=1)]
    proportion("accuracy", int(np.sum(arg == y)), y.shape[0])
    for j, c in enumerate(classes):
        member = y == c
        if 0 < member.sum() < y.shape[0]:
            out[f"auroc[{c}]"] = auroc_interval(
                roc_auc_score(member, prob[:, j]), int(member.sum()), int((~member).sum()), ci
            )
    return out
