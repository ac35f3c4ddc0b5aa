"""Classification's own ``evaluation.*`` settings: the evaluation contract of binary labels.

``threshold``, ``target_sensitivity`` and ``positive_class`` are read twice with two meanings:
when a model is built they fix its contract (``None``: the defaults below, and for the positive
class the obvious member of a pair such as no/yes), which is stored with the model; when a report
is rebuilt from predictions they are overrides of the stored contract (``None``: keep it).
Which labels and classes ``positive_class`` may name is checked where the labels are known
(:func:`~nervus_lightning.tasks.classification.classes.resolve_positive_classes` for a model,
the report's ``schema.json`` for an evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.options import set_field
from nervus_lightning.evaluation.thresholds import THRESHOLD_METHODS
from nervus_lightning.options import check_choice, check_number
from nervus_lightning.tasks.base import TaskOptions


@dataclass(frozen=True)
class ClassificationOptions(TaskOptions):
    """The evaluation contract settings of classification labels.

    Args:
        threshold: how a binary label's operating threshold is chosen on ``val``:
            ``"youden"`` (maximum sensitivity + specificity - 1) or ``"sensitivity"`` (the best
            specificity with sensitivity at least ``target_sensitivity``); ``None``: the stored
            contract, or :attr:`default_threshold` for a new model.
        target_sensitivity: in (0, 1], used by ``threshold="sensitivity"``; ``None``: the stored
            one, or :attr:`default_target_sensitivity`.
        positive_class: label name -> its positive class (binary labels); labels not named keep
            the stored (or obvious) one.
    """

    threshold: str | None = None
    target_sensitivity: float | None = None
    positive_class: Mapping[str, Any] | None = None

    #: How the operating threshold is chosen on ``val`` when nothing is said.
    default_threshold: ClassVar[str] = "youden"
    #: The sensitivity ``threshold="sensitivity"`` aims at when nothing is said.
    default_target_sensitivity: ClassVar[float] = 0.9

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_choice("evaluation.threshold", self.threshold, THRESHOLD_METHODS)
        if self.target_sensitivity is not None:
            check_number(
                "evaluation.target_sensitivity",
                self.target_sensitivity,
                low=0,
                high=1,
                low_open=True,
            )
            set_field(self, "target_sensitivity", float(self.target_sensitivity))
        positive = self.positive_class
        if positive is not None and not isinstance(positive, Mapping):
            raise NervusInputError(
                f"evaluation.positive_class={positive!r} must map label names to classes, e.g. "
                "evaluation.positive_class={label_cancer:malignant}."
            )
        set_field(self, "positive_class", dict(positive) if positive else None)
