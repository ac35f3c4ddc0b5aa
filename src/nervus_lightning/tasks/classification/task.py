"""Classification: one softmax head per label, cross-entropy, probabilities per class.

Besides the loss and the probabilities, this task owns the *evaluation contract* of binary
labels: which class is positive, how the operating threshold is chosen (on the validation split,
after training) and the threshold itself. The contract is fixed when the model is built, stored
in every checkpoint and in ``schema.json``, and applied unchanged wherever the model predicts.

Positive class (scikit-learn's rule, extended to the usual clinical spellings): when a binary
label's two classes are an obvious negative/positive pair -- ``0/1``, ``-1/1``, ``false/true``,
``no/yes``, ``negative/positive`` (any case; numbers compared as numbers, so ``0.0/1.0`` too) --
the second one is positive. Otherwise the user must name it
(``evaluation.positive_class={label_x: malignant}``): guessing from the sort order would make
sensitivity and specificity swap places without warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from nervus_lightning.data.schema import LabelSpec, check_class_count, sort_classes
from nervus_lightning.errors import NervusInputError, csv_lines
from nervus_lightning.evaluation import plots
from nervus_lightning.evaluation.bootstrap import (
    BootstrapCI,
    weighted_bootstrap_distributions,
    weighted_classification_metrics,
)
from nervus_lightning.evaluation.intervals import (
    Interval,
    auroc_interval,
    proportion_interval,
)
from nervus_lightning.evaluation.metrics import (
    MetricValues,
    binary_confusion,
    classification_metrics,
    is_missing_label,
)
from nervus_lightning.evaluation.sections import (
    ALL_GROUPS,
    EvalContext,
    LabelSection,
    Subset,
    add_figure,
    add_metric_rows,
    bootstrap_intervals,
    class_name_of,
    figure_splits,
    find_subset,
    group_series,
    interval_of,
    iter_subsets,
    main_split,
    split_styles,
)
from nervus_lightning.evaluation.thresholds import THRESHOLD_METHODS, choose_threshold
from nervus_lightning.models.ensemble import mean_probability_logits
from nervus_lightning.options import check_choice, check_number
from nervus_lightning.tasks.base import Task

log = logging.getLogger(__name__)

UNKNOWN = -1  # class index of a case whose label is not known (external data)

#: Negative/positive pairs whose positive member is obvious (compared in lower case).
OBVIOUS_PAIRS = (("false", "true"), ("no", "yes"), ("negative", "positive"))
#: Numeric negative/positive pairs (compared as numbers).
OBVIOUS_NUMERIC_PAIRS = ((0.0, 1.0), (-1.0, 1.0))


def obvious_positive_class(classes: list[str]) -> str | None:
    """The positive member of an obvious negative/positive pair of classes, else ``None``."""
    if len(classes) != 2:
        return None
    try:
        values = [float(c) for c in classes]
    except ValueError:
        values = None
    if values is not None:
        for negative, positive in OBVIOUS_NUMERIC_PAIRS:
            if sorted(values) == [negative, positive]:
                return classes[values.index(positive)]
        return None
    lowered = [c.lower() for c in classes]
    for negative, positive in OBVIOUS_PAIRS:
        if sorted(lowered) == [negative, positive]:
            return classes[lowered.index(positive)]
    return None


def _match_class(value: Any, classes: list[str]) -> str | None:
    """The class named by a config value (YAML may turn ``1`` or ``true`` into int/bool)."""
    if str(value) in classes:
        return str(value)
    if isinstance(value, bool):
        found = [c for c in classes if c.lower() == str(value).lower()]
        return found[0] if len(found) == 1 else None
    if isinstance(value, int | float):
        found = []
        for c in classes:
            try:
                if float(c) == float(value):
                    found.append(c)
            except ValueError:
                continue
        return found[0] if len(found) == 1 else None
    return None


def resolve_positive_classes(
    labels: list[LabelSpec], requested: Mapping[str, Any] | None
) -> dict[str, str]:
    """Positive class of every binary label: the one requested, else the obvious one.

    Raises:
        NervusInputError: a requested label that is not a binary label of this model, a class
            that is not one of the label's classes, or a binary label whose classes are not an
            obvious pair and for which no positive class was given.
    """
    requested = dict(requested or {})
    by_name = {spec.name: spec for spec in labels}
    for name in requested:
        spec = by_name.get(name)
        if spec is None or spec.task != "classification":
            raise NervusInputError(
                f"evaluation.positive_class names {name!r}, which is not a classification label "
                f"of this model (labels: {[s.name for s in labels]})."
            )
        if len(spec.classes or []) != 2:
            raise NervusInputError(
                f"evaluation.positive_class.{name}: {name!r} has {len(spec.classes or [])} "
                f"classes {spec.classes}; only binary labels have a positive class."
            )
    positives: dict[str, str] = {}
    for spec in labels:
        classes = list(spec.classes or [])
        if len(classes) != 2:
            continue
        if spec.name in requested:
            match = _match_class(requested[spec.name], classes)
            if match is None:
                raise NervusInputError(
                    f"evaluation.positive_class.{spec.name}={requested[spec.name]!r} is not a "
                    f"class of {spec.name!r}; its classes are {classes}."
                )
            positives[spec.name] = match
            continue
        obvious = obvious_positive_class(classes)
        if obvious is None:
            raise NervusInputError(
                f"binary label {spec.name!r} has classes {classes}, which are not an obvious "
                "negative/positive pair (0/1, false/true, no/yes, negative/positive). Say which "
                "class is positive, e.g. "
                f"evaluation.positive_class={{{spec.name}:{classes[-1]}}} on the command line "
                f"(or evaluation={{'positive_class': {{'{spec.name}': '{classes[-1]}'}}}} for "
                "NervusModule): sensitivity, PPV and the threshold refer to it."
            )
        positives[spec.name] = obvious
    return positives


def check_threshold_options(method: Any, target_sensitivity: Any) -> None:
    check_choice("evaluation.threshold", method, THRESHOLD_METHODS)
    check_number(
        "evaluation.target_sensitivity", target_sensitivity, low=0.0, high=1.0, low_open=True
    )


def probabilities(values: np.ndarray) -> np.ndarray:
    """Softmax outputs as float64 rows that sum to 1 (float32 softmax sums to 1 only to ~1e-7).

    The same values are written to ``predictions.csv`` and used to choose thresholds, so that a
    case exactly at the threshold is classified identically everywhere.
    """
    values = np.asarray(values, dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)


class ClassificationTask(Task):
    """Single-label, binary or multi-class targets; several labels = several heads.

    Args:
        labels: the schema's labels.
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        evaluation: the evaluation contract: ``threshold`` (``youden`` or ``sensitivity``),
            ``target_sensitivity`` and ``positive_class`` (label -> class, see the module
            docstring). Other evaluation settings (bootstrap...) are accepted and ignored here.
    """

    kind = "classification"
    summary_title = "class balance"
    resampling_note = "classification labels resample within each true class"
    val_selects = "the checkpoint and the operating threshold"
    export_prefix = "prob"
    export_meaning = "softmax probability of each class, in the order of 'classes'"

    def export_output(self, j: int) -> dict[str, Any]:
        return {**super().export_output(j), "classes": list(self.labels[j].classes or [])}

    @classmethod
    def evaluate(cls, predictions: pd.DataFrame, label: Mapping[str, Any], ctx: EvalContext):
        return evaluate_classification(predictions, label, ctx)

    @classmethod
    def figures(cls, section: LabelSection, ctx: EvalContext) -> None:
        classification_figures(section, ctx)

    primary_metric = "auroc"
    post_training_splits = ("val",)

    def __init__(
        self,
        labels: list[LabelSpec],
        label_smoothing: float = 0.0,
        evaluation: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(labels, evaluation=evaluation)
        self.label_smoothing = float(
            check_number("task.label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
        )
        evaluation = dict(evaluation or {})
        self.threshold_method = evaluation.get("threshold") or "youden"
        self.target_sensitivity = evaluation.get("target_sensitivity")
        if self.target_sensitivity is None:
            self.target_sensitivity = 0.9
        check_threshold_options(self.threshold_method, self.target_sensitivity)
        self.target_sensitivity = float(self.target_sensitivity)
        self.positive_classes = resolve_positive_classes(labels, evaluation.get("positive_class"))
        # Binary operating thresholds chosen on the validation split after training, so that
        # predict on an external set applies the same threshold without the validation rows.
        self.thresholds: list[float | None] = [None] * len(labels)

    @classmethod
    def label_spec(
        cls, df: pd.DataFrame, path: Path, column: str, train_rows: pd.Index
    ) -> LabelSpec:
        """Classes: the sorted values of the training split (numerically when all numbers)."""
        classes = sort_classes(df.loc[train_rows, column].tolist())
        check_class_count(df, path, column, train_rows, classes)
        if len(classes) < 2:
            raise NervusInputError(
                f"{path}: label '{column}' has only one class ({classes[0]!r}) in the training "
                "split; a classifier needs at least two. Check the split or drop this label."
            )
        known = df[column].isna() | df[column].isin(classes)
        if not known.all():
            unseen = sorted(df.loc[~known, column].unique())
            raise NervusInputError(
                f"{path}: label '{column}' has class(es) {unseen} at "
                f"{csv_lines(df.index[~known])} that never occur in the training split (classes: "
                f"{classes}). Add training cases of that class or fix the values."
            )
        return LabelSpec(name=column, task=cls.kind, classes=classes)

    @classmethod
    def check_prediction_labels(cls, df: pd.DataFrame, path: Path, spec: LabelSpec) -> None:
        known = df[spec.name].isna() | df[spec.name].isin(spec.classes or [])
        if not known.all():
            raise NervusInputError(
                f"{path}: label '{spec.name}' has class(es) "
                f"{sorted(df.loc[~known, spec.name].unique())} at {csv_lines(df.index[~known])} "
                f"unknown to the model (classes: {spec.classes})."
            )

    @classmethod
    def encode_targets(cls, df: pd.DataFrame, spec: LabelSpec) -> np.ndarray:
        """Class indices; ``UNKNOWN`` (-1) where the label is missing or absent."""
        if spec.name not in df.columns:
            return np.full(len(df), UNKNOWN, dtype=np.int64)
        lookup = {c: i for i, c in enumerate(spec.classes or [])}
        return np.array([lookup.get(v, UNKNOWN) for v in df[spec.name]], dtype=np.int64)

    @classmethod
    def output_dim(cls, spec: LabelSpec) -> int:
        return len(spec.classes or [])

    @classmethod
    def score_columns(cls, label: Mapping[str, Any]) -> list[str]:
        return [f"prob_{label['name']}_{c}" for c in label.get("classes") or []]

    def contract(self, j: int) -> dict[str, Any]:
        """The evaluation contract of binary label ``j`` (empty for other labels)."""
        spec = self.labels[j]
        if spec.name not in self.positive_classes:
            return {}
        return {
            "positive_class": self.positive_classes[spec.name],
            "threshold_method": self.threshold_method,
            "target_sensitivity": self.target_sensitivity,
            "threshold": self.thresholds[j],
        }

    def fit_after_training(
        self,
        outputs: dict[str, list[np.ndarray]],
        frames: dict[str, pd.DataFrame],
    ) -> None:
        for j, spec in enumerate(self.labels):
            if spec.name not in self.positive_classes or spec.name not in frames["val"].columns:
                continue
            positive = self.positive_classes[spec.name]
            y = frames["val"][spec.name].to_numpy(object)
            known = pd.notna(y)
            y_pos = y[known] == positive
            if y_pos.all() or not y_pos.any():
                continue
            score = probabilities(outputs["val"][j])[known, spec.classes.index(positive)]
            self.thresholds[j] = float(
                choose_threshold(y_pos, score, self.threshold_method, self.target_sensitivity)
            )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{j}.threshold": torch.tensor(threshold, dtype=torch.float64)
            for j, threshold in enumerate(self.thresholds)
            if threshold is not None
        }

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for j in range(len(self.labels)):
            if f"{j}.threshold" in state:
                self.thresholds[j] = float(state[f"{j}.threshold"].reshape(-1)[0])

    def export_label(self, j: int) -> dict[str, Any]:
        return self.contract(j)

    def loss(self, output: torch.Tensor, batch: dict[str, Any], j: int) -> torch.Tensor:
        target = batch["target"][:, j].long()
        # The mean over known targets, as reduction="mean" takes it, but without a Python test
        # on a device tensor (that would wait for the GPU at every step); a batch with no known
        # target gives 0 with a zero gradient.
        total = F.cross_entropy(
            output.float(),
            target,
            ignore_index=UNKNOWN,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return total / (target != UNKNOWN).sum().clamp(min=1)

    def transform_output(self, output: torch.Tensor, j: int) -> torch.Tensor:
        return torch.softmax(output.float(), dim=1)

    def combine(self, outputs: list[torch.Tensor], j: int) -> torch.Tensor:
        # The log of the members' mean probabilities: logits whose softmax is that mean.
        return mean_probability_logits([o.float() for o in outputs])

    def make_metrics(self, j: int) -> MetricCollection:
        k = len(self.labels[j].classes)
        # Binary AUROC equals the macro one-vs-rest AUROC of two classes, so one metric serves both.
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(k, average="micro", ignore_index=UNKNOWN),
                "auroc": MulticlassAUROC(k, average="macro", ignore_index=UNKNOWN),
            }
        )

    def update_metrics(self, metrics, output, batch, j) -> None:
        # On probabilities, as users read them (not on logits).
        probs = self.transform_output(output.detach(), j)
        metrics.update(probs, batch["target"][:, j].long())

    def prediction_columns(self, values: np.ndarray, j: int) -> dict[str, Any]:
        spec = self.labels[j]
        values = probabilities(values)
        classes = np.asarray(spec.classes, dtype=object)
        predicted = values.argmax(axis=1)
        if self.thresholds[j] is not None:
            # The operating point of the contract, as in sensitivity/specificity.
            positive = spec.classes.index(self.positive_classes[spec.name])
            predicted = np.where(values[:, positive] >= self.thresholds[j], positive, 1 - positive)
        cols: dict[str, Any] = {f"pred_{spec.name}": classes[predicted]}
        for c, name in enumerate(spec.classes):
            cols[f"prob_{spec.name}_{name}"] = values[:, c]
        return cols


# --------------------------------------------------------------------------------------------
# Evaluation: metrics with CIs, notes and figures of one classification label


_THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


def _binary_threshold(
    y: pd.Series,
    score: np.ndarray,
    split: pd.Series,
    positive: str,
    method: str,
    target: float,
    section: LabelSection,
    stored: float | None = None,
    overrides: list[str] | None = None,
) -> tuple[float | None, str | None]:
    """The operating threshold of a binary label and the split it was chosen on.

    The model's contract comes first: the threshold chosen on the training run's ``val`` split
    (stored in the checkpoint and ``schema.json``) is applied unchanged, whether or not these
    predictions hold ``val`` rows. When the user overrides the contract (another method, target
    sensitivity or positive class), the threshold is re-chosen on ``val`` of these predictions,
    and it is an error if there is none. Without a stored threshold (the training ``val`` split
    lacked a class), it is chosen on ``val``, else on ``train`` (flagged optimistic), else the
    arg-max class is used -- each said in the notes.
    """
    how = method if method == "youden" else f"sensitivity >= {target:g}"
    if overrides:
        section.notes.append(
            "Evaluation contract overridden: " + "; ".join(overrides) + ". The threshold is "
            "re-chosen on 'val' of these predictions instead of the stored one."
        )
    elif stored is not None:
        section.notes.append(
            f"Threshold {stored:.4g} chosen on the training run's 'val' split ({how}) and "
            "applied unchanged to every split."
        )
        return float(stored), "val"
    candidates = ("val",) if overrides else ("val", "train")
    for candidate in candidates:
        use = (split == candidate).to_numpy()
        y_pos = (y[use] == positive).to_numpy()
        if y_pos.any() and not y_pos.all():
            threshold = choose_threshold(y_pos, score[use], method, target)
            if candidate == "train":
                section.notes.append(
                    f"No 'val' split with both classes: the threshold ({how}) was chosen on "
                    "'train', so threshold-based metrics on 'train' are optimistic."
                )
            else:
                section.notes.append(
                    f"Threshold {threshold:.4g} chosen on 'val' ({how}) and "
                    "applied unchanged to the other splits."
                )
            return threshold, candidate
    if overrides:
        raise NervusInputError(
            f"label {section.name!r}: " + "; ".join(overrides) + " needs a new threshold, but "
            "these predictions have no 'val' rows with both classes to choose it on. Drop the "
            "override to use the threshold stored with the model, or add validation rows "
            "(split=val) to the CSV."
        )
    section.notes.append(
        "No threshold stored with the model and neither 'val' nor 'train' has both classes: "
        "threshold-based metrics use the arg-max class."
    )
    warnings.warn(
        f"label {section.name!r}: no operating threshold available; using the arg-max class",
        RuntimeWarning,
        stacklevel=2,
    )
    return None, None


def _threshold_note(fitted_on: str | None, overrides: list[str]) -> str:
    note = f"chosen on '{fitted_on}'" if fitted_on else "arg-max (none chosen)"
    if overrides:
        note += "; contract overridden at evaluation: " + "; ".join(overrides)
    return note


def _contract(label: Mapping, ctx: EvalContext, classes: list[str]) -> tuple[str, str, float, list]:
    """Positive class, threshold method and target sensitivity of a binary label: the stored
    contract of ``schema.json`` unless the evaluation settings override it (listed)."""
    name = label["name"]
    stored_positive = label.get("positive_class")
    positive = ctx.positive_class.get(name)
    if positive is not None:
        positive = str(positive)
    positive = positive or stored_positive or obvious_positive_class(classes)
    if positive is None:
        raise NervusInputError(
            f"binary label {name!r} has classes {classes} and its schema.json names no positive "
            f"class: pass evaluation.positive_class={{{name}:<class>}}."
        )
    if positive not in classes:
        raise NervusInputError(
            f"evaluation.positive_class.{name}={positive!r} is not one of its classes {classes}."
        )
    stored_method = label.get("threshold_method")
    method = ctx.threshold_method or stored_method or "youden"
    stored_target = label.get("target_sensitivity")
    target = ctx.target_sensitivity
    if target is None:
        target = stored_target if stored_target is not None else 0.9
    overrides = []
    if stored_positive is not None and positive != stored_positive:
        overrides.append(f"positive class {positive!r} instead of the stored {stored_positive!r}")
    if stored_method is not None and method != stored_method:
        overrides.append(f"threshold method {method!r} instead of the stored {stored_method!r}")
    elif method == "sensitivity" and stored_target is not None and target != stored_target:
        overrides.append(f"target sensitivity {target:g} instead of the stored {stored_target:g}")
    return positive, method, float(target), overrides


def evaluate_classification(df: pd.DataFrame, label: Mapping, ctx: EvalContext) -> LabelSection:
    """Metrics with CIs and figures of one classification label."""
    name = label["name"]
    classes = [str(c) for c in label["classes"]]
    section = LabelSection(name, "classification")
    prob_columns = [f"prob_{name}_{c}" for c in classes]
    y_all = df[name].map(class_name_of)
    known = ~is_missing_label(y_all.to_numpy())
    unknown = sorted(set(y_all[known].astype(str)) - set(classes))
    if unknown:
        raise ValueError(
            f"column {name!r} has values {unknown} that are not among the schema's "
            f"classes {classes}; check schema.json against predictions.csv"
        )
    df = df[known].assign(**{name: y_all[known].astype(str)})
    if (~known).any():
        section.notes.append(
            f"{int((~known).sum())} case(s) without a true {name!r} are left out of its metrics."
        )
    prob = df[prob_columns].to_numpy(dtype=float)
    binary = len(classes) == 2
    positive, threshold, fitted_on, overrides = None, None, None, []
    if binary:
        positive, method, target, overrides = _contract(label, ctx, classes)
        if overrides:
            log.warning("label %r: %s", name, "; ".join(overrides))
        score = prob[:, classes.index(positive)]
        threshold, fitted_on = _binary_threshold(
            df[name],
            score,
            df["split"],
            positive,
            method,
            target,
            section,
            stored=label.get("threshold"),
            overrides=overrides,
        )
        section.notes.append(f"Positive class: {positive!r}.")

    def extra_note(split: str) -> Callable[[str], str | None]:
        def note(metric: str) -> str | None:
            if binary and split == fitted_on and metric in _THRESHOLD_METRICS:
                return "threshold chosen on this split (optimistic)"
            return None

        return note

    summary: dict[str, dict[str, str]] = {}
    for split, group, rows in iter_subsets(df, ctx):
        if rows.empty:
            continue
        y = rows[name].to_numpy(dtype=object)
        p = prob[df.index.get_indexer(rows.index)]
        point = classification_metrics(y, p, classes, positive_class=positive, threshold=threshold)
        if binary:
            point = _with_counts(point, y == positive, p, classes.index(positive), threshold)
        intervals: dict[str, BootstrapCI | Interval] = {}
        if ctx.n_bootstrap > 0:
            y_idx = np.array([classes.index(v) for v in y])
            pos_index = classes.index(positive) if binary else None
            distributions = weighted_bootstrap_distributions(
                partial(
                    weighted_classification_metrics,
                    classes=classes,
                    positive_index=pos_index,
                    threshold=threshold,
                ),
                y_idx,
                p,
                n_resamples=ctx.n_bootstrap,
                seed=ctx.seed,
                strata=y_idx,
            )
            intervals = bootstrap_intervals(distributions, ctx.ci)
        intervals.update(
            closed_form_intervals(y, p, classes, positive, threshold, ctx.ci, ctx.proportion_ci)
        )
        add_metric_rows(section, split, group, point, intervals, extra_note(split))
        if binary:
            section.add(
                split,
                group,
                "threshold",
                threshold,
                note=_threshold_note(fitted_on, overrides),
            )
        if group == ALL_GROUPS:
            counts = pd.Series(y).value_counts()
            summary[split] = {
                c: f"{counts.get(c, 0)} ({counts.get(c, 0) / len(y):.1%})" for c in classes
            }
        section.subsets.append(Subset(split, group, {"y": y, "prob": p}))
    section.summary = pd.DataFrame(summary).T.rename_axis("split").reset_index()
    section.info.update(classes=classes, positive=positive, threshold=threshold)
    return section


#: Rows of the 2 x 2 table at the operating threshold, shown beside ``n`` (binary labels).
COUNT_METRICS = ("prevalence", "tp", "fp", "fn", "tn")


def _predicted_positive(prob: np.ndarray, pos: int, threshold: float | None) -> np.ndarray:
    """The operating point of :func:`classification_metrics`: ``p_pos >= threshold``, else the
    arg-max class."""
    if threshold is None:
        return np.argmax(prob, axis=1) == pos
    return prob[:, pos] >= threshold


def _with_counts(
    point: MetricValues, y_pos: np.ndarray, prob: np.ndarray, pos: int, threshold: float | None
) -> MetricValues:
    """``point`` with the prevalence and the 2 x 2 counts at the operating threshold right after
    ``n`` (so that Table 1 shows them beside it)."""
    tp, fp, tn, fn = binary_confusion(y_pos, _predicted_positive(prob, pos, threshold))
    out = MetricValues()
    for name, value in point.items():
        out.set(name, value, point.reasons.get(name))
        if name == "n":
            n = tp + fp + tn + fn
            out.set("prevalence", (tp + fn) / n if n else None, None if n else "no cases")
            for count_name, count in zip(("tp", "fp", "fn", "tn"), (tp, fp, fn, tn), strict=True):
                out.set(count_name, float(count))
    return out


def closed_form_intervals(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    positive: str | None,
    threshold: float | None,
    ci: float,
    proportion_ci: str = "wilson",
) -> dict[str, Interval]:
    """Score intervals (:mod:`nervus_lightning.evaluation.intervals`) of the metrics that have
    one: the proportions at the operating point (sensitivity, specificity, PPV, NPV, accuracy;
    multi-class: accuracy of the arg-max class) and the (one-vs-rest) AUROC of each class. The
    macro AUROC, AP, Brier, ECE and F1 keep their bootstrap intervals."""
    y = np.asarray(y, dtype=object)
    out: dict[str, Interval] = {}
    if y.shape[0] == 0:
        return out

    def proportion(name: str, k: int, n: int) -> None:
        out[name] = proportion_interval(k, n, ci, proportion_ci)

    if positive is not None:
        pos = classes.index(positive)
        y_pos = y == positive
        tp, fp, tn, fn = binary_confusion(y_pos, _predicted_positive(prob, pos, threshold))
        proportion("sensitivity", tp, tp + fn)
        proportion("specificity", tn, tn + fp)
        proportion("ppv", tp, tp + fp)
        proportion("npv", tn, tn + fn)
        proportion("accuracy", tp + tn, tp + fp + tn + fn)
        out["auroc"] = auroc_interval(
            roc_auc_score(y_pos, prob[:, pos]) if 0 < y_pos.sum() < y.shape[0] else 0.5,
            int(y_pos.sum()),
            int((~y_pos).sum()),
            ci,
        )
        return out
    arg = np.asarray(classes, dtype=object)[np.argmax(prob, axis=1)]
    proportion("accuracy", int(np.sum(arg == y)), y.shape[0])
    for j, c in enumerate(classes):
        member = y == c
        if 0 < member.sum() < y.shape[0]:
            out[f"auroc[{c}]"] = auroc_interval(
                roc_auc_score(member, prob[:, j]), int(member.sum()), int((~member).sum()), ci
            )
    return out


def _both_classes(y: np.ndarray, classes: list[str], positive: str | None) -> bool:
    present = set(y)
    return positive in present and len(present) > 1 if positive else len(present) > 1


def classification_figures(section: LabelSection, ctx: EvalContext) -> None:
    """ROC and precision-recall curves with the splits overlaid (multi-class: one one-vs-rest
    panel per class), ROC by group on the main split, reliability diagram; confusion matrices
    per split for multi-class labels."""
    name, info = section.name, section.info
    classes, positive, threshold = info["classes"], info["positive"], info["threshold"]
    splits = figure_splits(section, ctx)
    styles = split_styles(splits)
    series = {
        s: (x.arrays["y"], x.arrays["prob"]) for s in splits if (x := find_subset(section, s))
    }
    ci_text = f"{ctx.ci:.0%} bootstrap CI" if ctx.n_bootstrap > 0 else "no CI"
    auc_ci_text = f"{ctx.ci:.0%} Newcombe score CI"
    val_text = " val (dashed) is the development split." if "val" in series else ""
    targets = [positive] if positive else classes
    auc_key = (lambda c: "auroc") if positive else (lambda c: f"auroc[{c}]")
    curves = {s: v for s, v in series.items() if _both_classes(v[0], classes, positive)}
    if curves:
        where = ", ".join(curves)
        if positive:
            what = (
                f"ROC curve of {name} ({positive!r} positive) on {where}, AUC with {auc_ci_text}."
                + (
                    f" Dots: the operating point at threshold {threshold:.3g}."
                    if threshold is not None
                    else ""
                )
            )
        else:
            what = (
                f"One-vs-rest ROC curves of {name}, one panel per class, splits overlaid "
                f"({where}); per-class AUC with {auc_ci_text}."
            )
        add_figure(
            section,
            ctx,
            "roc",
            what + val_text,
            plots.plot_roc(
                curves,
                classes,
                positive_class=positive,
                intervals={
                    s: {c: interval_of(section, s, ALL_GROUPS, auc_key(c)) for c in targets}
                    for s in curves
                },
                ci=ctx.ci,
                threshold=threshold,
                styles=styles,
                title=f"{name}: ROC",
            ),
        )
        pr_intervals = (
            {s: {positive: interval_of(section, s, ALL_GROUPS, "ap")} for s in curves}
            if positive
            else {}
        )
        add_figure(
            section,
            ctx,
            "pr",
            (
                f"Precision-recall curve of {name} ({positive!r} positive)"
                if positive
                else f"One-vs-rest precision-recall curves of {name}, one panel per class"
            )
            + f", splits overlaid ({where}); average precision"
            + (f" with {ci_text}" if positive else "")
            + "; dotted: the split's prevalence (a model without skill)."
            + val_text,
            plots.plot_precision_recall(
                curves,
                classes,
                positive_class=positive,
                intervals=pr_intervals,
                ci=ctx.ci,
                styles=styles,
                title=f"{name}: precision-recall",
            ),
        )
    main = main_split(splits)
    by_group = {
        g: v
        for g, v in group_series(section, main, ("y", "prob")).items()
        if _both_classes(v[0], classes, positive)
    }
    if len(by_group) > 1:
        add_figure(
            section,
            ctx,
            "roc_by_group",
            f"ROC curves of {name} on {main} by {ctx.group_column}"
            + (" (one-vs-rest, one panel per class)" if not positive else "")
            + f", AUC with {auc_ci_text}.",
            plots.plot_roc(
                by_group,
                classes,
                positive_class=positive,
                intervals={
                    g: {c: interval_of(section, main, g, auc_key(c)) for c in targets}
                    for g in by_group
                },
                ci=ctx.ci,
                threshold=threshold,
                title=f"{name}: ROC on {main} by {ctx.group_column}",
            ),
        )
    if series:
        what = (
            f"probability of {positive!r}"
            if positive
            else "top-class probability against its accuracy (as the ECE)"
        )
        add_figure(
            section,
            ctx,
            "reliability",
            f"Reliability diagram of {name} ({what}), splits overlaid: the cases of a split "
            f"sorted by predicted probability and cut into min(10, n / "
            f"{plots.RELIABILITY_MIN_CASES}) bins of equal size (at least "
            f"{plots.RELIABILITY_MIN_CASES} cases each where the split has that many); each "
            f"point is a bin's mean predicted probability against its observed share, with its "
            f"{ctx.ci:.0%} Wilson score interval; points are joined only where every bin holds "
            f"{plots.RELIABILITY_MIN_LINE_CASES} cases or more. Lower panel: the predicted "
            "probabilities (10 equal-width bins, as the ECE uses)." + val_text,
            plots.plot_reliability(
                series,
                classes,
                positive_class=positive,
                styles=styles,
                title=f"{name}: calibration",
                ci=ctx.ci,
            ),
        )
        if positive is None:
            # Binary labels: the headline table's sensitivity, specificity, PPV and NPV already
            # say what the 2 x 2 matrix would; multi-class labels need the matrix to show which
            # classes are confused.
            add_figure(
                section,
                ctx,
                "confusion",
                f"Confusion matrices of {name} per split (arg-max class): counts and share of "
                "the true class.",
                plots.plot_confusion_matrices(
                    {
                        s: (y, np.asarray(classes, dtype=object)[np.argmax(p, axis=1)])
                        for s, (y, p) in series.items()
                    },
                    classes,
                    title=f"{name}: confusion matrix (arg-max class)",
                ),
            )
