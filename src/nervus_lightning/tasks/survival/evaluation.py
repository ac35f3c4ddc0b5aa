"""The report's survival section: metrics with bootstrap intervals, notes, tables and figures
of one survival label, from ``predictions.csv`` and ``schema.json`` alone (no model needed).

The training-split aggregates come from the schema when the run fitted them (else from the
``train`` rows of the predictions); the IPCW statistics weigh with the evaluated split's own
censoring curve; competing-risk labels add the causes' concordance, Brier scores and cumulative
incidence calibration (:mod:`nervus_lightning.survival.competing`; the metrics beyond
``survival_metrics`` are :mod:`.report_metrics`'s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nervus_lightning.evaluation.bootstrap import (
    BootstrapCI,
    bootstrap_distributions,
    bootstrap_size,
    rescale_distribution,
)
from nervus_lightning.evaluation.sections import (
    ALL_GROUPS,
    EvalContext,
    LabelSection,
    Subset,
    bootstrap_intervals,
    iter_subsets,
    safe_name,
)
from nervus_lightning.evaluation.survival_calibration import survival_calibration_table
from nervus_lightning.survival import competing, discrete
from nervus_lightning.survival.metrics import (
    MAX_ROWS_EXACT,
    assign_risk_groups,
    ipcw_subsample,
    survival_metrics,
)
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.tasks.survival.report_metrics import (
    accuracy_metrics,
    cause_ipcw_metrics,
    cause_metrics,
    cif_calibration,
)


def _survival_reference(
    train: pd.DataFrame, label: Mapping, name: str, period: str
) -> tuple[SurvivalReference, list[str]]:
    """Training-split aggregates of a survival label: from the schema when it has them (fitted
    at training time), else fitted on the ``train`` rows of the predictions."""
    if all(label.get(k) is not None for k in SurvivalReference.JSON_KEYS):
        return SurvivalReference.from_json(dict(label)), [
            "Baseline hazard, evaluation times and risk cut-points from the training run "
            "(schema.json)."
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


#: What the report's learning-curve caption adds for a survival label.
CURVE_NOTE = (
    "With a Cox model the loss (negative partial log-likelihood per event) grows with the "
    "number of patients in the risk sets it compares (each training batch, the whole validation "
    "split), so the two curves' levels differ on that count too: compare each curve's shape, not "
    "the gap between them."
)
#: The censoring-weighted metrics of :func:`survival_metrics` (computed on the IPCW subsample).
_IPCW_KEYS = {"c_index_uno", "td_auc_mean", "ibs"}


def _is_ipcw(metric: str, ipcw_keys: set[str]) -> bool:
    return metric in ipcw_keys or metric.startswith(
        ("td_auc_t", "td_auc_cause", "ibs_cause", "c_index_uno_cause", "ibs_null", "ipa")
    )


def _large_split_notes(n: int, ctx: EvalContext, max_rows_exact: int) -> dict[str, str | None]:
    """What a split larger than the evaluation limits was computed on (metrics_notes.csv)."""
    notes: dict[str, str | None] = {"ipcw": None, "bootstrap": None}
    if n > max_rows_exact:
        notes["ipcw"] = (
            f"computed on a random subsample of {max_rows_exact:,} of the {n:,} cases "
            f"(seed {ctx.seed}; evaluation.max_rows_exact)"
        )
    if ctx.n_bootstrap > 0 and n > ctx.max_rows_bootstrap:
        notes["bootstrap"] = (
            f"CI from resamples of {ctx.max_rows_bootstrap:,} of the {n:,} cases, rescaled to "
            "the cases the value is computed on (m-out-of-n bootstrap; "
            "evaluation.max_rows_bootstrap)"
        )
    return notes


def _method_notes(
    name: str, causes: int, calibration_time: float, unit: str, cutpoints: Any
) -> list[str]:
    """What the survival metrics of label ``name`` are and how they were computed (the notes
    under its section: competing causes, censoring weights, ipa, calibration time)."""
    notes: list[str] = []
    if causes:
        notes.append(
            f"Competing risks (causes 1..{causes}): the metrics without a cause number, the "
            "Kaplan-Meier risk groups and the calibration are for event-free survival, any cause "
            f"counting as the event (risk_{name}, surv_{name}_*). c_index_cause<c> is Wolbers' "
            f"concordance of risk_{name}_<c> (restricted mean time lost to cause c) for cause c: "
            "a cause-c failure is compared with everyone event-free after it and with every "
            "other-cause failure, at any time; no censoring weights. cif_observed_cause<c> "
            "(Aalen-Johansen) and cif_predicted_cause<c> (mean predicted CIF) are cause c's "
            "cumulative incidence at the calibration time. c_index_uno_cause<c> is Wolbers' "
            "concordance with Uno's censoring weights, truncated at Uno's tau; "
            "td_auc_cause<c>_t<time> is cause c's "
            "cumulative/dynamic AUC at an evaluation time (marker: predicted cumulative "
            "incidence there; cases: cause-c failures by then; controls: everyone else, "
            "other-cause failures included) and ibs_cause<c> the integrated Brier score of "
            "cause c's predicted cumulative incidence on the ibs times, all three with "
            "censoring weights from the evaluated split's own Kaplan-Meier curve (any cause "
            "counting as an event)."
        )
    notes.append(
        "IPCW statistics (c_index_uno, td_auc_*, ibs, ibs_null, ipa and the per-cause ones): "
        "censoring weights from the evaluated split's own Kaplan-Meier curve of the censoring "
        "times (of the rows scored, per split and group), not from the training split."
    )
    notes.append(
        "ipa: index of prediction accuracy, 1 - ibs / ibs_null, where ibs_null is the IBS of "
        "the training split's Kaplan-Meier curve given to every case (no inputs), on the same "
        "cases and times; above 0 the model predicts better than that"
        + (
            ", below 0 worse. ipa_cause<c> likewise for ibs_cause<c>, against the training "
            "Aalen-Johansen incidence of cause c."
            if causes
            else ", below 0 worse."
        )
    )
    notes.append(
        f"Calibration at t = {calibration_time:g}{unit} (middle evaluation time); "
        "risk groups from the training cut-points "
        f"{', '.join(f'{c:.3g}' for c in cutpoints)}."
    )
    return notes


@dataclass
class _SurvivalLabel:
    """What every split x group of one survival label is evaluated with."""

    label: Mapping
    name: str
    period: str
    reference: SurvivalReference
    causes: int
    cause_columns: list[str]
    calibration_time: float
    #: ``evaluation.max_rows_exact`` (survival's own setting, :class:`.options.SurvivalOptions`).
    max_rows_exact: int = MAX_ROWS_EXACT


@dataclass
class _SubsetScores:
    """One split x group's arrays, point estimates and the CIFs its resamples reuse."""

    time: np.ndarray
    event: np.ndarray
    risk: np.ndarray
    cause_risk: np.ndarray
    #: A discrete-time model's own curves on the IBS grid (None for Cox: Breslow baseline).
    own_ibs: np.ndarray | None
    cause_ibs_cif: np.ndarray | None
    cause_auc_cif: np.ndarray | None
    point: dict[str, float | None]
    reasons: dict[str, str]
    cif_arrays: dict[str, np.ndarray]


def _rows_with_values(df: pd.DataFrame, label: Mapping, section: LabelSection) -> pd.DataFrame:
    """The rows with a numeric event, time and risk (the others counted in a note)."""
    name, period = label["name"], label["period"]
    values = df[[name, period, f"risk_{name}"]].apply(pd.to_numeric, errors="coerce")
    known = values.notna().all(axis=1).to_numpy()
    if (~known).any():
        section.notes.append(
            f"{int((~known).sum())} case(s) without event, time or risk are "
            "left out of the survival metrics."
        )
    return df[known].assign(**{c: values.loc[known, c] for c in values.columns})


def _label_setup(df: pd.DataFrame, label: Mapping, section: LabelSection) -> _SurvivalLabel | None:
    """The label's training reference and competing causes, with their notes; None (and a
    note) when neither the schema nor a ``train`` split with events gives a reference."""
    name, period = label["name"], label["period"]
    train = df[df["split"] == "train"]
    from_schema = all(label.get(k) is not None for k in SurvivalReference.JSON_KEYS)
    if not from_schema and (train.empty or not (train[name] != 0).any()):
        section.notes.append(
            "No 'train' split with events in the predictions: survival metrics "
            "need the training follow-up and were not computed."
        )
        return None
    reference, notes = _survival_reference(train, label, name, period)
    section.notes += notes
    if label.get("survival_model", "cox") != "cox":
        section.notes.append(
            f"ibs and calibration from the {label['survival_model']} model's own survival curves "
            "(interpolated between its grid times), not from a Breslow baseline."
        )
    causes = int(label.get("causes") or 0)
    cause_columns = [f"risk_{name}_{c}" for c in range(1, causes + 1)]
    if causes and not set(cause_columns) <= set(df.columns):
        section.notes.append(
            f"Competing causes 1..{causes} but no {cause_columns[0]}... columns in the "
            "predictions: cause-specific concordance not computed."
        )
        causes, cause_columns = 0, []
    calibration_time = float(np.median(reference.eval_times))
    return _SurvivalLabel(label, name, period, reference, causes, cause_columns, calibration_time)


def _point_scores(rows: pd.DataFrame, setup: _SurvivalLabel, ctx: EvalContext) -> _SubsetScores:
    """Every metric of one split x group (the IPCW ones on their seeded subsample above
    ``evaluation.max_rows_exact``), with the reasons of the missing ones."""
    label, reference, causes = setup.label, setup.reference, setup.causes
    time = rows[setup.period].to_numpy(dtype=float)
    event = rows[setup.name].to_numpy(dtype=float)
    risk = rows[f"risk_{setup.name}"].to_numpy(dtype=float)
    reasons: dict[str, str] = {}
    ibs_grid = reference.ibs_grid()
    own_ibs = discrete.model_survival(rows, label, ibs_grid)
    point = survival_metrics(
        reference, time, event, risk, reasons=reasons, max_rows_exact=setup.max_rows_exact,
        seed=ctx.seed, ibs_survival=own_ibs,
    )  # fmt: skip
    # The model's own curves scored by pycox (point estimates only, no bootstrap; pycox's
    # Antolini C compares all pairs, so it gets the IPCW metrics' subsample).
    sub = ipcw_subsample(len(rows), setup.max_rows_exact, ctx.seed)
    scored = rows if sub is None else rows.iloc[sub]
    point.update(discrete.curve_metrics(scored, label, reference, reasons))
    cause_risk = rows[setup.cause_columns].to_numpy(dtype=float)
    # The CIFs on the IBS grid and at the evaluation times once per split, not per resample.
    cause_ibs_cif = competing.model_cif(rows, label, ibs_grid) if causes else None
    cause_auc_cif = competing.model_cif(rows, label, reference.eval_times) if causes else None
    point.update(cause_metrics(time, event, cause_risk, reasons))
    keep = slice(None) if sub is None else sub  # the IPCW metrics' rows
    if causes:
        point.update(
            cause_ipcw_metrics(
                reference, time[keep], event[keep], cause_risk[keep],
                None if cause_auc_cif is None else cause_auc_cif[keep],
                None if cause_ibs_cif is None else cause_ibs_cif[keep], reasons,
            )
        )  # fmt: skip
    point.update(accuracy_metrics(reference, time[keep], event[keep], point, causes, reasons))
    cif_arrays = {}
    if causes:
        point.update(cif_calibration(rows, label, time, event, setup.calibration_time, reasons))
        times = discrete.subgrid(np.asarray(label.get("grid") or [0.0, 1.0], dtype=float))
        predicted_cif = competing.model_cif(rows, label, times)
        if predicted_cif is not None:
            cif_arrays = {"cif_times": times, "cif_mean": predicted_cif.mean(axis=0)}
    return _SubsetScores(
        time, event, risk, cause_risk, own_ibs, cause_ibs_cif, cause_auc_cif, point, reasons,
        cif_arrays,
    )  # fmt: skip


def _survival_intervals(
    scores: _SubsetScores, setup: _SurvivalLabel, ctx: EvalContext
) -> dict[str, BootstrapCI]:
    """Bootstrap intervals of every metric but the log-rank p-value; m-out-of-n resamples above
    ``evaluation.max_rows_bootstrap``, rescaled to the cases each value is computed on."""
    n = len(scores.time)
    if ctx.n_bootstrap <= 0 or n <= 1:
        return {}
    reference, causes = setup.reference, setup.causes
    m = bootstrap_size(n, ctx.max_rows_bootstrap)
    # Predicted survival on the IBS grid once per split, not once per resample.
    table = scores.own_ibs
    if table is None and n <= ctx.max_rows_bootstrap:
        table = reference.survival(scores.risk, reference.ibs_grid())
    cause_risk, ibs_cif, auc_cif = scores.cause_risk, scores.cause_ibs_cif, scores.cause_auc_cif

    def resample_metrics(t, e, r, index):
        out = {
            **survival_metrics(
                reference, t, e, r, max_rows_exact=None, logrank=False,
                ibs_survival=None if table is None else table[index],
            ),
            **cause_metrics(t, e, cause_risk[index]),
        }  # fmt: skip
        if causes:
            out.update(
                cause_ipcw_metrics(
                    reference, t, e, cause_risk[index],
                    None if auc_cif is None else auc_cif[index],
                    None if ibs_cif is None else ibs_cif[index],
                )
            )  # fmt: skip
        out.update(accuracy_metrics(reference, t, e, out, causes))
        return out

    distributions = bootstrap_distributions(
        resample_metrics, scores.time, scores.event, scores.risk, np.arange(n),
        n_resamples=ctx.n_bootstrap, seed=ctx.seed, size=m,
    )  # fmt: skip
    distributions.pop("logrank_p", None)  # a p-value has no confidence interval
    ipcw_rows = min(n, setup.max_rows_exact)
    for metric, values in distributions.items():
        size = ipcw_rows if _is_ipcw(metric, _IPCW_KEYS) else n
        distributions[metric] = rescale_distribution(values, scores.point.get(metric), m, size)
    return bootstrap_intervals(distributions, ctx.ci)


def _add_metric_rows(
    section: LabelSection,
    split: str,
    group: str,
    scores: _SubsetScores,
    intervals: Mapping[str, BootstrapCI],
    setup: _SurvivalLabel,
    ctx: EvalContext,
) -> None:
    """The subset's counts and metrics, each with its interval and notes (why it is missing,
    what a large split computed it on)."""
    event, causes = scores.event, setup.causes
    large = _large_split_notes(len(event), ctx, setup.max_rows_exact)
    section.add(split, group, "n", float(len(event)))
    section.add(split, group, "events", float((event != 0).sum()))
    for c in range(1, causes + 1):
        section.add(split, group, f"events_cause{c}", float((event == c).sum()))
    for metric, value in scores.point.items():
        note = [
            scores.reasons.get(metric),
            large["ipcw"] if _is_ipcw(metric, _IPCW_KEYS) else None,
        ]
        if metric in intervals:
            note.append(large["bootstrap"])
        text = "; ".join(x for x in note if x) or None
        section.add(split, group, metric, value, intervals.get(metric), text)


def _calibration_at(
    rows: pd.DataFrame, setup: _SurvivalLabel, scores: _SubsetScores
) -> pd.DataFrame:
    """Observed vs predicted survival at the calibration time, by bin of predicted survival
    (from the model's own curves when it has them, else the Breslow baseline)."""
    t = setup.calibration_time
    predicted = discrete.model_survival(rows, setup.label, [t])
    if predicted is None:
        predicted = setup.reference.survival(scores.risk, [t])
    return survival_calibration_table(scores.time, scores.event, predicted[:, 0], t)


def _add_calibration_table(
    section: LabelSection,
    tables: list[pd.DataFrame],
    setup: _SurvivalLabel,
    unit: str,
    ctx: EvalContext,
) -> None:
    """All subsets' calibration bins as ``survival_calibration_<label>.csv`` and a report table."""
    table = pd.concat(tables, ignore_index=True)
    table = table[["split", "group", *table.columns.drop(["split", "group"])]]
    table.to_csv(ctx.out_dir / f"survival_calibration_{safe_name(setup.name)}.csv", index=False)
    section.tables.append(
        (
            f"Calibration at t = {setup.calibration_time:g}{unit} by bin of predicted "
            "survival (1 = highest risk)",
            table,
        )
    )


def evaluate_survival(
    df: pd.DataFrame, label: Mapping, ctx: EvalContext, max_rows_exact: int = MAX_ROWS_EXACT
) -> LabelSection:
    """Survival metrics with CIs, Kaplan-Meier risk-group curves and calibration at one time.

    Metrics are those of :func:`nervus_lightning.survival.metrics.survival_metrics` (the
    log-rank p-value without an interval), bootstrapped unstratified; every resample recomputes
    all of them (O(m log m) each, m = min(cases, ``evaluation.max_rows_bootstrap``)). Splits
    above ``max_rows_exact`` (``evaluation.max_rows_exact``, survival's own setting) or
    ``max_rows_bootstrap`` cases are evaluated as :func:`_large_split_notes` says, in
    ``metrics_notes.csv``.
    """
    section = LabelSection(label["name"], "survival", curve_note=CURVE_NOTE)
    df = _rows_with_values(df, label, section)
    setup = _label_setup(df, label, section)
    if setup is None:
        return section
    setup.max_rows_exact = int(max_rows_exact)
    unit = f" {ctx.time_unit}" if ctx.time_unit else ""
    median_time = f"median time ({ctx.time_unit})" if ctx.time_unit else "median time"
    cutpoints = setup.reference.risk_cutpoints
    section.notes += _method_notes(
        setup.name, setup.causes, setup.calibration_time, unit, cutpoints
    )
    summary, calibration_tables = {}, []
    for split, group, rows in iter_subsets(df, ctx):
        if rows.empty:
            continue
        scores = _point_scores(rows, setup, ctx)
        intervals = _survival_intervals(scores, setup, ctx)
        _add_metric_rows(section, split, group, scores, intervals, setup, ctx)
        time, event = scores.time, scores.event
        if group == ALL_GROUPS:
            summary[split] = {
                "n": len(rows),
                "events": int((event != 0).sum()),
                "event rate": f"{(event != 0).mean():.1%}",
                median_time: float(np.median(time)),
            }
        table = _calibration_at(rows, setup, scores)
        calibration_tables.append(table.assign(split=split, group=group))
        arrays = {
            "time": time,
            "event": event,
            "risk_group": assign_risk_groups(scores.risk, cutpoints),
            **scores.cif_arrays,
        }
        section.subsets.append(Subset(split, group, arrays, calibration=table))
    section.info.update(calibration_time=setup.calibration_time, causes=setup.causes)
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    if calibration_tables:
        _add_calibration_table(section, calibration_tables, setup, unit, ctx)
    return section
