"""Classification: one softmax head per label, cross-entropy, probabilities per class."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from nervus_lightning.evaluation.metrics import classification_metrics
from nervus_lightning.evaluation.thresholds import choose_threshold
from nervus_lightning.tasks.base import Task, zero_loss

UNKNOWN = -1  # class index of a case whose label is not known (external data)


class ClassificationTask(Task):
    """Single-label, binary or multi-class targets; several labels = several heads."""

    kind = "classification"
    primary_metric = "auroc"
    post_training_splits = ("val",)

    def __init__(self, labels, label_smoothing: float = 0.0, **options: Any) -> None:
        super().__init__(labels)
        self.label_smoothing = label_smoothing
        # Binary operating points chosen on the validation split after training, so that
        # predict on an external set applies the same threshold without the validation rows.
        self.thresholds: list[dict[str, Any] | None] = [None] * len(labels)

    def fit_after_training(
        self,
        outputs: dict[str, list[np.ndarray]],
        frames: dict[str, pd.DataFrame],
        options: dict[str, Any],
    ) -> None:
        method = options.get("threshold", "youden")
        target = float(options.get("target_sensitivity", 0.9))
        positives = options.get("positive_class") or {}
        for j, spec in enumerate(self.labels):
            if len(spec.classes) != 2 or spec.name not in frames["val"].columns:
                continue
            positive = positives.get(spec.name, spec.classes[-1])
            y = frames["val"][spec.name].to_numpy(object)
            known = pd.notna(y)
            y_pos = y[known] == positive
            if y_pos.all() or not y_pos.any():
                continue
            score = outputs["val"][j][known, spec.classes.index(positive)]
            self.thresholds[j] = {
                "threshold": float(choose_threshold(y_pos, score, method, target)),
                "threshold_method": method,
                "target_sensitivity": target,
                "positive_class": positive,
            }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {}
        for j, spec in enumerate(self.labels):
            fitted = self.thresholds[j]
            if fitted:
                state[f"{j}.threshold"] = torch.tensor(
                    [
                        fitted["threshold"],
                        fitted["target_sensitivity"],
                        spec.classes.index(fitted["positive_class"]),
                        float(fitted["threshold_method"] == "youden"),
                    ],
                    dtype=torch.float64,
                )
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for j, spec in enumerate(self.labels):
            if f"{j}.threshold" in state:
                threshold, target, positive, youden = state[f"{j}.threshold"].tolist()
                self.thresholds[j] = {
                    "threshold": threshold,
                    "threshold_method": "youden" if youden else "sensitivity",
                    "target_sensitivity": target,
                    "positive_class": spec.classes[int(positive)],
                }

    def export_label(self, j: int) -> dict[str, Any]:
        return dict(self.thresholds[j] or {})

    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        target = batch["target"][:, j].long()
        if not (target != UNKNOWN).any():
            return zero_loss(output)
        return F.cross_entropy(
            output.float(), target, ignore_index=UNKNOWN, label_smoothing=self.label_smoothing
        )

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        return torch.softmax(output.float(), dim=1)

    def make_metrics(self, j: int) -> MetricCollection:
        k = len(self.labels[j].classes)
        # Binary AUROC equals the macro one-vs-rest AUROC of two classes, so one metric serves both.
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(k, average="micro", ignore_index=UNKNOWN),
                "auroc": MulticlassAUROC(k, average="macro", ignore_index=UNKNOWN),
            }
        )

    def update_metrics(self, metrics, output, batch, j) -> None:
        metrics.update(output.detach().float(), batch["target"][:, j].long())

    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        spec = self.labels[j]
        # float32 softmax sums to 1 only to ~1e-7; renormalise in float64 for downstream checks.
        values = values.astype(np.float64)
        values /= values.sum(axis=1, keepdims=True)
        classes = np.asarray(spec.classes, dtype=object)
        cols: dict[str, Any] = {f"pred_{spec.name}": classes[values.argmax(axis=1)]}
        for c, name in enumerate(spec.classes):
            cols[f"prob_{spec.name}_{name}"] = values[:, c]
        return cols

    def split_metrics(self, frame: pd.DataFrame, j: int) -> dict[str, float | None]:
        spec = self.labels[j]
        if spec.name not in frame.columns:
            return {}
        prob = frame[[f"prob_{spec.name}_{c}" for c in spec.classes]].to_numpy(float)
        return classification_metrics(frame[spec.name].to_numpy(object), prob, spec.classes)
