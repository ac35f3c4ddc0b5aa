"""What a label *means*: its loss, output activation, epoch metrics and prediction columns.

One subclass per task kind, registered in :data:`TASKS` when it is defined and chosen once by
name through :func:`nervus_lightning.tasks.task_class`; no ``if task == ...`` elsewhere.
A task sees the network's raw output for one label (``(B, head_size)``) and the batch.

Each kind declares its own ``evaluation.*`` settings once, as a frozen dataclass
(:attr:`Task.options_class`, a :class:`TaskOptions`); :func:`evaluation_options` checks an
``evaluation:`` mapping against the shared settings and every registered kind's, once, and the
resulting :class:`~nervus_lightning.evaluation.options.EvaluationOptions` is what training (the
task's contract) and the report (:class:`~nervus_lightning.evaluation.sections.EvalContext`) read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torchmetrics import MetricCollection

from nervus_lightning.data.schema import LabelSpec, numeric_column
from nervus_lightning.errors import PERIOD_PREFIXES, NervusInputError
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.models.penalty import PenaltyChoice

TASKS: dict[str, type[Task]] = {}


@dataclass(frozen=True)
class TaskOptions:
    """A task kind's own ``evaluation.*`` settings (none here; a kind that has some subclasses
    this with one field per setting, checked in ``__post_init__``)."""


def evaluation_options(
    options: EvaluationOptions | Mapping[str, Any] | None,
) -> EvaluationOptions:
    """The ``evaluation:`` settings checked once: the shared ones and each registered task
    kind's (:attr:`Task.options_class`). An :class:`EvaluationOptions` is returned as it is.

    Raises:
        NervusInputError: an unknown key (the closest one suggested) or a bad value, with the
            ``evaluation.<key>=...`` message of the command line.
    """
    if isinstance(options, EvaluationOptions):
        return options
    kinds = {kind: cls.options_class for kind, cls in TASKS.items()}
    return EvaluationOptions.from_mapping(options, kinds)


class Task(ABC):
    """Behaviour shared by all labels of one task kind.

    Args:
        labels: the schema's labels of this kind.
        evaluation: the ``evaluation:`` settings the model is built with (an
            :class:`EvaluationOptions`, or a mapping checked by :func:`evaluation_options`);
            this kind reads its own from them (:attr:`options`).
    """

    kind: ClassVar[str]
    #: Metric (name in ``metrics.json``) that sweeps and summaries read first.
    primary_metric: ClassVar[str]
    #: This kind's ``evaluation.*`` settings (a frozen dataclass; :class:`TaskOptions`: none).
    options_class: ClassVar[type[TaskOptions]] = TaskOptions
    #: What :meth:`combine` averages over an ensemble's members, for the report's model table.
    averaged: str = "predictions"

    #: How a loss that compares cases (Cox risk sets, DeepHit's ranking) sees the global batch
    #: when training runs in several processes (DDP): ``NervusModule.setup`` sets it to a
    #: function that gathers a per-process tensor from every process, with gradients, and
    #: concatenates the shares along the first axis. ``None`` (one process, and the
    #: whole-split losses of validation and test, which every process already holds): the batch
    #: as it is. Losses of independent cases (cross-entropy, regression) ignore it.
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "kind", None):
            TASKS[cls.kind] = cls

    def __init__(
        self,
        labels: list[LabelSpec],
        evaluation: EvaluationOptions | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.labels = labels
        #: The evaluation settings the model was built with (checked once).
        self.evaluation = evaluation_options(evaluation)
        #: This kind's own part of them (an instance of :attr:`options_class`).
        self.options = type(self).options_in(self.evaluation)

    @classmethod
    def options_in(cls, evaluation: EvaluationOptions) -> TaskOptions:
        """This kind's settings in ``evaluation`` (its defaults when they are not there)."""
        return evaluation.of(cls.kind, cls.options_class)

    #: Whether ``sampler=weighted`` (inverse class frequency) makes sense for this kind.
    balances_classes: ClassVar[bool] = True
    #: Title of the per-split data summary in the report (class balance, distribution...).
    summary_title: ClassVar[str] = "data"
    #: How this kind's bootstrap resamples differ from the plain one, said in the report.
    resampling_note: ClassVar[str | None] = None
    #: What the validation split chose for this kind (why its estimates are optimistic).
    val_selects: ClassVar[str] = "the checkpoint"
    #: Name prefix of this kind's output in an exported graph (``<prefix>_<label>``).
    export_prefix: ClassVar[str]
    #: What that output holds, for the export's JSON contract.
    export_meaning: ClassVar[str]

    def export_name(self, j: int) -> str:
        """Name of label ``j``'s output in an exported graph."""
        return f"{self.export_prefix}_{self.labels[j].name}"

    def export_output(self, j: int) -> dict[str, Any]:
        """Shape and meaning of label ``j``'s output in an exported graph (what
        :meth:`transform_output` returns for these task options)."""
        return {"shape": ["batch", self.head_size(j)], "meaning": self.export_meaning}

    # -- evaluation (no model needed: works from predictions.csv and schema.json) -----------------
    @classmethod
    @abstractmethod
    def evaluate(cls, predictions: pd.DataFrame, label: Mapping[str, Any], ctx: Any) -> Any:
        """Metrics with bootstrap CIs, notes and tables of one ``schema.json`` label on every split
        and group of ``predictions`` (a :class:`~nervus_lightning.evaluation.sections.LabelSection`;
        ``ctx`` is the :class:`~nervus_lightning.evaluation.sections.EvalContext`, this kind's
        own settings ``cls.options_in(ctx)``)."""

    @classmethod
    @abstractmethod
    def figures(cls, section: Any, ctx: Any) -> None:
        """Draw the figures a reader needs for ``section`` into ``section.figures``."""

    # -- the CSV contract of a label (no model needed: used while reading the CSV) -------------
    @classmethod
    @abstractmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Validate a label column of a training CSV and describe it (classes, statistics...).

        The training rows of ``column`` are known to be filled in."""

    @classmethod
    def check_columns(
        cls, df: pd.DataFrame, path: Path, label_columns: list[str], explicit: bool
    ) -> None:
        """Checks across columns (e.g. survival time columns without a label)."""
        orphans = [c for c in df.columns if c.startswith(PERIOD_PREFIXES)]
        if orphans and not explicit:
            raise NervusInputError(
                f"{path}: has survival time column(s) {orphans} but task={cls.kind}. "
                "Use task=survival, or list the labels to use in data.labels."
            )

    @classmethod
    def check_prediction_labels(cls, df: pd.DataFrame, path: Path, spec: LabelSpec) -> None:
        """Validate the (optional) label column of a CSV to predict."""
        numeric_column(df, spec.name, path, df.index, f"{spec.task} label")

    @classmethod
    def encode_targets(cls, df: pd.DataFrame, spec: LabelSpec) -> np.ndarray:
        """One label column as the float targets of a batch (NaN where unknown or absent)."""
        if spec.name not in df.columns:
            return np.full(len(df), np.nan, dtype=np.float32)
        return pd.to_numeric(df[spec.name], errors="coerce").to_numpy(dtype=np.float32)

    @classmethod
    def output_dim(cls, spec: LabelSpec) -> int:
        """Size of the head of ``spec``."""
        return 1

    @classmethod
    def batch_fields(cls, df: pd.DataFrame, labels: list[LabelSpec]) -> dict[str, np.ndarray]:
        """Extra per-case arrays a batch needs besides ``target`` (e.g. survival times)."""
        return {}

    # -- what a label is in the files (no model needed: used by the evaluation too) -------------
    @classmethod
    def truth_columns(cls, label: Mapping[str, Any]) -> list[str]:
        """Columns of ``predictions.csv`` holding the true value of a ``schema.json`` label."""
        return [label["name"]]

    @classmethod
    @abstractmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        """Prediction columns of ``predictions.csv`` that the evaluation of ``label`` reads."""

    def head_size(self, j: int) -> int:
        """Size of label ``j``'s head for these task options (default :meth:`output_dim`)."""
        return type(self).output_dim(self.labels[j])

    def fit_before_training(self, train: pd.DataFrame) -> None:
        """Fit on the training split what the loss needs (e.g. a survival time grid)."""

    def check_batches(self, train: pd.DataFrame, batch_size: int) -> None:
        """Warnings about training batches of ``batch_size`` cases of the training split
        (nothing by default); called when training starts, with the task's options known."""

    @property
    def linear_by_default(self) -> bool:
        """Whether ``model.tabular.linear=auto`` adds a linear term for a tabular-only model:
        only where the linear special case is the reference model (Cox survival)."""
        return False

    def linear_start(
        self,
        inputs: torch.Tensor,
        frame: pd.DataFrame,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        j: int,
    ) -> PenaltyChoice | None:
        """Start of label ``j``'s linear term (a net built with ``linear=True``): a penalised
        linear model of the standardised ``inputs`` (rows of ``frame``) fitted on
        ``train_rows``, its penalty chosen on ``val_rows``
        (:mod:`nervus_lightning.models.penalty`), whose ``weight`` is ``(head_size, n_inputs)``
        or, with the intercept last, ``(head_size, n_inputs + 1)``; None to start at zero."""
        return None

    def head_start(self, train: pd.DataFrame, j: int) -> torch.Tensor | None:
        """Starting bias ``(head_size,)`` of label ``j``'s output layer from the training split
        (e.g. a survival curve that equals the training Kaplan-Meier curve), or None to keep
        the layer's own initialisation."""
        return None

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        """Loss of label ``j`` on this batch (cases with an unknown target are ignored)."""

    @abstractmethod
    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        """Raw head output -> what users see (probabilities, original units, log hazard)."""

    def combine(self, outputs: list[torch.Tensor], j: int) -> torch.Tensor:
        """The raw output of an ensemble (``model.ensemble``) from its members' raw outputs of
        label ``j``: one whose :meth:`transform_output` is the members' averaged prediction.
        Default: the mean, for outputs whose transform is affine (regression's original units)
        or that are averaged as they are (Cox log hazards)."""
        return torch.stack([o.float() for o in outputs]).mean(0)

    def make_metrics(self, j: int) -> MetricCollection | None:
        """torchmetrics logged per epoch for label ``j`` (None for none)."""
        return None

    def update_metrics(
        self, metrics: MetricCollection, output: torch.Tensor, batch: dict[str, Any], j: int
    ) -> None:
        raise NotImplementedError

    @abstractmethod
    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        """Columns of ``predictions.csv`` for label ``j`` from ``transform_output`` values."""

    #: Splits whose outputs the task needs after training to fit what predictions rely on
    #: (survival: the baseline hazard on ``train``; classification: operating thresholds on
    #: ``val``); see :meth:`fit_after_training`.
    post_training_splits: ClassVar[tuple[str, ...]] = ()

    def shrinks(self, j: int) -> bool:
        """Whether label ``j``'s outputs are shrunk by their calibration slope on the
        validation rows after training (Cox survival: :mod:`nervus_lightning.survival.
        shrinkage`)."""
        return False

    def fit_after_training(
        self,
        outputs: dict[str, list[np.ndarray]],
        frames: dict[str, pd.DataFrame],
    ) -> None:
        """Fit post-training state from transformed outputs (per split, per label) of the
        trained model on :attr:`post_training_splits`."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Post-training state as a flat dict of tensors (stored in checkpoints)."""
        return {}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""

    def write_figures(
        self, predictions: pd.DataFrame, out_dir: Any, time_unit: str | None = None
    ) -> None:
        """Task-specific figures from ``predictions.csv`` (e.g. Kaplan-Meier curves; time axes
        in ``time_unit``, the schema's ``data.time_unit``)."""

    def export_label(self, j: int) -> dict[str, Any]:
        """Extra JSON for label ``j`` in ``schema.json`` (e.g. a survival baseline)."""
        return {}


def zero_loss(output: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (no NaN, zero gradient) for batches with nothing to learn."""
    return output.sum() * 0.0
