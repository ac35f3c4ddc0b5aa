"""The report's classification figures: ROC and precision-recall curves (splits overlaid; one
one-vs-rest panel per class for multi-class labels), ROC by group on the main split,
reliability diagram and, for multi-class labels, confusion matrices per split. Drawn from the
arrays and intervals that :func:`.evaluation.evaluate_classification` put in the section."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.sections import (
    ALL_GROUPS,
    EvalContext,
    LabelSection,
    add_figure,
    figure_splits,
    find_subset,
    group_series,
    interval_of,
    main_split,
    split_styles,
)

#: ``{split or group: (true classes, probabilities)}`` of the curves of one figure.
Series = dict[str, tuple[np.ndarray, np.ndarray]]


def _both_classes(y: np.ndarray, classes: list[str], positive: str | None) -> bool:
    present = set(y)
    return positive in present and len(present) > 1 if positive else len(present) > 1


def _auc_key(positive: str | None) -> Callable[[str], str]:
    """The metric name of a class's AUROC: ``auroc`` (binary), ``auroc[<class>]`` (one-vs-rest)."""
    return (lambda c: "auroc") if positive else (lambda c: f"auroc[{c}]")


def _roc_and_pr_figures(
    section: LabelSection, ctx: EvalContext, curves: Series, styles: dict, val_text: str
) -> None:
    """ROC and precision-recall curves of the splits with both classes, overlaid."""
    name, info = section.name, section.info
    classes, positive, threshold = info["classes"], info["positive"], info["threshold"]
    targets = [positive] if positive else classes
    auc_key = _auc_key(positive)
    ci_text = f"{ctx.ci:.0%} bootstrap CI" if ctx.n_bootstrap > 0 else "no CI"
    auc_ci_text = f"{ctx.ci:.0%} Newcombe score CI"
    where = ", ".join(curves)
    if positive:
        what = (
            f"ROC curve of {name} ({positive!r} positive) on {where}, AUC with {auc_ci_text}."
            + (
                f" Dots: the operating point at threshold {threshold:.3g}."
                if threshold is not None
                else ""
            )
        )
    else:
        what = (
            f"One-vs-rest ROC curves of {name}, one panel per class, splits overlaid "
            f"({where}); per-class AUC with {auc_ci_text}."
        )
    add_figure(
        section,
        ctx,
        "roc",
        what + val_text,
        plots.plot_roc(
            curves,
            classes,
            positive_class=positive,
            intervals={
                s: {c: interval_of(section, s, ALL_GROUPS, auc_key(c)) for c in targets}
                for s in curves
            },
            ci=ctx.ci,
            threshold=threshold,
            styles=styles,
            title=f"{name}: ROC",
        ),
    )
    pr_intervals = (
        {s: {positive: interval_of(section, s, ALL_GROUPS, "ap")} for s in curves}
        if positive
        else {}
    )
    add_figure(
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


def _roc_by_group_figure(section: LabelSection, ctx: EvalContext, main: str) -> None:
    """ROC curves of the groups of the main split (when two or more have both classes)."""
    name, info = section.name, section.info
    classes, positive, threshold = info["classes"], info["positive"], info["threshold"]
    targets = [positive] if positive else classes
    auc_key = _auc_key(positive)
    by_group = {
        g: v
        for g, v in group_series(section, main, ("y", "prob")).items()
        if _both_classes(v[0], classes, positive)
    }
    if len(by_group) <= 1:
        return
    add_figure(
        section,
        ctx,
        "roc_by_group",
        f"ROC curves of {name} on {main} by {ctx.group_column}"
        + (" (one-vs-rest, one panel per class)" if not positive else "")
        + f", AUC with {ctx.ci:.0%} Newcombe score CI.",
        plots.plot_roc(
            by_group,
            classes,
            positive_class=positive,
            intervals={
                g: {c: interval_of(section, main, g, auc_key(c)) for c in targets} for g in by_group
            },
            ci=ctx.ci,
            threshold=threshold,
            title=f"{name}: ROC on {main} by {ctx.group_column}",
        ),
    )


def _reliability_figure(
    section: LabelSection, ctx: EvalContext, series: Series, styles: dict, val_text: str
) -> None:
    """Reliability diagram of every split, overlaid."""
    name, classes, positive = section.name, section.info["classes"], section.info["positive"]
    what = (
        f"probability of {positive!r}"
        if positive
        else "top-class probability against its accuracy (as the ECE)"
    )
    add_figure(
        section,
        ctx,
        "reliability",
        f"Reliability diagram of {name} ({what}), splits overlaid: the cases of a split "
        f"sorted by predicted probability and cut into min(10, n / "
        f"{plots.RELIABILITY_MIN_CASES}) bins of equal size (at least "
        f"{plots.RELIABILITY_MIN_CASES} cases each where the split has that many); each "
        f"point is a bin's mean predicted probability against its observed share, with its "
        f"{ctx.ci:.0%} Wilson score interval; points are joined only where every bin holds "
        f"{plots.RELIABILITY_MIN_LINE_CASES} cases or more. Lower panel: the predicted "
        "probabilities (10 equal-width bins, as the ECE uses)." + val_text,
        plots.plot_reliability(
            series,
            classes,
            positive_class=positive,
            styles=styles,
            title=f"{name}: calibration",
            ci=ctx.ci,
        ),
    )


def _confusion_figure(section: LabelSection, ctx: EvalContext, series: Series) -> None:
    """Confusion matrices per split (arg-max class) of a multi-class label."""
    name, classes = section.name, section.info["classes"]
    add_figure(
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


def classification_figures(section: LabelSection, ctx: EvalContext) -> None:
    """ROC and precision-recall curves with the splits overlaid (multi-class: one one-vs-rest
    panel per class), ROC by group on the main split, reliability diagram; confusion matrices
    per split for multi-class labels."""
    classes, positive = section.info["classes"], section.info["positive"]
    splits = figure_splits(section, ctx)
    styles = split_styles(splits)
    series = {
        s: (x.arrays["y"], x.arrays["prob"]) for s in splits if (x := find_subset(section, s))
    }
    val_text = " val (dashed) is the development split." if "val" in series else ""
    curves = {s: v for s, v in series.items() if _both_classes(v[0], classes, positive)}
    if curves:
        _roc_and_pr_figures(section, ctx, curves, styles, val_text)
    _roc_by_group_figure(section, ctx, main_split(splits))
    if series:
        _reliability_figure(section, ctx, series, styles, val_text)
        if positive is None:
            # Binary labels: the headline table's sensitivity, specificity, PPV and NPV already
            # say what the 2 x 2 matrix would; multi-class labels need the matrix to show which
            # classes are confused.
            _confusion_figure(section, ctx, series)
