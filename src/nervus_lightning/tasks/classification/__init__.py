"""The classification task kind."""

from nervus_lightning.tasks.classification.task import (
    COUNT_METRICS,
    OBVIOUS_NUMERIC_PAIRS,
    OBVIOUS_PAIRS,
    UNKNOWN,
    ClassificationTask,
    check_threshold_options,
    classification_figures,
    closed_form_intervals,
    evaluate_classification,
    obvious_positive_class,
    probabilities,
    resolve_positive_classes,
)

__all__ = [
    "COUNT_METRICS",
    "OBVIOUS_NUMERIC_PAIRS",
    "OBVIOUS_PAIRS",
    "UNKNOWN",
    "ClassificationTask",
    "check_threshold_options",
    "classification_figures",
    "closed_form_intervals",
    "evaluate_classification",
    "obvious_positive_class",
    "probabilities",
    "resolve_positive_classes",
]
