"""The classification task kind: its model side (:mod:`.task`), its evaluation settings
(:mod:`.options`), which class is positive (:mod:`.classes`), its section of the report
(:mod:`.evaluation`) and its figures (:mod:`.figures`)."""

from nervus_lightning.tasks.classification.classes import (
    OBVIOUS_NUMERIC_PAIRS,
    OBVIOUS_PAIRS,
    obvious_positive_class,
    resolve_positive_classes,
)
from nervus_lightning.tasks.classification.evaluation import (
    COUNT_METRICS,
    closed_form_intervals,
    evaluate_classification,
)
from nervus_lightning.tasks.classification.figures import classification_figures
from nervus_lightning.tasks.classification.options import ClassificationOptions
from nervus_lightning.tasks.classification.task import (
    UNKNOWN,
    ClassificationTask,
    probabilities,
)

__all__ = [
    "COUNT_METRICS",
    "OBVIOUS_NUMERIC_PAIRS",
    "OBVIOUS_PAIRS",
    "UNKNOWN",
    "ClassificationOptions",
    "ClassificationTask",
    "classification_figures",
    "closed_form_intervals",
    "evaluate_classification",
    "obvious_positive_class",
    "probabilities",
    "resolve_positive_classes",
]
