"""The survival task kind: its model side (:mod:`.task`), its evaluation setting
(:mod:`.options`), the CSV contract of its labels (:mod:`.labels`), its section of the report
(:mod:`.evaluation`) and its figures (:mod:`.figures`)."""

from nervus_lightning.tasks.survival.evaluation import evaluate_survival
from nervus_lightning.tasks.survival.figures import survival_figures, write_run_figures
from nervus_lightning.tasks.survival.options import SurvivalOptions
from nervus_lightning.tasks.survival.task import SurvivalTask

__all__ = [
    "SurvivalOptions",
    "SurvivalTask",
    "evaluate_survival",
    "survival_figures",
    "write_run_figures",
]
