"""The task kinds by name: importing this module defines (and so registers) every built-in kind.

:func:`task_class` and :func:`build_task` are how the rest of the library turns a ``task=`` name
into a task; a user's own :class:`~nervus_lightning.tasks.base.Task` subclass registers itself in
:data:`~nervus_lightning.tasks.base.TASKS` the same way once its module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nervus_lightning.data.schema import LabelSpec
from nervus_lightning.options import check_call_options, check_choice
from nervus_lightning.tasks.base import TASKS, Task
from nervus_lightning.tasks.classification import ClassificationTask
from nervus_lightning.tasks.regression import RegressionTask
from nervus_lightning.tasks.survival import SurvivalTask

BUILT_IN = (ClassificationTask, RegressionTask, SurvivalTask)


def task_class(kind: str, where: str = "task") -> type[Task]:
    """The registered task class of ``kind`` (``where`` names the setting in the error)."""
    return TASKS[check_choice(where, kind, sorted(TASKS))]


def build_task(
    kind: str,
    labels: list[LabelSpec],
    evaluation: Mapping[str, Any] | None = None,
    **options: Any,
) -> Task:
    """The task of kind ``kind``; ``options`` (``task.*``) are checked against its arguments."""
    cls = task_class(kind)
    check_call_options("task", cls, options, skip=("labels", "evaluation"))
    return cls(labels, evaluation=evaluation, **options)
