"""Evaluation figures: ROC, precision-recall, confusion matrix, reliability, regression plots.

Each figure compares several data sets (usually splits, or the groups of one split): curves are
overlaid in one panel (``series``: name -> (true, predicted)), scatter plots get one panel per key
of ``panels``; ``styles`` keeps a split's colour and line style the same across figures.
Each function returns a matplotlib ``Figure`` built without pyplot (Agg canvas), so it neither
needs a display nor changes the backend of the caller's session; :func:`save_figure` writes it
as a PNG without the software tag, so the file carries no web address. The reliability
diagram's bins are computed by :mod:`.reliability` (their names are importable from here too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

from nervus_lightning.evaluation.metrics import ECE_BINS

# The reliability bins are computed in their own module; their names stay importable from here.
from nervus_lightning.evaluation.reliability import (  # noqa: F401
    RELIABILITY_COLUMNS,
    RELIABILITY_MAX_BINS,
    RELIABILITY_MIN_CASES,
    RELIABILITY_MIN_LINE_CASES,
    reliability_bin_count,
    reliability_bins,
    reliability_outcome,
)

Interval = tuple[float | None, float | None]
_UNIT_TICKS = np.linspace(0.0, 1.0, 5)


def new_figure(width: float = 5.0, height: float = 5.0) -> Figure:
    """A pyplot-free figure with an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 96) -> Path:
    """Write ``fig`` as PNG at ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


Series = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""Overlaid data sets of one figure: legend name -> (true values, predictions)."""
Styles = Mapping[str, Mapping[str, object]]
"""Legend name -> matplotlib line keywords (``color``, ``ls``), so a split looks the same in
every figure of a report."""


def _with_ci(name: str, value: float, interval: Interval | None, ci: float) -> str:
    if interval is None or interval[0] is None or interval[1] is None:
        return f"{name} {value:.3f}"
    if not (np.isfinite(interval[0]) and np.isfinite(interval[1])):
        return f"{name} {value:.3f}"
    return f"{name} {value:.3f} ({ci:.0%} CI {interval[0]:.3f}-{interval[1]:.3f})"


def _targets(classes: Sequence[str], positive_class: str | None) -> list[str]:
    """The class of each one-vs-rest panel: the positive class for binary, else every class."""
    classes = list(classes)
    if len(classes) == 2:
        return [positive_class if positive_class is not None else classes[-1]]
    return classes


def panel_figure(n: int, width: float = 4.2, height: float = 4.2) -> tuple[Figure, list]:
    """A figure with ``n`` square panels in one row (two rows beyond four panels)."""
    columns = n if n <= 4 else int(np.ceil(n / 2))
    rows = int(np.ceil(n / columns))
    fig = new_figure(width * columns, height * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _style(styles: Styles | None, name: str) -> dict:
    return dict((styles or {}).get(name, {}))


def plot_roc(
    series: Series,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    intervals: Mapping[str, Mapping[str, Interval]] | None = None,
    ci: float = 0.95,
    threshold: float | None = None,
    styles: Styles | None = None,
    title: str = "ROC curve",
) -> Figure:
    """ROC curves of several data sets (e.g. splits) overlaid, AUC and its CI in the legend.

    Binary: one panel, the positive class, with the operating point at ``threshold`` marked on
    every curve. Multi-class: one one-vs-rest panel per class. ``intervals[name][class]`` is the
    AUC interval of data set ``name``; a data set without both outcomes in a panel is left out.
    """
    targets = _targets(classes, positive_class)
    fig, axes = panel_figure(len(targets))
    intervals = intervals or {}
    for ax, target in zip(axes, targets, strict=True):
        column = list(classes).index(target)
        for name, (y, prob) in series.items():
            is_class = np.asarray(y, dtype=object) == target
            if is_class.all() or not is_class.any():
                continue
            score = np.asarray(prob, dtype=float)[:, column]
            fpr, tpr, _ = roc_curve(is_class, score)
            label = _with_ci("AUC", auc(fpr, tpr), intervals.get(name, {}).get(target), ci)
            (line,) = ax.plot(fpr, tpr, lw=1.8, label=f"{name}: {label}", **_style(styles, name))
            if threshold is not None and len(targets) == 1:
                pred = score >= threshold
                ax.plot(
                    [1 - (~pred[~is_class]).mean()],
                    [pred[is_class].mean()],
                    "o",
                    color=line.get_color(),
                    markeredgecolor="black",
                )
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="1 - specificity",
            ylabel="Sensitivity",
            title=title if len(targets) == 1 else f"{target!r} vs rest",
            aspect="equal",
            xticks=_UNIT_TICKS,
            yticks=_UNIT_TICKS,
        )
        ax.legend(loc="lower right", fontsize="x-small")
    if len(targets) > 1:
        fig.suptitle(title)
    return fig


def plot_precision_recall(
    series: Series,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    intervals: Mapping[str, Mapping[str, Interval]] | None = None,
    ci: float = 0.95,
    styles: Styles | None = None,
    title: str = "Precision-recall curve",
) -> Figure:
    """Precision-recall curves overlaid (panels as :func:`plot_roc`), average precision in the
    legend; the dotted line of the same colour is the data set's prevalence (a random model)."""
    targets = _targets(classes, positive_class)
    fig, axes = panel_figure(len(targets))
    intervals = intervals or {}
    for ax, target in zip(axes, targets, strict=True):
        column = list(classes).index(target)
        for name, (y, prob) in series.items():
            is_class = np.asarray(y, dtype=object) == target
            if is_class.all() or not is_class.any():
                continue
            score = np.asarray(prob, dtype=float)[:, column]
            precision, recall, _ = precision_recall_curve(is_class, score)
            ap = average_precision_score(is_class, score)
            label = _with_ci("AP", ap, intervals.get(name, {}).get(target), ci)
            (line,) = ax.step(
                recall,
                precision,
                where="post",
                lw=1.8,
                label=f"{name}: {label}",
                **_style(styles, name),
            )
            ax.axhline(is_class.mean(), ls=":", lw=1, color=line.get_color())
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="Recall (sensitivity)",
            ylabel="Precision (PPV)",
            title=title if len(targets) == 1 else f"{target!r} vs rest",
            aspect="equal",
            xticks=_UNIT_TICKS,
            yticks=_UNIT_TICKS,
        )
        ax.legend(loc="lower left", fontsize="x-small")
    if len(targets) > 1:
        fig.suptitle(title)
    return fig


def plot_confusion_matrices(
    panels: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    classes: Sequence[str],
    *,
    title: str = "Confusion matrix",
) -> Figure:
    """One confusion matrix per data set (``name -> (true, predicted)``): counts with the share
    of each true class."""
    classes = list(classes)
    size = 1.6 + 0.6 * len(classes)
    fig = new_figure(size * len(panels) + 0.4, size + 0.5)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (name, (y_true, y_pred)) in zip(axes, panels.items(), strict=True):
        cm = confusion_matrix(
            np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object), labels=classes
        )
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{share[i, j]:.0%}",
                    ha="center",
                    va="center",
                    color="white" if share[i, j] > 0.6 else "black",
                    fontsize="small",
                )
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=classes,
            yticklabels=classes,
            xlabel="Predicted",
            ylabel="True" if ax is axes[0] else None,
            title=name,
        )
    fig.suptitle(title)
    return fig


def plot_reliability(
    series: Series,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    styles: Styles | None = None,
    title: str = "Reliability diagram",
    min_cases: int = RELIABILITY_MIN_CASES,
    ci: float = 0.95,
) -> Figure:
    """Observed share against mean predicted probability in quantile bins
    (:func:`reliability_bins`), data sets overlaid, each point with its Wilson interval; the
    panel below shows the distribution of the predicted probabilities (10 equal-width bins).

    Binary: the positive class. Multi-class: top-label (accuracy of the arg-max class against its
    probability), matching the ``ece`` metric. Points are joined by a line only when every bin
    holds at least ``RELIABILITY_MIN_LINE_CASES`` cases.
    """
    classes = list(classes)
    if len(classes) == 2:
        pos = positive_class if positive_class is not None else classes[-1]
        xlabel, ylabel = f"Predicted probability of {pos!r}", f"Observed share of {pos!r}"
    else:
        xlabel, ylabel = "Confidence (top-class probability)", "Accuracy of the top class"
    fig = new_figure(5, 5.6)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    for name, (y, prob) in series.items():
        outcome, predicted = reliability_outcome(y, prob, classes, positive_class)
        if predicted.shape[0] == 0:
            continue
        table = reliability_bins(outcome, predicted, min_cases=min_cases, ci=ci)
        style = {"ls": "-", **_style(styles, name)}
        joined = len(table) > 1 and table["n"].min() >= RELIABILITY_MIN_LINE_CASES
        if not joined:
            style["ls"] = "none"
        size = int(table["n"].median())
        x, y_obs = table["predicted"].to_numpy(float), table["observed"].to_numpy(float)
        spread = [y_obs - table["lower"].to_numpy(float), table["upper"].to_numpy(float) - y_obs]
        bars = ax.errorbar(
            x,
            y_obs,
            yerr=np.clip(spread, 0, None),
            marker="o",
            ms=4,
            capsize=2,
            lw=1.4,
            elinewidth=0.9,
            label=f"{name} ({len(table)} bins of ~{size})",
            **style,
        )
        colour = bars.lines[0].get_color()
        all_counts = np.bincount(np.searchsorted(edges[1:-1], predicted), minlength=ECE_BINS)
        hist.stairs(all_counts, edges, color=colour, lw=1.2)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel=ylabel, title=title)
    ax.legend(loc="upper left", fontsize="x-small")
    hist.set(xlabel=xlabel, ylabel="cases")
    hist.set_yscale("symlog", linthresh=10)
    hist.yaxis.set_major_formatter("{x:.0f}")
    return fig


def _regression_panels(
    panels: Mapping[str, Series], styles: Styles | None, title: str
) -> tuple[Figure, list]:
    fig, axes = panel_figure(len(panels), width=4.0, height=3.8)
    fig.suptitle(title)
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel, fontsize="medium")
    return fig, axes


def plot_regression_scatter(
    panels: Mapping[str, Series],
    *,
    label: str = "",
    styles: Styles | None = None,
    title: str = "Predicted vs true",
) -> Figure:
    """Predicted against true values with the identity line: one panel per key of ``panels``,
    the data sets of a panel overlaid. All panels share the same axes range."""
    fig, axes = _regression_panels(panels, styles, title)
    values = [np.asarray(v, dtype=float) for p in panels.values() for s in p.values() for v in s]
    low = float(min(v.min() for v in values if v.size))
    high = float(max(v.max() for v in values if v.size))
    pad = 0.03 * (high - low or 1.0)
    for ax, series in zip(axes, panels.values(), strict=True):
        for name, (y, pred) in series.items():
            ax.scatter(y, pred, s=9, alpha=0.55, label=name, **_scatter_style(styles, name))
        ax.plot([low, high], [low, high], ls=":", color="grey", lw=1)
        ax.set(
            xlim=(low - pad, high + pad),
            ylim=(low - pad, high + pad),
            xlabel=f"True {label}".strip(),
            ylabel=f"Predicted {label}".strip(),
            aspect="equal",
        )
        if len(series) > 1:
            ax.legend(loc="upper left", fontsize="x-small")
    return fig


def _scatter_style(styles: Styles | None, name: str) -> dict:
    style = _style(styles, name)
    return {"color": style["color"]} if "color" in style else {}


def plot_bland_altman(
    panels: Mapping[str, Series],
    *,
    label: str = "",
    styles: Styles | None = None,
    title: str = "Bland-Altman plot",
) -> Figure:
    """Difference (predicted - true) against the mean of the two, with the bias (solid) and the
    95% limits of agreement (bias ± 1.96 SD, dashed) of each data set in its colour; panels as
    :func:`plot_regression_scatter`, with a shared y axis."""
    fig, axes = _regression_panels(panels, styles, title)
    for ax, series in zip(axes, panels.values(), strict=True):
        for name, (y, pred) in series.items():
            y = np.asarray(y, dtype=float)
            pred = np.asarray(pred, dtype=float)
            diff = pred - y
            bias = float(diff.mean())
            sd = float(diff.std(ddof=1)) if diff.shape[0] > 1 else 0.0
            points = ax.scatter(
                (y + pred) / 2, diff, s=9, alpha=0.55, **_scatter_style(styles, name)
            )
            color = points.get_facecolor()[0][:3]
            prefix = f"{name}: " if len(series) > 1 else ""
            ax.axhline(bias, color=color, lw=1.2, label=f"{prefix}bias {bias:.3g}")
            for sign in (-1, 1):
                ax.axhline(
                    bias + sign * 1.96 * sd,
                    color=color,
                    ls="--",
                    lw=1,
                    label=f"{prefix}limits ± {1.96 * sd:.3g}" if sign > 0 else None,
                )
        ax.set(
            xlabel=f"Mean of predicted and true {label}".strip(),
            ylabel=f"Predicted - true {label}".strip(),
        )
        ax.legend(loc="best", fontsize="x-small")
    if len(axes) > 1:
        low = min(ax.get_ylim()[0] for ax in axes)
        high = max(ax.get_ylim()[1] for ax in axes)
        for ax in axes:
            ax.set_ylim(low, high)
    return fig


#: Learning curves of at most this many epochs mark each epoch, here and in the run folder's
#: ``learning_curve.png``: hundreds of markers only thicken the line.
MARKED_EPOCHS = 60


def plot_learning_curves(
    curves: pd.DataFrame,
    *,
    title: str = "Learning curves",
    best_epoch: int | None = None,
    best_label: str = "checkpoint chosen",
) -> Figure:
    """Every numeric column against ``epoch`` (or ``step``, or the row number).

    Columns whose name contains ``loss`` share the left panel; the other metrics the right one.
    ``best_epoch``: a vertical line at the epoch whose checkpoint was kept.
    """
    x_name = next((c for c in ("epoch", "step") if c in curves.columns), None)
    x = curves[x_name] if x_name else pd.Series(np.arange(len(curves)))
    numeric = [
        c
        for c in curves.columns
        if c not in ("epoch", "step") and pd.api.types.is_numeric_dtype(curves[c])
    ]
    losses = [c for c in numeric if "loss" in c.lower()]
    others = [c for c in numeric if c not in losses]
    panels = [p for p in (losses, others) if p]
    fig = new_figure(5.5 * max(1, len(panels)), 4.5)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, columns in zip(axes, panels, strict=False):
        for column in columns:
            values = curves[column]
            keep = values.notna()
            marker = "." if keep.sum() <= MARKED_EPOCHS else None
            ax.plot(x[keep], values[keep], marker=marker, label=column)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="black", ls="--", lw=1, label=best_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=x_name or "row", ylabel="loss" if columns is losses else "metric")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig
