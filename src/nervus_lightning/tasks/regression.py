"""Regression: one linear head per label on standardised targets, reported in original units."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from nervus_lightning.data.schema import (
    LabelSpec,
    NervusInputError,
    check_no_missing,
    numeric_column,
)
from nervus_lightning.options import check_choice
from nervus_lightning.tasks.base import Task, zero_loss

LOSSES = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "rmse": lambda pred, target: torch.sqrt(F.mse_loss(pred, target)),
}


class RegressionTask(Task):
    """Targets standardised with training mean/std in the loss; outputs de-standardised."""

    kind = "regression"
    primary_metric = "mae"

    def __init__(self, labels, loss: str = "mse", evaluation: Any = None) -> None:
        super().__init__(labels, evaluation=evaluation)
        self.loss_fn = LOSSES[check_choice("task.loss", loss, sorted(LOSSES))]

    balances_classes = False

    @classmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Numeric target; its training mean and standard deviation standardise the loss."""
        train = df.loc[train_rows, column]
        hint = "Fill in the label or set split=exclude for those cases."
        check_no_missing(train, column, path, "label, training split", hint)
        values = numeric_column(df, column, path, df.index, "regression target")
        tr = values[train_rows]
        std = float(tr.std(ddof=0))
        if not math.isfinite(std) or std == 0.0:
            raise NervusInputError(
                f"{path}: regression label '{column}' is constant in the training split; "
                "nothing to learn."
            )
        return LabelSpec(name=column, task=cls.kind, mean=float(tr.mean()), std=std)

    @classmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [f"pred_{label['name']}"]

    def _standardised_target(self, batch: dict[str, Any], j: int) -> torch.Tensor:
        spec = self.labels[j]
        return (batch["target"][:, j].float() - spec.mean) / spec.std

    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        target = self._standardised_target(batch, j)
        known = ~torch.isnan(target)
        if not known.any():
            return zero_loss(output)
        return self.loss_fn(output[:, 0].float()[known], target[known])

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        spec = self.labels[j]
        return output.float() * spec.std + spec.mean

    def make_metrics(self, j: int) -> MetricCollection:
        return MetricCollection(
            {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}
        )

    def update_metrics(self, metrics, output, batch, j) -> None:
        target = batch["target"][:, j].float()
        known = ~torch.isnan(target)
        if known.any():
            metrics.update(self.transform_output(output.detach(), j)[:, 0][known], target[known])

    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        return {f"pred_{self.labels[j].name}": values[:, 0]}
