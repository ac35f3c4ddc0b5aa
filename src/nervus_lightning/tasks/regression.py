"""Regression: one linear head per label on standardised targets, reported in original units."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from nervus_lightning.data.schema import LabelSpec, numeric_column
from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.bootstrap import (
    BootstrapCI,
    weighted_bootstrap_distributions,
    weighted_regression_metrics,
)
from nervus_lightning.evaluation.metrics import (
    regression_metrics,
)
from nervus_lightning.evaluation.options import EvaluationOptions
from nervus_lightning.evaluation.sections import (
    ALL_GROUPS,
    EvalContext,
    LabelSection,
    Subset,
    add_figure,
    add_metric_rows,
    bootstrap_intervals,
    figure_splits,
    find_subset,
    group_series,
    iter_subsets,
    main_split,
    split_styles,
)
from nervus_lightning.models.glm import choose_linear_regression
from nervus_lightning.models.penalty import PenaltyChoice
from nervus_lightning.options import check_choice
from nervus_lightning.tasks.base import Task

#: Per-case losses (the mean over known targets is taken in ``RegressionTask.loss``).
LOSSES = {
    "mse": lambda pred, target: (pred - target) ** 2,
    "mae": lambda pred, target: (pred - target).abs(),
    "rmse": lambda pred, target: (pred - target) ** 2,  # square root of the mean, below
}


class RegressionTask(Task):
    """Targets standardised with training mean/std in the loss; outputs de-standardised.

    Regression has no evaluation settings of its own (``options_class`` is the empty
    :class:`~nervus_lightning.tasks.base.TaskOptions`): its report reads the shared ones only.
    """

    kind = "regression"
    summary_title = "distribution"
    export_prefix = "pred"
    export_meaning = "the prediction in the label's original units"

    @classmethod
    def evaluate(cls, predictions: pd.DataFrame, label: Mapping[str, Any], ctx: EvalContext):
        return evaluate_regression(predictions, label, ctx)

    @classmethod
    def figures(cls, section: LabelSection, ctx: EvalContext) -> None:
        regression_figures(section, ctx)

    primary_metric = "mae"

    def __init__(
        self,
        labels: list[LabelSpec],
        loss: str = "mse",
        evaluation: EvaluationOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(labels, evaluation=evaluation)
        self.loss_name = check_choice("task.loss", loss, sorted(LOSSES))
        self.loss_fn = LOSSES[self.loss_name]

    balances_classes = False

    @classmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Numeric target; its training mean and standard deviation standardise the loss."""
        values = numeric_column(df, column, path, df.index, "regression target")
        tr = values[train_rows]
        std = float(tr.std(ddof=0))
        if not math.isfinite(std) or std == 0.0:
            raise NervusInputError(
                f"{path}: regression label '{column}' is constant in the training split; "
                "nothing to learn."
            )
        return LabelSpec(name=column, task=cls.kind, mean=float(tr.mean()), std=std)

    @classmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [f"pred_{label['name']}"]

    def _standardised_target(self, batch: dict[str, Any], j: int) -> torch.Tensor:
        spec = self.labels[j]
        return (batch["target"][:, j].float() - spec.mean) / spec.std

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
        """Penalised (ridge or elastic-net) regression of the standardised target on the
        training rows, its penalty chosen on the validation rows and the folds of train
        (:func:`..models.glm.choose_linear_regression`)."""
        spec = self.labels[j]
        target = (
            pd.to_numeric(frame[spec.name], errors="coerce").to_numpy(np.float64) - spec.mean
        ) / spec.std
        known = ~np.isnan(target)
        return choose_linear_regression(
            inputs,
            np.where(known, target, 0.0),
            train_rows[known[train_rows]],
            val_rows[known[val_rows]],
        )

    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        target = self._standardised_target(batch, j)
        # Masked mean without boolean indexing or a Python test on a device tensor: either
        # would wait for the GPU at every step. A batch with no known target gives 0 (zero
        # gradient), as one that teaches nothing should.
        known = ~torch.isnan(target)
        per_case = self.loss_fn(output[:, 0].float(), torch.where(known, target, 0.0))
        count = known.sum()
        mean = torch.where(known, per_case, 0.0).sum() / count.clamp(min=1)
        if self.loss_name != "rmse":
            return mean
        # sqrt has an infinite slope at 0: keep it away from batches with nothing known.
        safe = torch.where(count > 0, mean, torch.ones_like(mean))
        return torch.where(count > 0, safe.sqrt(), mean)

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        spec = self.labels[j]
        return output.float() * spec.std + spec.mean

    def make_metrics(self, j: int) -> MetricCollection:
        return MetricCollection(
            {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}
        )

    def update_metrics(self, metrics, output, batch, j) -> None:
        target = batch["target"][:, j].float()
        known = ~torch.isnan(target)
        if known.any():
            metrics.update(self.transform_output(output.detach(), j)[:, 0][known], target[known])

    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        return {f"pred_{self.labels[j].name}": values[:, 0]}


# --------------------------------------------------------------------------------------------
# Evaluation: metrics with CIs, notes and figures of one regression label


def evaluate_regression(df: pd.DataFrame, label: Mapping, ctx: EvalContext) -> LabelSection:
    """Metrics with CIs and figures of one regression label."""
    name = label["name"]
    section = LabelSection(name, "regression")
    y_all = pd.to_numeric(df[name], errors="coerce")
    known = y_all.notna().to_numpy()
    if (~known).any():
        section.notes.append(
            f"{int((~known).sum())} case(s) without a true {name!r} are left out of its metrics."
        )
    df = df[known]
    summary = {}
    for split, group, rows in iter_subsets(df, ctx):
        if rows.empty:
            continue
        y = pd.to_numeric(rows[name]).to_numpy(dtype=float)
        pred = pd.to_numeric(rows[f"pred_{name}"]).to_numpy(dtype=float)
        point = regression_metrics(y, pred)
        intervals: dict[str, BootstrapCI] = {}
        if ctx.n_bootstrap > 0:
            intervals = bootstrap_intervals(
                weighted_bootstrap_distributions(
                    weighted_regression_metrics, y, pred, n_resamples=ctx.n_bootstrap, seed=ctx.seed
                ),
                ctx.ci,
            )
        add_metric_rows(section, split, group, point, intervals, lambda _m: None)
        if group == ALL_GROUPS:
            summary[split] = {
                "n": len(y),
                "mean": y.mean(),
                "sd": y.std(ddof=1) if len(y) > 1 else np.nan,
                "median": np.median(y),
                "min": y.min(),
                "max": y.max(),
            }
        section.subsets.append(Subset(split, group, {"y": y, "pred": pred}))
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    return section


def regression_figures(section: LabelSection, ctx: EvalContext) -> None:
    """Predicted vs true and Bland-Altman, one panel per split; predicted vs true by group."""
    name = section.name
    splits = figure_splits(section, ctx)
    styles = split_styles(splits)
    panels = {
        s: {s: (x.arrays["y"], x.arrays["pred"])} for s in splits if (x := find_subset(section, s))
    }
    if not panels:
        return
    where = ", ".join(panels)
    add_figure(
        section,
        ctx,
        "scatter",
        f"Predicted against true {name}, one panel per split ({where}); dotted: identity.",
        plots.plot_regression_scatter(
            panels, label=name, styles=styles, title=f"{name}: predicted vs true"
        ),
    )
    add_figure(
        section,
        ctx,
        "bland_altman",
        f"Bland-Altman plots of {name}, one panel per split ({where}): predicted - true against "
        "their mean, with the bias (solid) and the 95% limits of agreement (dashed).",
        plots.plot_bland_altman(panels, label=name, styles=styles, title=f"{name}: Bland-Altman"),
    )
    main = main_split(splits)
    by_group = group_series(section, main, ("y", "pred"))
    if len(by_group) > 1:
        add_figure(
            section,
            ctx,
            "scatter_by_group",
            f"Predicted against true {name} on {main}, by {ctx.group_column}.",
            plots.plot_regression_scatter(
                {main: by_group}, label=name, title=f"{name} on {main} by {ctx.group_column}"
            ),
        )
