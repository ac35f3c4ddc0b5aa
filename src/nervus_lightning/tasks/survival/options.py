"""Survival's own ``evaluation.*`` setting: the size above which a split's censoring-weighted
metrics are computed on a seeded subsample."""

from __future__ import annotations

from dataclasses import dataclass

from nervus_lightning.evaluation.options import set_field
from nervus_lightning.options import check_number
from nervus_lightning.survival.metrics import MAX_ROWS_EXACT
from nervus_lightning.tasks.base import TaskOptions


@dataclass(frozen=True)
class SurvivalOptions(TaskOptions):
    """The evaluation settings of survival labels.

    Args:
        max_rows_exact: a split with more cases computes Uno's C, the td-AUCs and the IBS on a
            seeded random subsample of this many cases (the ``evaluation.seed``); Harrell's C and
            the log-rank test use every case. Said in ``metrics_notes.csv``.
    """

    max_rows_exact: int = MAX_ROWS_EXACT

    def __post_init__(self) -> None:
        check_number("evaluation.max_rows_exact", self.max_rows_exact, low=2, integer=True)
        set_field(self, "max_rows_exact", int(self.max_rows_exact))
