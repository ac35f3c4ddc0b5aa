"""Survival figures written to PNG files: Kaplan-Meier curves by risk group, time-dependent AUC.

This module owns drawing; the numbers come from scikit-survival (``kaplan_meier_estimator``,
``compare_survival``). Figures are built with matplotlib's object API on an Agg canvas, so no
display is needed and pyplot's global state is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sksurv.compare import compare_survival
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.ipcw import aalen_johansen

__all__ = [
    "default_group_names",
    "plot_km_risk_group_panels",
    "plot_km_risk_groups",
    "plot_td_auc",
    "time_label",
]


def default_group_names(n_groups: int) -> list[str]:
    """Legend names of risk groups ordered from lowest to highest risk."""
    if n_groups == 2:
        return ["low risk", "high risk"]
    if n_groups == 3:
        return ["low risk", "intermediate risk", "high risk"]
    return [f"risk group {k + 1}" for k in range(n_groups)]


def time_label(time_unit: str | None) -> str:
    """The time axis' label: ``Time (days)``, or ``Time`` when the unit is not known."""
    return f"Time ({time_unit})" if time_unit else "Time"


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=150)
    return path


def plot_km_risk_groups(
    time: Any,
    event: Any,
    groups: Any,
    path: str | os.PathLike,
    title: str = "",
    group_names: Sequence[str] | None = None,
    n_risk_times: int = 5,
    time_unit: str | None = None,
) -> Path:
    """Kaplan-Meier curves per risk group with the log-rank p-value and a numbers-at-risk table.

    Args:
        time, event: follow-up times and event indicators (bool or 0/1).
        groups: group of each subject (e.g. from ``assign_risk_groups``; sorted values = order).
        path: PNG file to write (parent folders are created).
        title: figure title; the log-rank p-value is appended when it can be computed.
        group_names: one legend name per distinct group value, in sorted order.
        n_risk_times: about how many (rounded, evenly spaced) times the numbers-at-risk table
            shows.
        time_unit: unit of ``time`` (``data.time_unit``) for the axis label; None: "Time".

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fig = Figure(figsize=(7, 5.5))
    ax, table_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    _draw_km(ax, table_ax, time, event, groups, title, group_names, n_risk_times, None, time_unit)
    fig.tight_layout()
    return _save(fig, path)


def _draw_km(
    ax: Any,
    table_ax: Any,
    time: Any,
    event: Any,
    groups: Any,
    title: str,
    group_names: Sequence[str] | None,
    n_risk_times: int,
    levels: np.ndarray | None = None,
    time_unit: str | None = None,
) -> None:
    """Kaplan-Meier curves per group on ``ax``, numbers at risk on ``table_ax``; ``levels`` (all
    group values, default those in ``groups``) fixes each group's colour and table row."""
    time = as_numpy(time)
    event = as_numpy(event) != 0
    groups = np.asarray(groups).reshape(-1)
    levels = np.unique(groups) if levels is None else np.asarray(levels)
    names = list(group_names) if group_names is not None else default_group_names(len(levels))
    if len(names) != len(levels):
        raise ValueError(f"{len(names)} group names given for {len(levels)} groups")

    p_text = ""
    if np.unique(groups).shape[0] > 1 and event.any():
        try:
            p_value = compare_survival(Surv.from_arrays(event=event, time=time), groups)[1]
            p_text = f"log-rank {_format_p(float(p_value))}"
        except np.linalg.LinAlgError:
            p_text = "log-rank test not computable"

    ticks = MaxNLocator(nbins=n_risk_times - 1).tick_values(0.0, float(time.max()))
    risk_times = ticks[(ticks >= 0.0) & (ticks <= time.max())]
    for row, (level, name) in enumerate(zip(levels, names, strict=True)):
        member = groups == level
        if not member.any():
            continue
        if event[member].any():
            km_time, km_surv = kaplan_meier_estimator(event[member], time[member])
        else:
            km_time, km_surv = np.array([time[member].max()]), np.array([1.0])
        (line,) = ax.step(
            np.r_[0.0, km_time],
            np.r_[1.0, km_surv],
            where="post",
            color=f"C{row}",
            label=f"{name} (n={member.sum()})",
        )
        censored = member & ~event
        if censored.any():
            # Censoring ticks on the curve, at the KM value just at the censoring time.
            idx = np.searchsorted(km_time, time[censored], side="right") - 1
            tick_y = np.where(idx >= 0, km_surv[np.clip(idx, 0, None)], 1.0)
            ax.plot(time[censored], tick_y, "|", color=line.get_color(), markersize=6)
        at_risk = [(time[member] >= t).sum() for t in risk_times]
        for t, n in zip(risk_times, at_risk, strict=True):
            table_ax.text(t, row, str(n), ha="center", va="center", color=line.get_color())

    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("Survival probability")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(" — ".join(s for s in (title, p_text) if s))
    ax.grid(alpha=0.3)
    table_ax.set_yticks(range(len(levels)), names)
    table_ax.set_ylim(len(levels) - 0.5, -0.5)
    table_ax.set_xticks(risk_times, [f"{t:g}" for t in risk_times])
    table_ax.set_xlabel(time_label(time_unit))
    table_ax.set_title("Number at risk", fontsize="small", loc="left")
    for side in ("top", "right", "left"):
        table_ax.spines[side].set_visible(False)
    table_ax.tick_params(axis="y", length=0)


def plot_km_risk_group_panels(
    panels: Mapping[str, tuple[Any, Any, Any]],
    *,
    title: str = "",
    group_names: Sequence[str] | None = None,
    n_risk_times: int = 5,
    time_unit: str | None = None,
) -> Figure:
    """One Kaplan-Meier panel (with log-rank p-value and numbers at risk) per data set, e.g.
    per evaluated split: ``panels`` maps the panel title to ``(time, event, groups)``.

    Returns the figure (Agg canvas) for the caller to save; every panel uses the same group
    names, so the risk groups must be defined once (e.g. by training cut-points).
    """
    n = len(panels)
    levels = np.unique(np.concatenate([np.asarray(g).reshape(-1) for _, _, g in panels.values()]))
    fig = Figure(figsize=(4.6 * n, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, n, height_ratios=[4, 1])
    for column, (name, (time, event, groups)) in enumerate(panels.items()):
        ax = fig.add_subplot(grid[0, column])
        table_ax = fig.add_subplot(grid[1, column], sharex=ax)
        _draw_km(
            ax, table_ax, time, event, groups, name, group_names, n_risk_times, levels, time_unit
        )
        ax.title.set_fontsize("medium")
        if column:
            ax.set_ylabel("")
    if title:
        fig.suptitle(title)
    return fig


def plot_cumulative_incidence_panels(
    panels: Mapping[str, tuple[Any, Any, Any, Any]],
    causes: int,
    *,
    title: str = "",
    time_unit: str | None = None,
) -> Figure:
    """Observed (Aalen-Johansen, steps) and mean predicted (lines) cumulative incidence of each
    competing cause, one panel per data set: ``panels`` maps the panel title to
    ``(time, cause, times, mean_predicted)`` with ``mean_predicted`` ``(causes, len(times))``.
    """
    n = len(panels)
    fig = Figure(figsize=(4.6 * n, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    colors = [f"C{c}" for c in range(causes)]
    for ax, (name, (time, cause, times, predicted)) in zip(axes, panels.items(), strict=True):
        time = as_numpy(time)
        steps = np.unique(np.concatenate([[0.0], time[time <= np.max(times)]]))
        observed = aalen_johansen(time, cause, steps, causes)
        for c in range(causes):
            ax.step(steps, observed[c], where="post", color=colors[c], label=f"cause {c + 1}")
            ax.plot(as_numpy(times), np.asarray(predicted)[c], color=colors[c], linestyle="--")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(time_label(time_unit))
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Cumulative incidence")
    axes[0].legend(loc="upper left", title="steps: Aalen-Johansen\ndashed: mean predicted")
    if title:
        fig.suptitle(title)
    return fig


def plot_td_auc(
    times: Any,
    auc: Any,
    mean_auc: float | None,
    path: str | os.PathLike,
    time_unit: str | None = None,
) -> Path:
    """Time-dependent AUC against time, with the mean AUC as a dashed line; writes a PNG."""
    times = as_numpy(times)
    auc = as_numpy(auc)
    if times.shape != auc.shape:
        raise ValueError(f"{times.shape[0]} times but {auc.shape[0]} AUC values")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(times, auc, marker="o", label="time-dependent AUC")
    if mean_auc is not None:
        ax.axhline(mean_auc, linestyle="--", color="gray", label=f"mean AUC = {mean_auc:.3f}")
    ax.axhline(0.5, linestyle=":", color="lightgray")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(time_label(time_unit))
    ax.set_ylabel("Cumulative/dynamic AUC")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
