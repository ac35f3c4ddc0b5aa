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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics import MetricCollection

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.evaluation.sections import EvalContext, LabelSection
from nervus_lightning.models.penalty import PenaltyChoice
from nervus_lightning.options import check_choice, check_number
from nervus_lightning.survival import competing, discrete
from nervus_lightning.survival.linear import choose_linear_cox
from nervus_lightning.survival.loss import TIES, cox_loss
from nervus_lightning.survival.metrics import assign_risk_groups, format_time
from nervus_lightning.survival.reference import MIN_PATIENTS_PER_STEP, SurvivalReference
from nervus_lightning.tasks.base import Task, zero_loss
from nervus_lightning.tasks.survival.evaluation import evaluate_survival
from nervus_lightning.tasks.survival.figures import survival_figures, write_run_figures
from nervus_lightning.tasks.survival.labels import (
    check_prediction_events,
    check_time_columns,
    survival_label_spec,
)
from nervus_lightning.tasks.survival.options import SurvivalOptions


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
        alpha, sigma: DeepHit's weighting of likelihood vs rank loss (None: 0.2 for one
            event, 1 with competing causes) and its rank-loss scale.
        min_patients_per_step: ``k`` of the stored curves: each step backed by at least ``k``
            training events, and no step where fewer than ``k`` patients are still followed
            (:func:`nervus_lightning.survival.reference.aggregate_grid`).
        shrink: after training, multiply each Cox head's log hazards by their calibration
            slope on the validation rows when it is below 1
            (:mod:`nervus_lightning.survival.shrinkage`; ranks and C-index unchanged).
    """

    kind = "survival"
    summary_title = "events and follow-up"
    export_prefix = "risk"
    export_meaning = (
        "risk: the log hazard ratio (DeepSurv). Survival at t: exp(-H0(t) * exp(risk)), H0 read "
        "linearly between 'baseline.times' ('baseline.cumhaz'), H0(0) = 0, flat after the last "
        "(without 'time_summary.baseline_linear': a step, the last value at or before t)"
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
        return evaluate_survival(predictions, label, ctx, cls.options_in(ctx).max_rows_exact)

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
    options_class = SurvivalOptions
    options: SurvivalOptions

    def __init__(
        self,
        labels: list[LabelSpec],
        ties: str = "efron",
        eval_times: Sequence[float] | None = None,
        risk_groups: int = 2,
        model: str = "cox",
        num_durations: int = 20,
        alpha: float | None = None,
        sigma: float = 0.1,
        min_patients_per_step: int = MIN_PATIENTS_PER_STEP,
        shrink: bool = True,
        evaluation: EvaluationOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(labels, evaluation=evaluation)
        if not isinstance(shrink, bool):
            raise NervusInputError(f"task.shrink must be true or false, got {shrink!r}.")
        self.shrink = shrink
        self.ties = check_choice("task.ties", ties, list(TIES))
        self.model = check_choice("task.model", model, list(discrete.MODELS))
        check_number("task.num_durations", num_durations, low=2, integer=True)
        alpha = None if alpha is None else float(check_number("task.alpha", alpha, low=0, high=1))
        check_number("task.sigma", sigma, low=0, low_open=True)
        self.num_durations, self.alpha, self.sigma = num_durations, alpha, float(sigma)
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
        (or ``periods_<name>``): :func:`~.labels.survival_label_spec`."""
        return survival_label_spec(df, path, column, train_rows, kind=cls.kind)

    @classmethod
    def check_columns(
        cls, df: pd.DataFrame, path: Path, label_columns: list[str], explicit: bool
    ) -> None:
        """Every time column must be paired with an event label."""
        check_time_columns(df, path, label_columns)

    @classmethod
    def check_prediction_labels(cls, df: pd.DataFrame, path: Path, spec: LabelSpec) -> None:
        check_prediction_events(df, path, spec)

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
    def averaged(self) -> str:  # type: ignore[override]
        """Cox: log hazards; discrete-time and competing risks: survival or incidence curves."""
        return "curves" if self.is_discrete else "log hazards"

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
        self,
        inputs: torch.Tensor,
        frame: pd.DataFrame,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        j: int,
    ) -> PenaltyChoice | None:
        """Cox heads: the penalised (ridge or elastic-net) linear Cox fit of the training rows,
        its penalty chosen on the validation rows (:func:`..survival.linear.choose_linear_cox`),
        so that the model starts as that fitted linear Cox model. Discrete-time heads start at
        zero."""
        if self.is_discrete:
            return None
        spec = self.labels[j]
        time = pd.to_numeric(frame[spec.period], errors="coerce").to_numpy(np.float32)
        event = pd.to_numeric(frame[spec.name], errors="coerce").to_numpy(np.float64)
        known = ~(np.isnan(time) | np.isnan(event))
        return choose_linear_cox(
            inputs,
            torch.as_tensor(np.where(known, time, 0.0)),
            torch.as_tensor(np.where(known, event, 0.0) > 0),
            train_rows[known[train_rows]],
            val_rows[known[val_rows]],
            ties=self.ties,
        )

    def head_start(self, train: pd.DataFrame, j: int) -> torch.Tensor | None:
        """Discrete-time heads: the training Kaplan-Meier curve on the grid, or each cause's
        Aalen-Johansen incidence (``start_logits`` of :mod:`~nervus_lightning.survival.discrete`
        and :mod:`~nervus_lightning.survival.competing`). Cox heads: None."""
        if not self.is_discrete or self.cuts[j] is None:
            return None
        spec, cuts, causes = self.labels[j], self.cuts[j], self.causes(j)
        time = pd.to_numeric(train[spec.period], errors="coerce").to_numpy(np.float32)
        event = pd.to_numeric(train[spec.name], errors="coerce").to_numpy(np.float64)
        known = ~(np.isnan(time) | np.isnan(event))
        time, event = time[known], event[known]
        if causes:
            start = competing.start_logits(cuts, time, event.round(), causes)
        else:
            start = discrete.start_logits(self.model, cuts, time, event)
        return torch.as_tensor(start, dtype=torch.float32)

    def describe_head(self, j: int) -> str | None:
        """Discrete-time heads: model, grid, loss and start, for the report's model table."""
        if not self.is_discrete:
            return None
        args = (self.num_durations, self.causes(j), self.alpha, self.sigma)
        return discrete.describe_model(self.model, *args)

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

    def shrinks(self, j: int) -> bool:
        # Cox heads only: a discrete-time head's output is a curve, not one log hazard.
        return self.shrink and not self.is_discrete and not self.causes(j)

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

    def write_figures(
        self, predictions: pd.DataFrame, out_dir: Any, time_unit: str | None = None
    ) -> None:
        """Kaplan-Meier curves of the risk groups and td-AUC over time, per split and endpoint
        (time axes in ``time_unit``): :func:`~.figures.write_run_figures`."""
        fitted = [r if self.is_fitted(j) else None for j, r in enumerate(self.references)]
        write_run_figures(
            predictions, out_dir, self.labels, fitted, time_unit,
            max_rows_exact=self.options.max_rows_exact, seed=self.evaluation.seed,
        )  # fmt: skip
