"""Regression: one linear head per label on standardised targets, reported in original units."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from nervus_lightning.evaluation.metrics import regression_metrics
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

    def __init__(self, labels, loss: str = "mse", **options: Any) -> None:
        super().__init__(labels)
        if loss not in LOSSES:
            raise ValueError(f"task.loss '{loss}' is not one of {sorted(LOSSES)} for regression")
        self.loss_fn = LOSSES[loss]

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

    def split_metrics(self, frame: pd.DataFrame, j: int) -> dict[str, float | None]:
        name = self.labels[j].name
        if name not in frame.columns:
            return {}
        y = pd.to_numeric(frame[name], errors="coerce").to_numpy(float)
        known = ~np.isnan(y)
        if not known.any():
            return {}
        return regression_metrics(y[known], frame[f"pred_{name}"].to_numpy(float)[known])
