"""Task kinds; importing this package registers each in ``TASKS``."""

from nervus_lightning.tasks.base import TASKS, Task
from nervus_lightning.tasks.classification import ClassificationTask
from nervus_lightning.tasks.registry import build_task, task_class
from nervus_lightning.tasks.regression import RegressionTask
from nervus_lightning.tasks.survival import SurvivalTask

__all__ = [
    "TASKS",
    "Task",
    "build_task",
    "task_class",
    "ClassificationTask",
    "RegressionTask",
    "SurvivalTask",
]
