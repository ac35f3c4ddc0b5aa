"""Classification: one softmax head per label, cross-entropy, probabilities per class.

Besides the loss and the probabilities, this task owns the *evaluation contract* of binary
labels: which class is positive, how the operating threshold is chosen (on the validation split,
after training) and the threshold itself. The contract is fixed when the model is built, stored
in every checkpoint and in ``schema.json``, and applied unchanged wherever the model predicts.

The contract's settings (declared once, checked once): :mod:`.options`; which class of a binary
label is positive: :mod:`.classes`; the report's section: :mod:`.evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from nervus_lightning.data.schema import LabelSpec, check_class_count, sort_classes
from nervus_lightning.errors import NervusInputError, csv_lines
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.evaluation.sections import EvalContext, LabelSection
from nervus_lightning.evaluation.thresholds import choose_threshold
from nervus_lightning.models.ensemble import mean_probability_logits
from nervus_lightning.models.glm import choose_linear_classifier
from nervus_lightning.models.penalty import PenaltyChoice
from nervus_lightning.options import check_number
from nervus_lightning.tasks.base import Task
from nervus_lightning.tasks.classification.classes import resolve_positive_classes
from nervus_lightning.tasks.classification.evaluation import (
    classification_figures,
    evaluate_classification,
)
from nervus_lightning.tasks.classification.options import ClassificationOptions

UNKNOWN = -1  # class index of a case whose label is not known (external data)


def probabilities(values: np.ndarray) -> np.ndarray:
    """Softmax outputs as float64 rows that sum to 1 (float32 softmax sums to 1 only to ~1e-7).

    The same values are written to ``predictions.csv`` and used to choose thresholds, so that a
    case exactly at the threshold is classified identically everywhere.
    """
    values = np.asarray(values, dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)


class ClassificationTask(Task):
    """Single-label, binary or multi-class targets; several labels = several heads.

    Args:
        labels: the schema's labels.
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        evaluation: the evaluation settings; this kind's (:class:`ClassificationOptions`:
            ``threshold``, ``target_sensitivity``, ``positive_class``, see the module docstring)
            fix the contract. The shared ones (bootstrap...) are not used here.
    """

    kind = "classification"
    averaged = "probabilities"
    summary_title = "class balance"
    resampling_note = "classification labels resample within each true class"
    val_selects = "the checkpoint and the operating threshold"
    export_prefix = "prob"
    export_meaning = "softmax probability of each class, in the order of 'classes'"

    def export_output(self, j: int) -> dict[str, Any]:
        return {**super().export_output(j), "classes": list(self.labels[j].classes or [])}

    @classmethod
    def evaluate(cls, predictions: pd.DataFrame, label: Mapping[str, Any], ctx: EvalContext):
        return evaluate_classification(predictions, label, ctx, cls.options_in(ctx))

    @classmethod
    def figures(cls, section: LabelSection, ctx: EvalContext) -> None:
        classification_figures(section, ctx)

    primary_metric = "auroc"
    post_training_splits = ("val",)
    options_class = ClassificationOptions
    options: ClassificationOptions

    def __init__(
        self,
        labels: list[LabelSpec],
        label_smoothing: float = 0.0,
        evaluation: EvaluationOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(labels, evaluation=evaluation)
        self.label_smoothing = float(
            check_number("task.label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
        )
        # The contract of this model: the settings given, else the defaults.
        options = self.options
        self.threshold_method = options.threshold or options.default_threshold
        target = options.target_sensitivity
        self.target_sensitivity = options.default_target_sensitivity if target is None else target
        self.positive_classes = resolve_positive_classes(labels, self.options.positive_class)
        # Binary operating thresholds chosen on the validation split after training, so that
        # predict on an external set applies the same threshold without the validation rows.
        self.thresholds: list[float | None] = [None] * len(labels)

    @classmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Classes: the sorted values of the training split (numerically when all numbers)."""
        classes = sort_classes(df.loc[train_rows, column].tolist())
        check_class_count(df, path, column, train_rows, classes)
        if len(classes) < 2:
            raise NervusInputError(
                f"{path}: label '{column}' has only one class ({classes[0]!r}) in the training "
                "split; a classifier needs at least two. Check the split or drop this label."
            )
        known = df[column].isna() | df[column].isin(classes)
        if not known.all():
            unseen = sorted(df.loc[~known, column].unique())
            raise NervusInputError(
                f"{path}: label '{column}' has class(es) {unseen} at "
                f"{csv_lines(df.index[~known])} that never occur in the training split (classes: "
                f"{classes}). Add training cases of that class or fix the values."
            )
        return LabelSpec(name=column, task=cls.kind, classes=classes)

    @classmethod
    def check_prediction_labels(cls, df: pd.DataFrame, path: Path, spec: LabelSpec) -> None:
        known = df[spec.name].isna() | df[spec.name].isin(spec.classes or [])
        if not known.all():
            raise NervusInputError(
                f"{path}: label '{spec.name}' has class(es) "
                f"{sorted(df.loc[~known, spec.name].unique())} at {csv_lines(df.index[~known])} "
                f"unknown to the model (classes: {spec.classes})."
            )

    @classmethod
    def encode_targets(cls, df: pd.DataFrame, spec: LabelSpec) -> np.ndarray:
        """Class indices; ``UNKNOWN`` (-1) where the label is missing or absent."""
        if spec.name not in df.columns:
            return np.full(len(df), UNKNOWN, dtype=np.int64)
        lookup = {c: i for i, c in enumerate(spec.classes or [])}
        return np.array([lookup.get(v, UNKNOWN) for v in df[spec.name]], dtype=np.int64)

    @classmethod
    def output_dim(cls, spec: LabelSpec) -> int:
        return len(spec.classes or [])

    @classmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [f"prob_{label['name']}_{c}" for c in label.get("classes") or []]

    def contract(self, j: int) -> dict[str, Any]:
        """The evaluation contract of binary label ``j`` (empty for other labels)."""
        spec = self.labels[j]
        if spec.name not in self.positive_classes:
            return {}
        return {
            "positive_class": self.positive_classes[spec.name],
            "threshold_method": self.threshold_method,
            "target_sensitivity": self.target_sensitivity,
            "threshold": self.thresholds[j],
        }

    def fit_after_training(
        self,
        outputs: dict[str, list[np.ndarray]],
        frames: dict[str, pd.DataFrame],
    ) -> None:
        for j, spec in enumerate(self.labels):
            if spec.name not in self.positive_classes or spec.name not in frames["val"].columns:
                continue
            positive = self.positive_classes[spec.name]
            y = frames["val"][spec.name].to_numpy(object)
            known = pd.notna(y)
            y_pos = y[known] == positive
            if y_pos.all() or not y_pos.any():
                continue
            score = probabilities(outputs["val"][j])[known, spec.classes.index(positive)]
            self.thresholds[j] = float(
                choose_threshold(y_pos, score, self.threshold_method, self.target_sensitivity)
            )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{j}.threshold": torch.tensor(threshold, dtype=torch.float64)
            for j, threshold in enumerate(self.thresholds)
            if threshold is not None
        }

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for j in range(len(self.labels)):
            if f"{j}.threshold" in state:
                self.thresholds[j] = float(state[f"{j}.threshold"].reshape(-1)[0])

    def export_label(self, j: int) -> dict[str, Any]:
        return self.contract(j)

    @property
    def linear_by_default(self) -> bool:
        # On tabular inputs alone the penalised linear model is the reference: the network
        # starts as it and can only move away where validation loss says so.
        return True

    def linear_start(
        self,
        inputs: torch.Tensor,
        frame: pd.DataFrame,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        j: int,
    ) -> PenaltyChoice | None:
        """The penalised (ridge or elastic-net) multinomial logistic fit of the training rows,
        its penalty chosen on the validation rows, or on them and the folds of train when a
        class has few validation cases (:func:`..models.glm.choose_linear_classifier`)."""
        spec = self.labels[j]
        classes = self.encode_targets(frame, spec)
        known = classes != UNKNOWN
        return choose_linear_classifier(
            inputs,
            np.where(known, classes, 0),
            len(spec.classes or []),
            train_rows[known[train_rows]],
            val_rows[known[val_rows]],
        )

    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        target = batch["target"][:, j].long()
        # The mean over known targets, as reduction="mean" takes it, but without a Python test
        # on a device tensor (that would wait for the GPU at every step); a batch with no known
        # target gives 0 with a zero gradient.
        total = F.cross_entropy(
            output.float(),
            target,
            ignore_index=UNKNOWN,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return total / (target != UNKNOWN).sum().clamp(min=1)

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        return torch.softmax(output.float(), dim=1)

    def combine(self, outputs: list[torch.Tensor], j: int) -> torch.Tensor:
        # The log of the members' mean probabilities: logits whose softmax is that mean.
        return mean_probability_logits([o.float() for o in outputs])

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
        # On probabilities, as users read them (not on logits).
        probs = self.transform_output(output.detach(), j)
        metrics.update(probs, batch["target"][:, j].long())

    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        spec = self.labels[j]
        values = probabilities(values)
        classes = np.asarray(spec.classes, dtype=object)
        predicted = values.argmax(axis=1)
        if self.thresholds[j] is not None:
            # The operating point of the contract, as in sensitivity/specificity.
            positive = spec.classes.index(self.positive_classes[spec.name])
            predicted = np.where(values[:, positive] >= self.thresholds[j], positive, 1 - positive)
        cols: dict[str, Any] = {f"pred_{spec.name}": classes[predicted]}
        for c, name in enumerate(spec.classes):
            cols[f"prob_{spec.name}_{name}"] = values[:, c]
        return cols
