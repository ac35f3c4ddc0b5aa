"""Evaluation figures: ROC, precision-recall, confusion matrix, reliability, regression plots.

Each function returns a matplotlib ``Figure`` built without pyplot (Agg canvas), so it neither
needs a display nor changes the backend of the caller's session; :func:`save_figure` writes it
as a PNG without the software tag, so the file carries no web address.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from nervus_lightning.evaluation.metrics import ECE_BINS

Interval = tuple[float | None, float | None]
MACRO = "__macro__"  # key of the macro-average AUC interval in plot_roc's ``intervals``


def new_figure(width: float = 5.0, height: float = 5.0) -> Figure:
    """A pyplot-free figure with an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG at ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


def _with_ci(name: str, value: float, interval: Interval | None, ci: float) -> str:
    if interval is None or interval[0] is None or interval[1] is None:
        return f"{name} {value:.3f}"
    return f"{name} {value:.3f} ({ci:.0%} CI {interval[0]:.3f}-{interval[1]:.3f})"


def _one_vs_rest(
    y_true: Sequence[str], prob: np.ndarray, classes: Sequence[str], positive_class: str | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class, is_class, score) per curve to draw: one for binary, one per class otherwise."""
    y = np.asarray(y_true, dtype=object)
    classes = list(classes)
    if len(classes) == 2:
        pos = positive_class if positive_class is not None else classes[-1]
        return [(pos, y == pos, prob[:, classes.index(pos)])]
    return [(c, y == c, prob[:, j]) for j, c in enumerate(classes)]


def plot_roc(
    y_true: Sequence[str],
    prob: np.ndarray,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    intervals: Mapping[str, Interval] | None = None,
    ci: float = 0.95,
    threshold: float | None = None,
    title: str = "ROC curve",
) -> Figure:
    """ROC curve(s) with the AUC (and its CI from ``intervals[class]``) in the legend.

    Binary: the curve of the positive class, with the operating point at ``threshold`` marked.
    Multi-class: one-vs-rest curve per class (classes absent from ``y_true`` are left out), and
    the macro-average AUC (interval: ``intervals[MACRO]``) in the title when all are present.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    intervals = intervals or {}
    for name, is_class, score in _one_vs_rest(y_true, np.asarray(prob), classes, positive_class):
        if is_class.all() or not is_class.any():
            continue
        fpr, tpr, _ = roc_curve(is_class, score)
        label = _with_ci("AUC", auc(fpr, tpr), intervals.get(name), ci)
        ax.plot(fpr, tpr, lw=1.8, label=label if len(classes) == 2 else f"{name}: {label}")
        if threshold is not None and len(classes) == 2:
            pred = score >= threshold
            sens = pred[is_class].mean()
            spec = (~pred[~is_class]).mean()
            ax.plot(
                [1 - spec],
                [sens],
                "o",
                color="black",
                label=f"threshold {threshold:.3g}: sens {sens:.2f}, spec {spec:.2f}",
            )
    present = set(np.asarray(y_true, dtype=object))
    if len(classes) > 2 and present >= set(classes):
        macro = roc_auc_score(
            np.asarray(y_true, dtype=object), prob, multi_class="ovr", labels=list(classes)
        )
        title += "\n" + _with_ci("macro AUC", macro, intervals.get(MACRO), ci)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="Sensitivity (true positive rate)",
        title=title,
        aspect="equal",
    )
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_precision_recall(
    y_true: Sequence[str],
    prob: np.ndarray,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    intervals: Mapping[str, Interval] | None = None,
    ci: float = 0.95,
    title: str = "Precision-recall curve",
) -> Figure:
    """Precision-recall curve(s) with average precision in the legend; dotted: prevalence."""
    fig = new_figure()
    ax = fig.add_subplot()
    intervals = intervals or {}
    for name, is_class, score in _one_vs_rest(y_true, np.asarray(prob), classes, positive_class):
        if is_class.all() or not is_class.any():
            continue
        precision, recall, _ = precision_recall_curve(is_class, score)
        label = _with_ci("AP", average_precision_score(is_class, score), intervals.get(name), ci)
        line = ax.step(
            recall,
            precision,
            where="post",
            lw=1.8,
            label=label if len(classes) == 2 else f"{name}: {label}",
        )[0]
        ax.axhline(is_class.mean(), ls=":", lw=1, color=line.get_color())
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title=title,
        aspect="equal",
    )
    ax.legend(loc="lower left", fontsize="small")
    return fig


def plot_confusion_matrix(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    classes: Sequence[str],
    *,
    title: str = "Confusion matrix",
) -> Figure:
    """Counts with row percentages (share of each true class)."""
    cm = confusion_matrix(
        np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object), labels=list(classes)
    )
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    size = 2.5 + 0.7 * len(classes)
    fig = new_figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
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
        ylabel="True",
        title=title,
    )
    fig.colorbar(image, ax=ax, label="share of true class", shrink=0.8)
    return fig


def plot_reliability(
    y_true: Sequence[str],
    prob: np.ndarray,
    classes: Sequence[str],
    *,
    positive_class: str | None = None,
    title: str = "Reliability diagram",
) -> Figure:
    """Observed vs predicted in 10 equal-width bins, with a histogram of predictions below.

    Binary: event rate vs probability of the positive class. Multi-class: top-label (accuracy
    of the arg-max class vs its probability), matching the ``ece`` metric.
    """
    y = np.asarray(y_true, dtype=object)
    prob = np.asarray(prob, dtype=float)
    classes = list(classes)
    if len(classes) == 2:
        pos = positive_class if positive_class is not None else classes[-1]
        outcome, predicted = y == pos, prob[:, classes.index(pos)]
        xlabel, ylabel = f"Predicted probability of {pos!r}", f"Observed share of {pos!r}"
    else:
        arg = np.argmax(prob, axis=1)
        outcome, predicted = np.asarray(classes, dtype=object)[arg] == y, prob.max(axis=1)
        xlabel, ylabel = "Confidence (top-class probability)", "Accuracy"
    fig = new_figure(5, 6)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    observed, mean_pred = calibration_curve(outcome, predicted, n_bins=ECE_BINS, strategy="uniform")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot(mean_pred, observed, "o-", lw=1.8, label="model")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel=ylabel, title=title)
    ax.legend(loc="upper left", fontsize="small")
    hist.hist(predicted, bins=np.linspace(0, 1, ECE_BINS + 1), color="grey")
    hist.set(xlabel=xlabel, ylabel="cases")
    return fig


def plot_regression_scatter(
    y_true: np.ndarray, y_pred: np.ndarray, *, label: str = "", title: str = "Predicted vs true"
) -> Figure:
    """Scatter of predicted against true values with the identity line."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.scatter(y_true, y_pred, s=12, alpha=0.6)
    low = float(min(y_true.min(), y_pred.min()))
    high = float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], ls="--", color="grey", lw=1, label="identity")
    ax.set(xlabel=f"True {label}".strip(), ylabel=f"Predicted {label}".strip(), title=title)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_bland_altman(
    y_true: np.ndarray, y_pred: np.ndarray, *, label: str = "", title: str = "Bland-Altman plot"
) -> Figure:
    """Difference (predicted - true) against the mean of the two, with bias and 95% limits."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    mean = (y_true + y_pred) / 2
    diff = y_pred - y_true
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.shape[0] > 1 else 0.0
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()
    ax.scatter(mean, diff, s=12, alpha=0.6)
    ax.axhline(bias, color="black", lw=1.2, label=f"bias {bias:.3g}")
    for sign in (-1, 1):
        ax.axhline(
            bias + sign * 1.96 * sd,
            color="black",
            ls="--",
            lw=1,
            label="bias ± 1.96 SD" if sign > 0 else None,
        )
    ax.set(
        xlabel=f"Mean of predicted and true {label}".strip(),
        ylabel=f"Predicted - true {label}".strip(),
        title=title,
    )
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_learning_curves(curves: pd.DataFrame, *, title: str = "Learning curves") -> Figure:
    """Every numeric column against ``epoch`` (or ``step``, or the row number).

    Columns whose name contains ``loss`` share the left panel; the other metrics the right one.
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
            ax.plot(x[keep], values[keep], marker=".", label=column)
        ax.set(xlabel=x_name or "row", ylabel="loss" if columns is losses else "metric")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig
