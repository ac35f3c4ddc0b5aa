"""Survival (DeepSurv): one risk head per endpoint, Cox partial likelihood, Breslow baseline.

The head outputs a log hazard ratio. After training, the task fits on the training split what
survival predictions and metrics need -- a
:class:`~nervus_lightning.survival.reference.SurvivalReference`: Breslow's baseline cumulative
hazard on a time grid, the censoring Kaplan-Meier curve, the evaluation times, the risk-group
cut-points and a few percentiles of the training times -- and keeps it as tensors in the
checkpoint, so predict on an external CSV needs nothing else. Only these aggregates are stored,
never a training patient's time or event (a checkpoint may leave the hospital).

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
    LABEL_PREFIX,
    PERIOD_PREFIXES,
    LabelSpec,
    NervusInputError,
    check_no_missing,
    csv_lines,
    numeric_column,
    period_column_for,
)
from nervus_lightning.options import check_choice, check_number
from nervus_lightning.survival.loss import TIES, cox_loss
from nervus_lightning.survival.metrics import assign_risk_groups, format_time, survival_metrics
from nervus_lightning.survival.reference import SurvivalReference
from nervus_lightning.tasks.base import Task, zero_loss


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
        evaluation: Any = None,
    ) -> None:
        super().__init__(labels, evaluation=evaluation)
        self.ties = check_choice("task.ties", ties, list(TIES))
        check_number("task.risk_groups", risk_groups, low=2, integer=True)
        if eval_times is not None:
            for t in eval_times:
                check_number("task.eval_times", t, low=0, low_open=True)
        self.requested_times = None if eval_times is None else np.asarray(eval_times, float)
        self.risk_groups = risk_groups
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.references: list[SurvivalReference | None] = [None] * len(labels)

    @classmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Event label 0/1 with its time column ``period_<name>`` (or ``periods_<name>``)."""
        train = df.loc[train_rows, column]
        hint = "Fill in the label or set split=exclude for those cases."
        check_no_missing(train, column, path, "label, training split", hint)
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
        bad = events.notna() & ~events.isin([0.0, 1.0])
        if bad.any():
            raise NervusInputError(
                f"{path}: survival event column '{column}' must be 0 (censored) or 1 (event) but "
                f"has {sorted(events[bad].unique())[:3]} at {csv_lines(events.index[bad])}."
            )
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
        if events[train_rows].sum() == 0:
            raise NervusInputError(
                f"{path}: survival label '{column}' has no events (all 0) in the training split; "
                "a Cox model cannot learn without events."
            )
        return LabelSpec(name=column, task=cls.kind, period=period)

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
        numeric_column(df, spec.name, path, df.index, "survival label")
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
    def check_training_data(
        cls, train: pd.DataFrame, labels: list[LabelSpec], batch_size: int
    ) -> None:
        """Warn when batches would often hold no event (they teach the Cox model nothing)."""
        for spec in labels:
            rate = float(pd.to_numeric(train[spec.name]).mean())
            p_empty = (1.0 - rate) ** batch_size
            if p_empty > 0.05:
                warnings.warn(
                    f"survival label '{spec.name}': with an event rate of {rate:.1%} a batch of "
                    f"{batch_size} has no event with probability {p_empty:.0%}; such batches "
                    "teach the Cox model nothing. Increase data.batch_size.",
                    stacklevel=3,
                )

    @classmethod
    def truth_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [label["name"], label["period"]]

    @classmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [f"risk_{label['name']}"]

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
            self.references[j] = SurvivalReference.fit(
                time,
                event,
                risk,
                eval_times=self.requested_times,
                n_risk_groups=self.risk_groups,
            )

    def is_fitted(self, j: int) -> bool:
        return self.references[j] is not None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {}
        for j, reference in enumerate(self.references):
            if reference is not None:
                state.update({f"{j}.{k}": v for k, v in reference.to_tensors().items()})
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for j in range(len(self.labels)):
            prefix = f"{j}."
            fields = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if fields:
                self.references[j] = SurvivalReference.from_tensors(fields)

    def export_label(self, j: int) -> dict[str, Any]:
        # The same aggregates as the checkpoint, so that `evaluate` can score an external set
        # from schema.json alone.
        reference = self.references[j]
        return {} if reference is None else reference.to_json()

    # -- outputs ---------------------------------------------------------------------------
    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        name = self.labels[j].name
        risk = values[:, 0].astype(np.float64)
        cols: dict[str, Any] = {f"risk_{name}": risk}
        reference = self.references[j]
        if reference is not None:
            surv = reference.survival(risk, reference.eval_times)
            for k, t in enumerate(reference.eval_times):
                cols[f"surv_{name}_t{format_time(t)}"] = surv[:, k]
            cols[f"risk_group_{name}"] = assign_risk_groups(risk, reference.risk_cutpoints)
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
                reference = self.references[j]
                groups = assign_risk_groups(risk, reference.risk_cutpoints)
                plot_km_risk_groups(
                    time,
                    event,
                    groups,
                    out_dir / f"km_{spec.name}_{split}.png",
                    title=f"{spec.name}, {split} (cut-points from training risks)",
                )
                grid = reference.td_auc_plot_grid()
                m = survival_metrics(reference, time, event, risk, grid)
                auc = np.array(
                    [np.nan if m[td_auc_key(t)] is None else m[td_auc_key(t)] for t in grid]
                )
                if np.isfinite(auc).any():
                    plot_td_auc(
                        grid, auc, m["td_auc_mean"], out_dir / f"td_auc_{spec.name}_{split}.png"
                    )
