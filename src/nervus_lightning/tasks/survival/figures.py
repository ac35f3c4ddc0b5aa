"""Figures of survival labels: the report's (Kaplan-Meier panels of the risk groups, cumulative
incidence of competing causes, calibration) and the run folder's PNGs (``km_<label>_<split>.png``,
``td_auc_<label>_<split>.png``), from ``predictions.csv`` and the training-split aggregates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.evaluation.sections import (
    EvalContext,
    LabelSection,
    add_figure,
    figure_splits,
    find_subset,
    split_styles,
)
from nervus_lightning.evaluation.survival_calibration import plot_survival_calibration
from nervus_lightning.survival.metrics import (
    MAX_ROWS_EXACT,
    assign_risk_groups,
    survival_metrics,
    td_auc_key,
)
from nervus_lightning.survival.plots import (
    plot_cumulative_incidence_panels,
    plot_km_risk_group_panels,
    plot_km_risk_groups,
    plot_td_auc,
)
from nervus_lightning.survival.reference import SurvivalReference


def known_outcomes(frame: pd.DataFrame, spec: LabelSpec) -> tuple[np.ndarray, ...] | None:
    """``(time, event, risk)`` of the rows of ``frame`` whose outcome of ``spec`` is known, or
    None when there are none (or the columns are missing)."""
    if spec.name not in frame.columns or spec.period not in frame.columns:
        return None
    event = pd.to_numeric(frame[spec.name], errors="coerce").to_numpy(np.float64)
    time = pd.to_numeric(frame[spec.period], errors="coerce").to_numpy(np.float64)
    risk = frame[f"risk_{spec.name}"].to_numpy(np.float64)
    known = ~(np.isnan(event) | np.isnan(time))
    if not known.any():
        return None
    return time[known], event[known], risk[known]


def write_run_figures(
    predictions: pd.DataFrame,
    out_dir: Any,
    labels: Sequence[LabelSpec],
    references: Sequence[SurvivalReference | None],
    time_unit: str | None = None,
    *,
    max_rows_exact: int = MAX_ROWS_EXACT,
    seed: int = 0,
) -> None:
    """The run folder's Kaplan-Meier curves of the risk groups and td-AUC over time, per split
    and endpoint with a fitted ``references[j]`` (time axes in ``time_unit``; ``max_rows_exact``
    and ``seed``: the subsample of the td-AUC, as ``evaluation.max_rows_exact`` and
    ``evaluation.seed``)."""
    out_dir = Path(out_dir)
    for split, rows in predictions.groupby("split", sort=False):
        for spec, reference in zip(labels, references, strict=True):
            arrays = known_outcomes(rows, spec)
            if arrays is None or reference is None:
                continue
            time, event, risk = arrays
            groups = assign_risk_groups(risk, reference.risk_cutpoints)
            plot_km_risk_groups(
                time,
                event,
                groups,
                out_dir / f"km_{spec.name}_{split}.png",
                title=f"{spec.name}, {split} (cut-points from training risks)",
                time_unit=time_unit,
            )
            grid = reference.td_auc_plot_grid()
            m = survival_metrics(
                reference, time, event, risk, grid, logrank=False,
                max_rows_exact=max_rows_exact, seed=seed,
            )  # fmt: skip
            auc = np.array([np.nan if m[td_auc_key(t)] is None else m[td_auc_key(t)] for t in grid])
            if np.isfinite(auc).any():
                plot_td_auc(
                    grid,
                    auc,
                    m["td_auc_mean"],
                    out_dir / f"td_auc_{spec.name}_{split}.png",
                    time_unit=time_unit,
                )


def survival_figures(section: LabelSection, ctx: EvalContext) -> None:
    """Kaplan-Meier curves by training-defined risk group and calibration at the middle
    evaluation time, each one figure with one panel per split."""
    name = section.name
    splits = figure_splits(section, ctx)
    chosen = {s: x for s in splits if (x := find_subset(section, s))}
    if not chosen:
        return
    where = ", ".join(chosen)
    add_figure(
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
            time_unit=ctx.time_unit,
        ),
    )
    causes = section.info.get("causes")
    with_cif = {s: x for s, x in chosen.items() if "cif_mean" in x.arrays}
    if causes and with_cif:
        add_figure(
            section,
            ctx,
            "cumulative_incidence",
            f"Cumulative incidence of each cause of {name}, one panel per split "
            f"({', '.join(with_cif)}): Aalen-Johansen estimate (steps) and mean predicted "
            "cumulative incidence (dashed).",
            plot_cumulative_incidence_panels(
                {
                    s: (x.arrays["time"], x.arrays["event"], x.arrays["cif_times"],
                        x.arrays["cif_mean"])
                    for s, x in with_cif.items()
                },
                causes,
                title=f"{name}: cumulative incidence by cause",
                time_unit=ctx.time_unit,
            ),
        )  # fmt: skip
    t = section.info["calibration_time"]
    at = f"t = {t:g}" + (f" {ctx.time_unit}" if ctx.time_unit else "")
    tables = {s: x.calibration for s, x in chosen.items() if x.calibration is not None}
    add_figure(
        section,
        ctx,
        "calibration",
        f"Calibration of {name} at {at} (the middle evaluation time), one panel per split "
        f"({where}): Kaplan-Meier observed survival (95% interval) against mean predicted "
        "survival in equal-sized bins of predicted survival; dotted: perfect calibration.",
        plot_survival_calibration(
            tables,
            t,
            styles=split_styles(splits),
            title=f"{name}: calibration at {at}",
            time_unit=ctx.time_unit,
        ),
    )
