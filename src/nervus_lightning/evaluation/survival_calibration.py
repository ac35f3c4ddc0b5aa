"""Calibration of predicted survival at one time: predicted vs Kaplan-Meier observed, by risk bin.

Subjects are put into (up to) ten equally sized bins of predicted survival at time ``t``; in
each bin the mean predicted survival is set against the Kaplan-Meier estimate at ``t``
(scikit-survival ``kaplan_meier_estimator``, with its log-log 95% interval). A bin whose
follow-up ends before ``t`` has no observed value. The report uses the middle evaluation time
of the label as ``t``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sksurv.nonparametric import kaplan_meier_estimator

from nervus_lightning.evaluation.plots import Styles, panel_figure

CALIBRATION_COLUMNS = [
    "bin",
    "n",
    "events",
    "predicted",
    "observed",
    "observed_lower",
    "observed_upper",
]


def kaplan_meier_at(time: np.ndarray, event: np.ndarray, t: float) -> tuple[float, float, float]:
    """Kaplan-Meier survival at ``t`` and its 95% interval; NaN if follow-up ends before ``t``."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    if time.shape[0] == 0 or time.max() < t:
        return np.nan, np.nan, np.nan
    km_time, km_surv, km_ci = kaplan_meier_estimator(event, time, conf_type="log-log")
    index = np.searchsorted(km_time, t, side="right") - 1
    if index < 0:
        return 1.0, 1.0, 1.0
    return float(km_surv[index]), float(km_ci[0, index]), float(km_ci[1, index])


def survival_calibration_table(
    time: np.ndarray, event: np.ndarray, predicted_survival: np.ndarray, t: float, n_bins: int = 10
) -> pd.DataFrame:
    """Per bin of predicted survival at ``t`` (1 = lowest predicted survival, i.e. highest risk):
    n, events, mean predicted survival, Kaplan-Meier observed survival and its 95% interval."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    predicted = np.asarray(predicted_survival, dtype=float)
    n_bins = int(max(1, min(n_bins, time.shape[0] // 10)))
    # Ranks break ties so that qcut can always make n_bins equally sized bins.
    ranks = pd.Series(predicted).rank(method="first").to_numpy()
    bins = pd.qcut(ranks, n_bins, labels=False)
    rows = []
    for b in range(n_bins):
        member = bins == b
        observed = kaplan_meier_at(time[member], event[member], t)
        rows.append(
            [
                b + 1,
                int(member.sum()),
                int(event[member].sum()),
                float(predicted[member].mean()),
                *observed,
            ]
        )
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def plot_survival_calibration(
    tables: Mapping[str, pd.DataFrame] | pd.DataFrame,
    t: float,
    *,
    styles: Styles | None = None,
    title: str = "",
    time_unit: str | None = None,
) -> Figure:
    """Observed (Kaplan-Meier, with 95% interval) against mean predicted survival per bin: one
    panel per table of ``tables`` (e.g. per split; a single table gives one panel). Bins whose
    follow-up ends before ``t`` have no observed value and are not drawn. ``time_unit`` (e.g.
    ``days``) follows ``t`` in the axis labels."""
    at = f"t = {t:g}" + (f" {time_unit}" if time_unit else "")
    if isinstance(tables, pd.DataFrame):
        tables = {"": tables}
    fig, axes = panel_figure(len(tables), width=3.9, height=4.1)
    for ax, (name, table) in zip(axes, tables.items(), strict=True):
        # Arrays, not Series: matplotlib reads a one-bin Series with float() (a pandas warning).
        shown = {k: v.to_numpy() for k, v in table[table["observed"].notna()].items()}
        style = {"ls": "-", **(styles or {}).get(name, {})}
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.errorbar(
            shown["predicted"],
            shown["observed"],
            yerr=[
                shown["observed"] - shown["observed_lower"],
                shown["observed_upper"] - shown["observed"],
            ],
            marker="o",
            ms=4,
            capsize=2,
            lw=1.4,
            **style,
        )
        k = len(shown["observed"])
        bins = f"{k} bin{'s' * (k != 1)} of ~{int(table['n'].median())} cases"
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.02),
            xlabel=f"Predicted survival at {at}",
            ylabel=f"Observed survival at {at}" if ax is axes[0] else None,
            title=f"{name} ({bins})" if name else bins,
            aspect="equal",
        )
        ax.title.set_fontsize("medium")
    if title:
        fig.suptitle(title)
    return fig
