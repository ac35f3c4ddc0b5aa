"""Survival (DeepSurv): one risk head per endpoint, Cox partial likelihood, Breslow baseline.

The head outputs a log hazard ratio. After training, the task fits on the training split what
survival predictions and metrics need -- Breslow's baseline cumulative hazard, the evaluation
times, the risk-group cut-points and the training follow-up (censoring distribution for Uno's C)
-- and keeps it as tensors in the checkpoint, so predict on an external CSV needs nothing else.

Batch size and events: the Cox loss compares each event with the cases still at risk *in the same
batch* (with several processes, in the global batch: risk scores are gathered with gradients). A
batch without events carries no information and contributes a zero loss; with an event rate ``r``
a batch of ``b`` cases has no event with probability ``(1 - r) ** b``, so choose ``b`` to make that
small (the data module warns when it exceeds 5 %). Larger batches approximate the full-data
partial likelihood better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics import MetricCollection

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.survival.baseline import BreslowBaseline
from nervus_lightning.survival.loss import TIES, cox_loss
from nervus_lightning.survival.metrics import (
    assign_risk_groups,
    default_eval_times,
    format_time,
    risk_group_cutpoints,
    survival_metrics,
)
from nervus_lightning.tasks.base import Task, zero_loss

STATE_FIELDS = (
    "baseline_times",
    "baseline_cumhaz",
    "eval_times",
    "cutpoints",
    "train_time",
    "train_event",
)


class SurvivalTask(Task):
    """Cox proportional hazards heads (several endpoints = several heads, losses summed).

    Args:
        ties: ``efron`` (default) or ``breslow`` handling of tied event times.
        eval_times: times for survival probabilities and time-dependent AUC; default the 25/50/75th
            percentiles of the training event times (per endpoint).
        risk_groups: number of risk groups for Kaplan-Meier curves and the log-rank test
            (cut-points: quantiles of the training risks; 2 = median split).
    """

    kind = "survival"
    primary_metric = "c_index"
    post_training_splits = ("train",)

    def __init__(
        self,
        labels: list[LabelSpec],
        ties: str = "efron",
        eval_times: Sequence[float] | None = None,
        risk_groups: int = 2,
        **options: Any,
    ) -> None:
        super().__init__(labels)
        if ties not in TIES:
            raise ValueError(f"task.ties '{ties}' is not one of {list(TIES)}")
        if risk_groups < 2:
            raise ValueError(f"task.risk_groups must be >= 2, got {risk_groups}")
        self.ties = ties
        self.requested_times = None if eval_times is None else np.asarray(eval_times, float)
        self.risk_groups = risk_groups
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        n = len(labels)
        self.baselines: list[BreslowBaseline | None] = [None] * n
        self.eval_times: list[np.ndarray | None] = [None] * n
        self.cutpoints: list[np.ndarray | None] = [None] * n
        self.train_time: list[np.ndarray | None] = [None] * n
        self.train_event: list[np.ndarray | None] = [None] * n

    # -- training --------------------------------------------------------------------------
    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        risk = output[:, 0].float()
        event = batch["target"][:, j].float()
        time = batch["time"][:, j].float()
        if self.gather is not None:
            risk, event, time = self.gather(risk), self.gather(event), self.gather(time)
        known = ~(torch.isnan(event) | torch.isnan(time))
        if not bool((event[known] > 0).any()):
            return zero_loss(output)
        return cox_loss(risk[known], time[known], event[known] > 0, ties=self.ties)

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        return output.float()

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
            risk = outputs["train"][j][:, 0].astype(np.float64)
            time = pd.to_numeric(frame[spec.period]).to_numpy(np.float64)
            event = pd.to_numeric(frame[spec.name]).to_numpy(np.float64)
            self.baselines[j] = BreslowBaseline.fit(risk, time, event)
            times = self.requested_times
            self.eval_times[j] = default_eval_times(time, event) if times is None else times
            self.cutpoints[j] = risk_group_cutpoints(risk, self.risk_groups)
            self.train_time[j], self.train_event[j] = time, event

    def is_fitted(self, j: int) -> bool:
        return self.baselines[j] is not None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {}
        for j in range(len(self.labels)):
            if not self.is_fitted(j):
                continue
            values = (
                self.baselines[j].times,
                self.baselines[j].cumhaz,
                self.eval_times[j],
                self.cutpoints[j],
                self.train_time[j],
                self.train_event[j],
            )
            for name, value in zip(STATE_FIELDS, values, strict=True):
                state[f"{j}.{name}"] = torch.tensor(np.array(value, dtype=np.float64))
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for j in range(len(self.labels)):
            if f"{j}.baseline_times" not in state:
                continue
            get = {name: state[f"{j}.{name}"].numpy() for name in STATE_FIELDS}
            self.baselines[j] = BreslowBaseline(get["baseline_times"], get["baseline_cumhaz"])
            self.eval_times[j] = get["eval_times"]
            self.cutpoints[j] = get["cutpoints"]
            self.train_time[j] = get["train_time"]
            self.train_event[j] = get["train_event"]

    def export_label(self, j: int) -> dict[str, Any]:
        if not self.is_fitted(j):
            return {}
        return {
            "eval_times": self.eval_times[j].tolist(),
            "baseline": {
                "times": self.baselines[j].times.tolist(),
                "cumhaz": self.baselines[j].cumhaz.tolist(),
            },
            "risk_cutpoints": self.cutpoints[j].tolist(),
            # Training follow-up: the censoring distribution of Uno's C and the td-AUC, so that
            # an external set can be evaluated without the training rows.
            "train_time": self.train_time[j].tolist(),
            "train_event": self.train_event[j].tolist(),
        }

    # -- outputs ---------------------------------------------------------------------------
    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        name = self.labels[j].name
        risk = values[:, 0].astype(np.float64)
        cols: dict[str, Any] = {f"risk_{name}": risk}
        if self.is_fitted(j):
            surv = self.baselines[j].survival(risk, self.eval_times[j])
            for k, t in enumerate(self.eval_times[j]):
                cols[f"surv_{name}_t{format_time(t)}"] = surv[:, k]
            cols[f"risk_group_{name}"] = assign_risk_groups(risk, self.cutpoints[j])
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

    def _metrics(
        self,
        j: int,
        time: np.ndarray,
        event: np.ndarray,
        risk: np.ndarray,
        times: np.ndarray,
        reasons: dict[str, str] | None = None,
    ) -> dict[str, float | None]:
        """scikit-survival metrics of label ``j`` against its training follow-up and baseline."""
        return survival_metrics(
            self.train_time[j],
            self.train_event[j],
            time,
            event,
            risk,
            self.baselines[j],
            times,
            self.cutpoints[j],
            reasons=reasons,
        )

    def split_metrics(self, frame: pd.DataFrame, j: int) -> dict[str, float | None]:
        arrays = self._split_arrays(frame, j)
        if arrays is None or not self.is_fitted(j):
            return {}
        time, event, risk = arrays
        reasons: dict[str, str] = {}
        metrics = self._metrics(j, time, event, risk, self.eval_times[j], reasons)
        metrics = {"n": float(len(time)), "events": float(event.sum()), **metrics}
        if reasons:
            metrics["reasons"] = reasons
        return metrics

    def write_figures(self, predictions: pd.DataFrame, out_dir: Any) -> None:
        """Kaplan-Meier curves of the risk groups and td-AUC over time, per split and endpoint."""
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
                groups = assign_risk_groups(risk, self.cutpoints[j])
                plot_km_risk_groups(
                    time,
                    event,
                    groups,
                    out_dir / f"km_{spec.name}_{split}.png",
                    title=f"{spec.name}, {split} (cut-points from training risks)",
                )
                lo, hi = np.percentile(self.train_time[j][self.train_event[j] > 0], [10, 90])
                grid = np.linspace(lo, hi, 20)
                m = self._metrics(j, time, event, risk, grid)
                auc = np.array(
                    [np.nan if m[td_auc_key(t)] is None else m[td_auc_key(t)] for t in grid]
                )
                if np.isfinite(auc).any():
                    plot_td_auc(
                        grid, auc, m["td_auc_mean"], out_dir / f"td_auc_{spec.name}_{split}.png"
                    )
