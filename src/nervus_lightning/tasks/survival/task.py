"""Survival (DeepSurv): one risk head per endpoint, Cox partial likelihood, Breslow baseline.

``task.model`` other than ``cox`` selects a discrete-time model instead (``logistic_hazard``,
``pmf``, ``deephit``): its head has ``task.num_durations`` outputs, and the grid, loss, curves and
risk score are those of :mod:`nervus_lightning.survival.discrete`; what follows about the
training aggregates holds for every model (their Breslow baseline is then fitted on the risk
score but the evaluation does not use it: ``ibs`` and the calibration read the model's own
curves, :func:`nervus_lightning.survival.discrete.model_survival`).

An event column coding competing causes (0 censored, 1..K, K >= 2; ``LabelSpec.causes``) makes a
competing-risk endpoint, DeepHit only: ``K * num_durations`` outputs, the causes' cumulative
incidences, per-cause risks and Wolbers' cause-specific C of
:mod:`nervus_lightning.survival.competing`. Everything else (reference, risk groups, the
single-event metrics, figures, calibration) then reads the event-free survival, any cause being
the event, for which those single-event statistics are correct.

The head outputs a log hazard ratio. After training, the task fits on the training split what
survival predictions and metrics need -- a
:class:`~nervus_lightning.survival.reference.SurvivalReference`: Breslow's baseline cumulative
hazard on a time grid, the evaluation times, the risk-group cut-points and a few rounded
percentiles of the training times -- and keeps it as tensors in the checkpoint, so predict on
an external CSV needs nothing else. Only these aggregates are stored, never a training patient's
time or event (a checkpoint may leave the hospital): times on a rounded grid, each step of a
curve backed by at least ``task.min_patients_per_step`` patients. The IPCW statistics weigh
with the evaluated split's own censoring curve.

Batch size and events: the Cox loss compares each event with the cases still at risk *in the same
batch* (with several processes, in the global batch: risk scores are gathered with gradients). A
batch without events carries no information and contributes a zero loss; with an event rate ``r``
a batch of ``b`` cases has no event with probability ``(1 - r) ** b``, so choose ``b`` to make that
small (the data module warns when it exceeds 5 %). Larger batches approximate the full-data
partial likelihood better.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics import MetricCollection

from nervus_lightning.data.schema import (
    LabelSpec,
    check_no_missing,
    numeric_column,
    period_column_for,
)
from nervus_lightning.errors import LABEL_PREFIX, PERIOD_PREFIXES, NervusInputError, csv_lines
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
    add_figure,
    bootstrap_intervals,
    figure_splits,
    find_subset,
    iter_subsets,
    safe_name,
    split_styles,
)
from nervus_lightning.evaluation.survival_calibration import (
    plot_survival_calibration,
    survival_calibration_table,
)
from nervus_lightning.options import check_choice, check_number
from nervus_lightning.survival import competing, discrete
from nervus_lightning.survival.loss import TIES, cox_loss
from nervus_lightning.survival.metrics import (
    MAX_ROWS_EXACT,
    assign_risk_groups,
    cause_ibs,
    cause_td_auc,
    cause_uno_c,
    format_time,
    ipcw_subsample,
    null_ibs,
    prediction_accuracy,
    survival_metrics,
)
from nervus_lightning.survival.plots import (
    plot_cumulative_incidence_panels,
    plot_km_risk_group_panels,
)
from nervus_lightning.survival.reference import MIN_PATIENTS_PER_STEP, SurvivalReference
from nervus_lightning.tasks.base import Task, zero_loss


def _codes(values: pd.Series) -> str:
    """The first few distinct values of a column, as a user wrote them (e.g. ``[1.5, 3]``)."""
    return "[" + ", ".join(f"{v:g}" for v in sorted(values.unique())[:3]) + "]"


class SurvivalTask(Task):
    """Cox proportional hazards heads (several endpoints = several heads, losses summed).

    Args:
        ties: ``efron`` (default) or ``breslow`` handling of tied event times.
        eval_times: times for survival probabilities and time-dependent AUC; default the 25/50/75th
            percentiles of the training event times (per endpoint).
        risk_groups: number of risk groups for Kaplan-Meier curves and the log-rank test
            (cut-points: quantiles of the training risks; 2 = median split).
        model: ``cox`` (DeepSurv, default) or a discrete-time model that does not assume
            proportional hazards: ``logistic_hazard``, ``pmf`` or ``deephit`` (single event, or
            competing causes: :mod:`nervus_lightning.survival.competing`); see
            :mod:`nervus_lightning.survival.discrete`.
        num_durations: size of the discrete time grid (and of the head) of those models.
        alpha, sigma: DeepHit's weighting of likelihood vs rank loss and its rank-loss scale.
        min_patients_per_step: ``k`` of the stored curves: each step backed by at least ``k``
            training events, and no step where fewer than ``k`` patients are still followed
            (:func:`nervus_lightning.survival.reference.aggregate_grid`).
    """

    kind = "survival"
    summary_title = "events and follow-up"
    export_prefix = "risk"
    export_meaning = (
        "risk: the log hazard ratio (DeepSurv). Survival probability at time t: "
        "exp(-H0(t) * exp(risk)), H0(t) the last 'baseline.cumhaz' value whose "
        "'baseline.times' entry is <= t (0 before the first)"
    )

    def export_name(self, j: int) -> str:
        # A discrete-time model's graph returns the survival curve (or the causes' cumulative
        # incidences), not a risk.
        prefix = "cif" if self.causes(j) else "surv" if self.is_discrete else self.export_prefix
        return f"{prefix}_{self.labels[j].name}"

    def export_output(self, j: int) -> dict[str, Any]:
        out = {**super().export_output(j), "period": self.labels[j].period}
        if self.causes(j):
            out["meaning"] = (
                f"cumulative incidence of causes 1..{self.causes(j)} at each time of 'grid', "
                "cause by cause (the first len(grid) values are cause 1); event-free survival "
                "is 1 minus their sum; between grid times interpolate linearly; constant "
                "after the last grid time"
            )
        elif self.is_discrete:
            out["meaning"] = (
                f"survival probability at each time of 'grid' ({self.model} model); between "
                "grid times interpolate linearly (constant density); constant before the first "
                "and after the last grid time"
            )
        return out

    @classmethod
    def evaluate(cls, predictions: pd.DataFrame, label: Mapping[str, Any], ctx: EvalContext):
        return evaluate_survival(predictions, label, ctx)

    @classmethod
    def figures(cls, section: LabelSection, ctx: EvalContext) -> None:
        survival_figures(section, ctx)

    primary_metric = "c_index"
    resampling_note = (
        "survival splits larger than evaluation.max_rows_bootstrap cases draw that many cases "
        "per resample, intervals rescaled to the split's size (m-out-of-n bootstrap); above "
        "evaluation.max_rows_exact, Uno's C, td-AUC and the IBS use a seeded random subsample "
        "(metrics_notes.csv says where)"
    )
    post_training_splits = ("train",)

    def __init__(
        self,
        labels: list[LabelSpec],
        ties: str = "efron",
        eval_times: Sequence[float] | None = None,
        risk_groups: int = 2,
        model: str = "cox",
        num_durations: int = 20,
        alpha: float = 0.2,
        sigma: float = 0.1,
        min_patients_per_step: int = MIN_PATIENTS_PER_STEP,
        evaluation: Any = None,
    ) -> None:
        super().__init__(labels, evaluation=evaluation)
        self.ties = check_choice("task.ties", ties, list(TIES))
        self.model = check_choice("task.model", model, list(discrete.MODELS))
        check_number("task.num_durations", num_durations, low=2, integer=True)
        check_number("task.alpha", alpha, low=0, high=1)
        check_number("task.sigma", sigma, low=0, low_open=True)
        self.num_durations, self.alpha, self.sigma = num_durations, float(alpha), float(sigma)
        check_number("task.min_patients_per_step", min_patients_per_step, low=1, integer=True)
        self.min_patients_per_step = int(min_patients_per_step)
        #: Cut points of each endpoint's time grid (discrete-time models; training split).
        self.cuts: list[np.ndarray | None] = [None] * len(labels)
        check_number("task.risk_groups", risk_groups, low=2, integer=True)
        if eval_times is not None:
            for t in eval_times:
                check_number("task.eval_times", t, low=0, low_open=True)
        self.requested_times = None if eval_times is None else np.asarray(eval_times, float)
        self.risk_groups = risk_groups
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.references: list[SurvivalReference | None] = [None] * len(labels)
        competing = [s.name for s in labels if s.causes]
        if competing and self.model != "deephit":
            raise NervusInputError(
                f"survival label(s) {competing} code competing causes (0 = censored, 1..K = "
                f"cause), which only DeepHit models; task.model={self.model} needs 0/1 events. "
                "Set task.model=deephit, or recode the column as 0/1 (any cause = event)."
            )

    @classmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Event label 0/1 (or competing causes 0/1..K) with its time column ``period_<name>``
        (or ``periods_<name>``)."""
        period = period_column_for(column, df.columns)
        if period is None:
            periods = [c for c in df.columns if c.startswith(PERIOD_PREFIXES)]
            labels = [c for c in df.columns if c.startswith(LABEL_PREFIX)]
            if len(periods) == 1 and len(labels) == 1:
                period = periods[0]  # the original Nervus pairs a lone period with a lone label
            else:
                name = column[len(LABEL_PREFIX) :]
                raise NervusInputError(
                    f"{path}: survival label '{column}' has no time column; add "
                    f"'period_{name}' (time to event or censoring, >= 0)."
                )
        events = numeric_column(
            df, column, path, df.index, "survival event, 0 = censored, 1 = event"
        )
        times = numeric_column(df, period, path, df.index, "survival time")
        causes = cls._causes(events, path, column, train_rows)
        has_event = events.notna()
        check_no_missing(
            times[has_event | times.index.isin(train_rows)],
            period,
            path,
            "survival time",
            "Every case with a known event status needs a time; or set split=exclude.",
        )
        negative = times < 0
        if negative.any():
            raise NervusInputError(
                f"{path}: survival time column '{period}' has negative values at "
                f"{csv_lines(times.index[negative])}. Times must be >= 0."
            )
        if (events[train_rows] != 0).sum() == 0:
            raise NervusInputError(
                f"{path}: survival label '{column}' has no events (all 0) in the training split; "
                "a Cox model cannot learn without events."
            )
        return LabelSpec(name=column, task=cls.kind, period=period, causes=causes)

    @staticmethod
    def _causes(events: pd.Series, path: Path, column: str, train_rows: pd.Index) -> int | None:
        """K for an event column coding competing causes 0 (censored) / 1..K, K >= 2; None for
        a 0/1 event column (see :mod:`nervus_lightning.survival.competing`)."""
        known = events.notna()
        bad = known & ((events < 0) | (events != events.round()))
        if bad.any():
            raise NervusInputError(
                f"{path}: survival event column '{column}' must be 0 (censored) or 1 (event), or "
                "for competing risks the cause 1, 2, ... of the first event, but has "
                f"{_codes(events[bad])} at {csv_lines(events.index[bad])}."
            )
        trained = events[train_rows].dropna()
        causes = int(trained.max()) if len(trained) else 0
        if causes < 2:
            beyond = known & (events > 1)
            if beyond.any():
                raise NervusInputError(
                    f"{path}: survival event column '{column}' has causes "
                    f"{_codes(events[beyond])} at {csv_lines(events.index[beyond])} "
                    "but the training split has only 0/1: a cause needs training events. "
                    "Move cases with those causes into the training split or recode them."
                )
            return None
        unseen = [c for c in range(1, causes + 1) if not (trained == c).any()]
        if unseen:
            raise NervusInputError(
                f"{path}: survival event column '{column}' codes competing causes 1..{causes}, "
                f"but cause(s) {unseen} have no event in the training split; the model cannot "
                "learn a cause without events. Number the causes 1..K without gaps, or merge "
                "rare causes."
            )
        beyond = known & (events > causes)
        if beyond.any():
            raise NervusInputError(
                f"{path}: survival event column '{column}' has cause(s) "
                f"{_codes(events[beyond])} at {csv_lines(events.index[beyond])} "
                f"beyond the training split's causes 1..{causes}: a cause needs training "
                "events. Move such cases into the training split or recode them."
            )
        return causes

    @classmethod
    def check_columns(
        cls, df: pd.DataFrame, path: Path, label_columns: list[str], explicit: bool
    ) -> None:
        """Every time column must be paired with an event label."""
        periods = [c for c in df.columns if c.startswith(PERIOD_PREFIXES)]
        if len(periods) == 1 and len(label_columns) == 1:
            return
        paired = {period_column_for(c, df.columns) for c in label_columns}
        unpaired = [p for p in periods if p not in paired]
        if unpaired:
            raise NervusInputError(
                f"{path}: time column(s) {unpaired} have no matching event label (expected "
                "'label_<name>' for 'period_<name>'). Add the label or remove the column."
            )

    @classmethod
    def check_prediction_labels(cls, df: pd.DataFrame, path: Path, spec: LabelSpec) -> None:
        events = numeric_column(df, spec.name, path, df.index, "survival label")
        bad = events.notna() & ~events.isin(np.arange(spec.causes + 1)) if spec.causes else None
        if bad is not None and bad.any():
            raise NervusInputError(
                f"{path}: survival label '{spec.name}' must hold 0 (censored) or a cause "
                f"1..{spec.causes} (the model's competing causes) but has "
                f"{_codes(events[bad])} at {csv_lines(events.index[bad])}."
            )
        if spec.period and spec.period in df.columns:
            numeric_column(df, spec.period, path, df.index, "survival time")

    @classmethod
    def batch_fields(cls, df: pd.DataFrame, labels: list[LabelSpec]) -> dict[str, np.ndarray]:
        """``time``: one column per endpoint (NaN where unknown)."""
        times = [
            pd.to_numeric(df[s.period], errors="coerce").to_numpy(np.float32)
            if s.period in df.columns
            else np.full(len(df), np.nan, np.float32)
            for s in labels
        ]
        return {"time": np.stack(times, axis=1)}

    @classmethod
    def truth_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [label["name"], label["period"]]

    @classmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [f"risk_{label['name']}"]

    # -- training --------------------------------------------------------------------------
    @property
    def is_discrete(self) -> bool:
        return self.model != "cox"

    @property
    def linear_by_default(self) -> bool:
        # Linear Cox is the reference of every tabular prognosis model; the discrete-time
        # heads' linear special case (one logistic model per interval) is not.
        return not self.is_discrete

    def causes(self, j: int) -> int | None:
        """K of a competing-risk label (:mod:`nervus_lightning.survival.competing`), else None."""
        return self.labels[j].causes

    def head_size(self, j: int) -> int:
        if self.causes(j):
            return self.causes(j) * self.num_durations
        return self.num_durations if self.is_discrete else 1

    def check_batches(self, train: pd.DataFrame, batch_size: int) -> None:
        """Warn when Cox batches would often hold no event: the partial likelihood of a batch
        without events is empty, so such a batch teaches the model nothing. Discrete-time models
        learn from censored cases too (they survived each interval they were seen in), so they
        get no warning."""
        if self.is_discrete:
            return
        for spec in self.labels:
            rate = float((pd.to_numeric(train[spec.name]) != 0).mean())
            p_empty = (1.0 - rate) ** batch_size
            if p_empty > 0.05:
                warnings.warn(
                    f"survival label '{spec.name}': with an event rate of {rate:.1%} a batch of "
                    f"{batch_size} has no event with probability {p_empty:.0%}; such batches "
                    "teach the Cox model nothing. Increase data.batch_size.",
                    stacklevel=2,
                )

    def fit_before_training(self, train: pd.DataFrame) -> None:
        """The time grid of a discrete-time model, from the training split only."""
        if not self.is_discrete:
            return
        for j, spec in enumerate(self.labels):
            # As the batches carry them (float32), so that a time equal to a cut stays on it.
            time = pd.to_numeric(train[spec.period], errors="coerce").to_numpy(np.float32)
            event = pd.to_numeric(train[spec.name], errors="coerce").to_numpy(np.float64)
            known = ~(np.isnan(time) | np.isnan(event))
            # Competing causes: the grid of "any event".
            any_event = (event[known] != 0).astype(np.float64)
            self.cuts[j] = discrete.fit_grid(
                time[known], any_event, self.num_durations, where=f"label '{spec.name}': "
            )

    def linear_start(
        self, inputs: torch.Tensor, train: pd.DataFrame, j: int
    ) -> torch.Tensor | None:
        """Cox heads: the linear Cox fit of the training split (:mod:`..survival.linear`), so
        that the model starts as fitted linear Cox. Discrete-time heads start at zero."""
        if self.is_discrete:
            return None
        from nervus_lightning.survival.linear import fit_linear_cox

        spec = self.labels[j]
        time = pd.to_numeric(train[spec.period], errors="coerce").to_numpy(np.float32)
        event = pd.to_numeric(train[spec.name], errors="coerce").to_numpy(np.float64)
        known = torch.as_tensor(~(np.isnan(time) | np.isnan(event)))
        weight = fit_linear_cox(
            inputs[known.to(inputs.device)],
            torch.as_tensor(time)[known],
            torch.as_tensor(event)[known] > 0,
            ties=self.ties,
        )
        return weight[None, :]

    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        if self.is_discrete:
            return self._discrete_loss(output, batch, j)
        risk = output[:, 0].float()
        event = batch["target"][:, j].float()
        time = batch["time"][:, j].float()
        if self.gather is not None:
            risk, event, time = self.gather(risk), self.gather(event), self.gather(time)
        known = ~(torch.isnan(event) | torch.isnan(time))
        if not bool((event[known] > 0).any()):
            return zero_loss(output)
        return cox_loss(risk[known], time[known], event[known] > 0, ties=self.ties)

    def _discrete_loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        if self.cuts[j] is None:
            raise RuntimeError(
                f"task.model={self.model}: the time grid is fitted on the training split when "
                "training starts (NervusModule.setup); train with a NervusDataModule."
            )
        phi = output.float()
        event = batch["target"][:, j].float()
        time = batch["time"][:, j].float()
        if self.gather is not None and self.model == "deephit":
            # DeepHit's rank loss compares cases, like the Cox risk sets: use the global batch.
            phi, event, time = self.gather(phi), self.gather(event), self.gather(time)
        known = ~(torch.isnan(event) | torch.isnan(time))
        if not bool(known.any()):
            return zero_loss(output)
        if self.causes(j):
            return competing.competing_loss(
                phi[known], self.causes(j), self.cuts[j], time[known], event[known],
                self.alpha, self.sigma,
            )  # fmt: skip
        return discrete.discrete_loss(
            self.model, phi[known], self.cuts[j], time[known], event[known], self.alpha, self.sigma
        )

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        # Discrete-time models: the survival curve at the grid's cut points.
        # Competing risks: each cause's cumulative incidence at the cut points (cause-major).
        if self.causes(j):
            return competing.grid_cif(output, self.causes(j))
        if self.is_discrete:
            return discrete.grid_survival(self.model, output)
        return output.float()

    def combine(self, outputs: list[torch.Tensor], j: int) -> torch.Tensor:
        # Cox: the mean log hazard (the geometric mean of the members' hazard ratios), which
        # the Breslow baseline is then fitted to. Discrete-time and competing-risk models: the
        # members' mean survival curves (or cumulative incidences, cause by cause).
        if self.causes(j):
            # One softmax over every cause and interval, as DeepHit's: averaged like a PMF.
            return discrete.combine_outputs("deephit", outputs)
        if self.is_discrete:
            return discrete.combine_outputs(self.model, outputs)
        return super().combine(outputs, j)

    def make_metrics(self, j: int) -> MetricCollection | None:
        # Concordance needs the whole split, not batches; it is computed on predictions.csv.
        return None

    # -- after training --------------------------------------------------------------------
    def fit_after_training(
        self,
        outputs: dict[str, list[np.ndarray]],
        frames: dict[str, pd.DataFrame],
    ) -> None:
        frame = frames["train"]
        for j, spec in enumerate(self.labels):
            risk = self._risk(outputs["train"][j], j)
            time = pd.to_numeric(frame[spec.period]).to_numpy(np.float64)
            event = pd.to_numeric(frame[spec.name]).to_numpy(np.float64)
            self.references[j] = SurvivalReference.fit(
                time,
                event,
                risk,
                eval_times=self.requested_times,
                n_risk_groups=self.risk_groups,
                min_patients_per_step=self.min_patients_per_step,
            )
            stored = self.references[j].baseline.times.shape[0]
            if stored < 3:
                warnings.warn(
                    f"survival label '{spec.name}': the stored baseline hazard has only {stored} "
                    f"step(s), because each step must hold task.min_patients_per_step="
                    f"{self.min_patients_per_step} training events ({int((event != 0).sum())} "
                    "in the training split); survival probabilities are coarse. Train on more "
                    "events or, if your data may leave the site with smaller cells, lower "
                    "task.min_patients_per_step.",
                    stacklevel=2,
                )

    def is_fitted(self, j: int) -> bool:
        return self.references[j] is not None

    def _risk(self, values: np.ndarray, j: int) -> np.ndarray:
        if self.causes(j):
            return discrete.risk_score(self._survival_grid(values, j), self.cuts[j])
        if self.is_discrete:
            return discrete.risk_score(values, self.cuts[j])
        return values[:, 0].astype(np.float64)

    def _survival_grid(self, values: np.ndarray, j: int) -> np.ndarray:
        """Survival at the cut points: the head's curve, or 1 - sum of the causes' CIFs."""
        if self.causes(j):
            return competing.survival_from_cif(competing.split_cif(values, self.causes(j)))
        return np.asarray(values, dtype=np.float64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {
            f"grid.{j}": torch.from_numpy(cuts.copy())
            for j, cuts in enumerate(self.cuts)
            if cuts is not None
        }
        for j, reference in enumerate(self.references):
            if reference is not None:
                state.update({f"{j}.{k}": v for k, v in reference.to_tensors().items()})
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for j in range(len(self.labels)):
            if f"grid.{j}" in state:
                self.cuts[j] = state[f"grid.{j}"].cpu().numpy().astype(np.float64)
            prefix = f"{j}."
            fields = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if fields:
                self.references[j] = SurvivalReference.from_tensors(fields)

    def export_label(self, j: int) -> dict[str, Any]:
        # The same aggregates as the checkpoint, so that `evaluate` can score an external set
        # from schema.json alone.
        reference = self.references[j]
        out = {} if reference is None else reference.to_json()
        if self.is_discrete and self.cuts[j] is not None:
            out.update(survival_model=self.model, grid=self.cuts[j].tolist())
        if self.causes(j):
            out.update(causes=self.causes(j))
        return out

    # -- outputs ---------------------------------------------------------------------------
    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        name = self.labels[j].name
        risk = self._risk(values, j)
        cols: dict[str, Any] = {f"risk_{name}": risk}
        causes = self.causes(j)
        if causes:
            cif = competing.split_cif(values, causes)
            for c, cause_risk in enumerate(competing.cause_risks(cif, self.cuts[j]).T, 1):
                cols[f"risk_{name}_{c}"] = cause_risk
        surv_grid = self._survival_grid(values, j)
        reference = self.references[j]
        if reference is not None:
            if causes:
                for c in range(1, causes + 1):
                    at = discrete.interpolate_survival(
                        cif[:, c - 1], self.cuts[j], reference.eval_times
                    )
                    for k, t in enumerate(reference.eval_times):
                        cols[competing.cif_column(name, c, format_time(t))] = at[:, k]
            if self.is_discrete:
                surv = discrete.interpolate_survival(surv_grid, self.cuts[j], reference.eval_times)
            else:
                surv = reference.survival(risk, reference.eval_times)
            for k, t in enumerate(reference.eval_times):
                cols[f"surv_{name}_t{format_time(t)}"] = surv[:, k]
            cols[f"risk_group_{name}"] = assign_risk_groups(risk, reference.risk_cutpoints)
        if self.is_discrete:
            # The whole curve on the grid, so that the evaluation (predictions.csv and
            # schema.json only) can compute the curve-based metrics.
            for k in range(surv_grid.shape[1]):
                cols[discrete.grid_column(name, k)] = surv_grid[:, k]
        if causes:
            for c in range(1, causes + 1):
                for k in range(cif.shape[2]):
                    cols[competing.cif_grid_column(name, c, k)] = cif[:, c - 1, k]
        return cols

    def _split_arrays(self, frame: pd.DataFrame, j: int) -> tuple[np.ndarray, ...] | None:
        spec = self.labels[j]
        if spec.name not in frame.columns or spec.period not in frame.columns:
            return None
        event = pd.to_numeric(frame[spec.name], errors="coerce").to_numpy(np.float64)
        time = pd.to_numeric(frame[spec.period], errors="coerce").to_numpy(np.float64)
        risk = frame[f"risk_{spec.name}"].to_numpy(np.float64)
        known = ~(np.isnan(event) | np.isnan(time))
        if not known.any():
            return None
        return time[known], event[known], risk[known]

    def write_figures(
        self, predictions: pd.DataFrame, out_dir: Any, time_unit: str | None = None
    ) -> None:
        """Kaplan-Meier curves of the risk groups and td-AUC over time, per split and endpoint
        (time axes in ``time_unit``)."""
        from pathlib import Path

        from nervus_lightning.survival.metrics import td_auc_key
        from nervus_lightning.survival.plots import plot_km_risk_groups, plot_td_auc

        out_dir = Path(out_dir)
        for split, rows in predictions.groupby("split", sort=False):
            for j, spec in enumerate(self.labels):
                arrays = self._split_arrays(rows, j)
                if arrays is None or not self.is_fitted(j):
                    continue
                time, event, risk = arrays
                reference = self.references[j]
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
                    max_rows_exact=self.evaluation.get("max_rows_exact", MAX_ROWS_EXACT),
                    seed=self.evaluation.get("seed", 0),
                )  # fmt: skip
                auc = np.array(
                    [np.nan if m[td_auc_key(t)] is None else m[td_auc_key(t)] for t in grid]
                )
                if np.isfinite(auc).any():
                    plot_td_auc(
                        grid,
                        auc,
                        m["td_auc_mean"],
                        out_dir / f"td_auc_{spec.name}_{split}.png",
                        time_unit=time_unit,
                    )


# --------------------------------------------------------------------------------------------
# Evaluation: metrics with CIs, notes and figures of one survival label


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


def _is_ipcw(metric: str, ipcw_keys: set[str]) -> bool:
    return metric in ipcw_keys or metric.startswith(
        ("td_auc_t", "td_auc_cause", "ibs_cause", "c_index_uno_cause", "ibs_null", "ipa")
    )


def _large_split_notes(n: int, ctx: EvalContext) -> dict[str, str | None]:
    """What a split larger than the evaluation limits was computed on (metrics_notes.csv)."""
    notes: dict[str, str | None] = {"ipcw": None, "bootstrap": None}
    if n > ctx.max_rows_exact:
        notes["ipcw"] = (
            f"computed on a random subsample of {ctx.max_rows_exact:,} of the {n:,} cases "
            f"(seed {ctx.seed}; evaluation.max_rows_exact)"
        )
    if ctx.n_bootstrap > 0 and n > ctx.max_rows_bootstrap:
        notes["bootstrap"] = (
            f"CI from resamples of {ctx.max_rows_bootstrap:,} of the {n:,} cases, rescaled to "
            "the cases the value is computed on (m-out-of-n bootstrap; "
            "evaluation.max_rows_bootstrap)"
        )
    return notes


def _cause_metrics(
    time: np.ndarray,
    cause: np.ndarray,
    cause_risk: np.ndarray,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Wolbers' C of each competing cause (``cause_risk`` ``(n, K)``; ``{}`` for K = 0)."""
    out: dict[str, float | None] = {}
    for c in range(1, cause_risk.shape[1] + 1):
        key = f"c_index_cause{c}"
        out[key] = competing.cause_concordance(time, cause, cause_risk[:, c - 1], c)
        if out[key] is None and reasons is not None:
            reasons[key] = f"no cause-{c} event with a comparable pair"
    return out


def _cause_ipcw_metrics(
    reference: SurvivalReference,
    time: np.ndarray,
    cause: np.ndarray,
    cause_risk: np.ndarray,
    auc_cif: np.ndarray | None,
    ibs_cif: np.ndarray | None,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Each competing cause's censoring-weighted concordance of its risk (``cause_risk``
    ``(n, K)``), cumulative/dynamic AUC at the evaluation times and integrated Brier score,
    from the predicted CIFs (``(n, K, times)``) at ``reference.eval_times`` (``auc_cif``) and
    on its IBS grid (``ibs_cif``); None where the CIF columns are missing."""
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    missing = "no cif_<label>_<cause>_grid<k> columns in the predictions"
    for c in range(1, cause_risk.shape[1] + 1):
        key = f"c_index_uno_cause{c}"
        out[key], text = cause_uno_c(reference, time, cause, cause_risk[:, c - 1], c)
        if text is not None:
            why[key] = text
        if auc_cif is None:
            keys = [f"td_auc_cause{c}_t{format_time(t)}" for t in reference.eval_times]
            out.update(dict.fromkeys(keys))
            why.update(dict.fromkeys(keys, missing))
        else:
            values, reason = cause_td_auc(reference, time, cause, auc_cif[:, c - 1], c)
            out.update(values)
            why.update(reason)
        key = f"ibs_cause{c}"
        if ibs_cif is None:
            out[key], why[key] = None, missing
        else:
            out[key], text = cause_ibs(reference, time, cause, ibs_cif[:, c - 1], c)
            if text is not None:
                why[key] = text
    if reasons is not None:
        reasons.update(why)
    return out


def _accuracy_metrics(
    reference: SurvivalReference,
    time: np.ndarray,
    event: np.ndarray,
    scores: Mapping[str, float | None],
    causes: int,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """``ibs_null`` (the integrated Brier score of the training split's covariate-free
    prediction on the same rows and grid as ``ibs``) and the index of prediction accuracy
    ``ipa`` = 1 - ``ibs`` / ``ibs_null``, and ``ipa_cause<c>`` from ``ibs_cause<c>`` and the
    training Aalen-Johansen incidence; ``scores`` holds the model's ``ibs`` values."""
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    out["ibs_null"], text = null_ibs(reference, time, event)
    keys = [("ibs", "ibs_null", "ipa")]
    if text is not None:
        why["ibs_null"] = text
    for c in range(1, causes + 1):
        out[f"ibs_null_cause{c}"], text = null_ibs(reference, time, event, c)
        if text is not None:
            why[f"ibs_null_cause{c}"] = text
        keys.append((f"ibs_cause{c}", f"ibs_null_cause{c}", f"ipa_cause{c}"))
    for model, null, key in keys:
        out[key] = prediction_accuracy(scores.get(model), out[null])
        if out[key] is None:
            why[key] = f"needs {model} and {null}"
    if reasons is not None:
        reasons.update(why)
    return out


def _cif_calibration(
    rows: pd.DataFrame,
    label: Mapping,
    time: np.ndarray,
    cause: np.ndarray,
    t: float,
    reasons: dict[str, str],
) -> dict[str, float | None]:
    """Each cause's observed (Aalen-Johansen) and mean predicted cumulative incidence at ``t``."""
    causes = int(label["causes"])
    predicted = competing.model_cif(rows, label, [t])
    observed = competing.aalen_johansen(time, cause, [t], causes)[:, 0]
    out: dict[str, float | None] = {}
    for c in range(1, causes + 1):
        key = f"cif_observed_cause{c}"
        out[key] = float(observed[c - 1])
        if t > time.max():
            out[key] = None
            reasons[key] = f"t = {t:g} is beyond the evaluated follow-up ({time.max():g})"
        key = f"cif_predicted_cause{c}"
        out[key] = None if predicted is None else float(predicted[:, c - 1, 0].mean())
        if predicted is None:
            reasons[key] = "no cif_<label>_<cause>_grid<k> columns in the predictions"
    return out


def evaluate_survival(df: pd.DataFrame, label: Mapping, ctx: EvalContext) -> LabelSection:
    """Survival metrics with CIs, Kaplan-Meier risk-group curves and calibration at one time.

    Metrics are those of :func:`nervus_lightning.survival.metrics.survival_metrics` (the
    log-rank p-value without an interval), bootstrapped unstratified; every resample recomputes
    all of them (O(m log m) each, m = min(cases, ``evaluation.max_rows_bootstrap``)). Splits
    above ``evaluation.max_rows_exact`` / ``max_rows_bootstrap`` cases are evaluated as
    :func:`_large_split_notes` says, in ``metrics_notes.csv``.
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
    if causes:
        section.notes.append(
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
    section.notes.append(
        "IPCW statistics (c_index_uno, td_auc_*, ibs, ibs_null, ipa and the per-cause ones): "
        "censoring weights from the evaluated split's own Kaplan-Meier curve of the censoring "
        "times (of the rows scored, per split and group), not from the training split."
    )
    section.notes.append(
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
    calibration_time = float(np.median(eval_times))
    unit = f" {ctx.time_unit}" if ctx.time_unit else ""
    median_time = f"median time ({ctx.time_unit})" if ctx.time_unit else "median time"
    section.notes.append(
        f"Calibration at t = {calibration_time:g}{unit} (middle evaluation time); "
        "risk groups from the training cut-points "
        f"{', '.join(f'{c:.3g}' for c in cutpoints)}."
    )

    ipcw_keys = {"c_index_uno", "td_auc_mean", "ibs"}
    ibs_grid = reference.ibs_grid()
    summary, calibration_tables = {}, []
    for split, group, rows in iter_subsets(df, ctx):
        if rows.empty:
            continue
        time = rows[period].to_numpy(dtype=float)
        event = rows[name].to_numpy(dtype=float)
        risk = rows[risk_column].to_numpy(dtype=float)
        n = len(rows)
        reasons: dict[str, str] = {}
        # A discrete-time model's own curves on the IBS grid (None for Cox: Breslow baseline).
        own_ibs = discrete.model_survival(rows, label, ibs_grid)
        point = survival_metrics(
            reference, time, event, risk, reasons=reasons, max_rows_exact=ctx.max_rows_exact,
            seed=ctx.seed, ibs_survival=own_ibs,
        )  # fmt: skip
        ipcw_rows = min(n, ctx.max_rows_exact)
        # The model's own curves scored by pycox (point estimates only, no bootstrap; pycox's
        # Antolini C compares all pairs, so it gets the IPCW metrics' subsample).
        sub = ipcw_subsample(n, ctx.max_rows_exact, ctx.seed)
        scored = rows if sub is None else rows.iloc[sub]
        point.update(discrete.curve_metrics(scored, label, reference, reasons))
        cause_risk = rows[cause_columns].to_numpy(dtype=float)
        # The CIFs on the IBS grid and at the evaluation times once per split, not per resample.
        cause_ibs_cif = competing.model_cif(rows, label, ibs_grid) if causes else None
        cause_auc_cif = competing.model_cif(rows, label, eval_times) if causes else None
        point.update(_cause_metrics(time, event, cause_risk, reasons))
        keep = slice(None) if sub is None else sub  # the IPCW metrics' rows
        if causes:
            point.update(
                _cause_ipcw_metrics(
                    reference, time[keep], event[keep], cause_risk[keep],
                    None if cause_auc_cif is None else cause_auc_cif[keep],
                    None if cause_ibs_cif is None else cause_ibs_cif[keep], reasons,
                )
            )  # fmt: skip
        point.update(_accuracy_metrics(reference, time[keep], event[keep], point, causes, reasons))
        cif_arrays = {}
        if causes:
            point.update(_cif_calibration(rows, label, time, event, calibration_time, reasons))
            times = discrete.subgrid(np.asarray(label.get("grid") or [0.0, 1.0], dtype=float))
            predicted_cif = competing.model_cif(rows, label, times)
            if predicted_cif is not None:
                cif_arrays = {"cif_times": times, "cif_mean": predicted_cif.mean(axis=0)}
        intervals: dict[str, BootstrapCI] = {}
        if ctx.n_bootstrap > 0 and n > 1:
            m = bootstrap_size(n, ctx.max_rows_bootstrap)
            # Predicted survival on the IBS grid once per split, not once per resample.
            table = own_ibs
            if table is None and n <= ctx.max_rows_bootstrap:
                table = reference.survival(risk, ibs_grid)

            def resample_metrics(
                t, e, r, index, table=table, cause_risk=cause_risk, ibs_cif=cause_ibs_cif,
                auc_cif=cause_auc_cif,
            ):  # fmt: skip
                out = {
                    **survival_metrics(
                        reference, t, e, r, max_rows_exact=None, logrank=False,
                        ibs_survival=None if table is None else table[index],
                    ),
                    **_cause_metrics(t, e, cause_risk[index]),
                }  # fmt: skip
                if causes:
                    out.update(
                        _cause_ipcw_metrics(
                            reference, t, e, cause_risk[index],
                            None if auc_cif is None else auc_cif[index],
                            None if ibs_cif is None else ibs_cif[index],
                        )
                    )  # fmt: skip
                out.update(_accuracy_metrics(reference, t, e, out, causes))
                return out

            distributions = bootstrap_distributions(
                resample_metrics, time, event, risk, np.arange(n),
                n_resamples=ctx.n_bootstrap, seed=ctx.seed, size=m,
            )  # fmt: skip
            distributions.pop("logrank_p", None)  # a p-value has no confidence interval
            for metric, values in distributions.items():
                size = ipcw_rows if _is_ipcw(metric, ipcw_keys) else n
                distributions[metric] = rescale_distribution(values, point.get(metric), m, size)
            intervals = bootstrap_intervals(distributions, ctx.ci)
        large = _large_split_notes(n, ctx)
        section.add(split, group, "n", float(len(rows)))
        section.add(split, group, "events", float((event != 0).sum()))
        for c in range(1, causes + 1):
            section.add(split, group, f"events_cause{c}", float((event == c).sum()))
        for metric, value in point.items():
            note = [reasons.get(metric), large["ipcw"] if _is_ipcw(metric, ipcw_keys) else None]
            if metric in intervals:
                note.append(large["bootstrap"])
            text = "; ".join(x for x in note if x) or None
            section.add(split, group, metric, value, intervals.get(metric), text)
        if group == ALL_GROUPS:
            summary[split] = {
                "n": len(rows),
                "events": int((event != 0).sum()),
                "event rate": f"{(event != 0).mean():.1%}",
                median_time: float(np.median(time)),
            }
        predicted = discrete.model_survival(rows, label, [calibration_time])
        if predicted is None:
            predicted = reference.survival(risk, [calibration_time])
        predicted = predicted[:, 0]
        table = survival_calibration_table(time, event, predicted, calibration_time)
        calibration_tables.append(table.assign(split=split, group=group))
        section.subsets.append(
            Subset(
                split,
                group,
                {
                    "time": time,
                    "event": event,
                    "risk_group": assign_risk_groups(risk, cutpoints),
                    **cif_arrays,
                },
                calibration=table,
            )
        )
    section.info.update(calibration_time=calibration_time, causes=causes)
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    if calibration_tables:
        table = pd.concat(calibration_tables, ignore_index=True)
        table = table[["split", "group", *table.columns.drop(["split", "group"])]]
        table.to_csv(ctx.out_dir / f"survival_calibration_{safe_name(name)}.csv", index=False)
        section.tables.append(
            (
                f"Calibration at t = {calibration_time:g}{unit} by bin of predicted "
                "survival (1 = highest risk)",
                table,
            )
        )
    return section


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
