"""The survival task kind."""

from nervus_lightning.tasks.survival.task import SurvivalTask, evaluate_survival, survival_figures

__all__ = ["SurvivalTask", "evaluate_survival", "survival_figures"]
