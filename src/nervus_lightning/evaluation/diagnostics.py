"""Checks that say when a finished run failed silently, for the log and the top of the report.

A run can exit 0 with a model nobody should use: on 198 patients with 82 inputs and 30 training
events an almost unpenalised Cox start fits the training rows perfectly (C-index 1.000) and the
validation rows worse than predicting the Kaplan-Meier curve for everyone, and nothing said so.
:func:`run_warnings` reads what every run already writes (the metrics table, the learning curve,
the predictions) and returns one sentence per problem found, each naming the label, the numbers
and what to try. Every check uses the validation (or training) rows, never the test rows, so a
warning can be acted on without having looked at the test results.

The checks and their thresholds (chosen to catch failures, not to grade good runs):

- **overfitted**: a training C-index or AUROC of at least :data:`NEAR_PERFECT` with the
  validation one :data:`OVERFIT_GAP` or more below it (regression: training R^2 at least
  :data:`NEAR_PERFECT` and validation R^2 that far below);
- **worse than the reference without inputs** on validation: a survival IPA below 0 (the
  integrated Brier score above the Kaplan-Meier curve's), a binary Brier score above the
  prevalence's (:math:`p(1-p)`), a regression R^2 below 0, each by more than
  :data:`WORSE_MARGIN` (a tie is no failure); with competing causes also each cause's IPA
  (its cumulative incidence against the training Aalen-Johansen one);
- **one class in validation**: a binary label whose validation rows are all positive or all
  negative (no AUROC there, no threshold chosen there; the Brier score check above is then
  skipped, as its reference, :math:`p(1-p)`, is 0);
- **collapsed**: every validation prediction of a label the same value (within
  :data:`COLLAPSE_TOLERANCE`); where the run kept a linear start whose penalty, chosen on
  held-out rows, set every weight to 0, the warning says that this is the cause (the inputs
  showed no effect there), not a training failure;
- **diverged**: the kept checkpoint is from the first two epochs and the validation loss
  afterwards rose by more than :data:`DIVERGENCE_RISE` of the best one (and 0.05) and never came
  back, i.e. training made the network worse from the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["run_warnings"]

#: A training C-index, AUROC or R^2 at least this high counts as a near-perfect fit.
NEAR_PERFECT = 0.98
#: Validation this far below a near-perfect training fit: overfitted.
OVERFIT_GAP = 0.15
#: How far below the reference without inputs (IPA, R^2 below 0; a Brier score above the
#: prevalence's) validation must be to be called worse: a tie to two decimals is no failure.
WORSE_MARGIN = 0.01
#: Relative spread of the validation predictions below which they count as one value.
COLLAPSE_TOLERANCE = 1e-6
#: Relative rise of the validation loss after an early best epoch that counts as divergence.
DIVERGENCE_RISE = 0.5
#: The score column prefixes of predictions.csv, one per task kind's main output.
SCORE_PREFIXES = ("risk_", "prob_", "pred_")


def _value(metrics: pd.DataFrame, split: str, label: str, metric: str) -> float | None:
    if metrics.empty:
        return None
    rows = metrics[
        (metrics["split"] == split)
        & (metrics["group"] == "all")
        & (metrics["label"] == label)
        & (metrics["metric"] == metric)
    ]
    if rows.empty:
        return None
    value = float(rows["value"].iloc[0])
    return value if np.isfinite(value) else None


def _overfit(metrics: pd.DataFrame, label: str) -> str | None:
    for metric, name in (("c_index", "C-index"), ("auroc", "AUROC"), ("r2", "R^2")):
        train = _value(metrics, "train", label, metric)
        val = _value(metrics, "val", label, metric)
        if train is None or val is None:
            continue
        if train >= NEAR_PERFECT and val <= train - OVERFIT_GAP:
            return (
                f"label '{label}': overfitted: training {name} {train:.3f} but validation "
                f"{name} {val:.3f}. The model learnt the training rows, not the disease: use "
                "fewer inputs, a stronger penalty (optimizer.weight_decay), a smaller network "
                "(model.tabular.hidden) or more training cases."
            )
    return None


def _worse_than_reference(metrics: pd.DataFrame, label: str) -> str | None:
    ipa = _value(metrics, "val", label, "ipa")
    if ipa is not None and ipa < -WORSE_MARGIN:
        ibs = _value(metrics, "val", label, "ibs")
        null = _value(metrics, "val", label, "ibs_null")
        numbers = f" (integrated Brier score {ibs:.3f} against {null:.3f})" if ibs and null else ""
        return (
            f"label '{label}': worse than Kaplan-Meier on the validation rows: IPA {ipa:.2f} "
            f"< 0{numbers}; the predicted survival curves are less accurate than giving every "
            "patient the same curve. Do not use these survival probabilities."
        )
    brier = _value(metrics, "val", label, "brier")
    prevalence = _value(metrics, "val", label, "prevalence")
    if brier is not None and prevalence is not None and 0 < prevalence < 1:
        reference = prevalence * (1 - prevalence)
        if brier > reference + WORSE_MARGIN * reference:
            return (
                f"label '{label}': worse than the prevalence on the validation rows: Brier "
                f"score {brier:.3f} above {reference:.3f}, the score of giving every case the "
                f"probability {prevalence:.2f}. Do not use these probabilities."
            )
    r2 = _value(metrics, "val", label, "r2")
    if r2 is not None and r2 < -WORSE_MARGIN:
        return (
            f"label '{label}': worse than one value for everyone on the validation rows: "
            f"R^2 {r2:.3f} < 0."
        )
    return None


def _one_class_in_validation(metrics: pd.DataFrame, label: str) -> str | None:
    """A binary label whose validation rows hold one class: nothing there can be ranked."""
    prevalence = _value(metrics, "val", label, "prevalence")
    if prevalence is None or 0 < prevalence < 1:
        return None
    which = "positive" if prevalence == 1 else "negative"
    return (
        f"label '{label}': the validation rows hold one class only (every case {which}): "
        "they can neither rank cases (no AUROC) nor set the operating threshold "
        "(metrics_notes.csv says where it came from), and a training run chose its checkpoint "
        "by how well it predicts that one class. Move cases of both classes into split=val."
    )


def _cause_worse_than_reference(metrics: pd.DataFrame, label: str) -> str | None:
    """Competing causes: each cause's validation IPA (``ipa_cause<c>``) below 0."""
    rows = metrics[
        (metrics["split"] == "val")
        & (metrics["group"] == "all")
        & (metrics["label"] == label)
        & metrics["metric"].str.fullmatch(r"ipa_cause\d+")
        & (metrics["value"] < -WORSE_MARGIN)
    ]
    if rows.empty:
        return None
    pairs = zip(rows["metric"], rows["value"], strict=True)
    causes = ", ".join(f"cause {m.removeprefix('ipa_cause')} {v:.2f}" for m, v in pairs)
    return (
        f"label '{label}': worse than the Aalen-Johansen incidence on the validation rows (IPA "
        f"{causes}); those causes' predicted cumulative incidences are less accurate than "
        "giving every patient the training one. Do not use them."
    )


def _collapsed(
    predictions: pd.DataFrame, label: str, zero_start: Mapping[str, object] | None = None
) -> str | None:
    if "split" not in predictions.columns:
        return None
    val = predictions[predictions["split"] == "val"]
    columns = [
        c
        for c in val.columns
        if any(c == f"{p}{label}" or c.startswith(f"{p}{label}_") for p in SCORE_PREFIXES)
    ]
    if len(val) < 2 or not columns:
        return None
    scores = val[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    scores = scores[~np.isnan(scores).any(axis=1)]
    if len(scores) < 2:
        return None
    spread = (scores.max(0) - scores.min(0)).max()
    scale = 1.0 + np.abs(scores).max()
    if spread > COLLAPSE_TOLERANCE * scale:
        return None
    if zero_start is not None:
        return (
            f"label '{label}': collapsed: every validation case gets the same prediction "
            f"({scores[0, 0]:.4g}) because no input is used. The run kept the linear start, "
            f"and the penalty chosen on {zero_start.get('chosen_on', 'the held-out rows')} sets "
            "every input's weight to 0: no input's linear effect predicted those rows better "
            "than none, and no epoch of the network beat the start by more than one standard "
            "error. Every case gets the prediction of the training rows without inputs. With "
            "few held-out cases a weak effect goes unseen: more cases, or inputs chosen for the "
            "question, can change that."
        )
    return (
        f"label '{label}': collapsed: every validation case gets the same prediction "
        f"({scores[0, 0]:.4g}); the model ignores its inputs. Check the inputs and the "
        "learning rate (optimizer.lr)."
    )


def _diverged(curve: pd.DataFrame | None, start_kept: bool = False) -> str | None:
    if curve is None or "val_loss" not in curve.columns:
        return None
    losses = pd.to_numeric(curve["val_loss"], errors="coerce").to_numpy(np.float64)
    epochs = curve["epoch"].to_numpy() if "epoch" in curve.columns else np.arange(len(losses))
    known = ~np.isnan(losses)
    losses, epochs = losses[known], epochs[known]
    if len(losses) < 4:
        return None
    best = int(np.argmin(losses))
    if best > 1:
        return None
    after = losses[best + 1 :]
    rise = max(DIVERGENCE_RISE * abs(losses[best]), 0.05)
    if after.min() > losses[best] and after[-1] > losses[best] + rise:
        where = (
            "the linear start, before training, was kept (no epoch's val_loss was lower by "
            "more than one standard error); the "
            f"best epoch, {epochs[best]}, had val_loss {losses[best]:.4g}"
            if start_kept
            else f"the kept checkpoint is from epoch {epochs[best]} (val_loss {losses[best]:.4g})"
        )
        return (
            f"diverged: {where} and the validation loss then rose to {after[-1]:.4g} at the "
            f"last epoch ({epochs[-1]}): training made the network worse from the start. Lower "
            "the learning rate (optimizer.lr) or strengthen the penalty "
            "(optimizer.weight_decay)."
        )
    return None


def run_warnings(
    metrics: pd.DataFrame,
    labels: Sequence[str],
    predictions: pd.DataFrame | None = None,
    learning_curve: pd.DataFrame | None = None,
    linear_start_kept: bool = False,
    linear_starts: Mapping[str, Mapping[str, object]] | None = None,
) -> list[str]:
    """One sentence per silent failure of a finished run (module docstring), in label order.

    ``metrics``: the rows of ``metrics.csv``; ``labels``: the evaluated label names;
    ``predictions``: ``predictions.csv`` (for the collapse check); ``learning_curve``:
    ``learning_curve.csv`` of a training run (for the divergence check);
    ``linear_start_kept``: the run kept the model as it started, before training (said in the
    divergence warning); ``linear_starts``: each label's linear start
    (``model_summary.json``'s ``linear_start``), so that a kept start whose every weight is 0
    is named as the cause of predictions that are all the same.
    """
    found: list[str] = []
    for label in labels:
        checks = (
            _overfit,
            _worse_than_reference,
            _cause_worse_than_reference,
            _one_class_in_validation,
        )
        for check in checks:
            message = check(metrics, label)
            if message:
                found.append(message)
        if predictions is not None:
            start = (linear_starts or {}).get(label) if linear_start_kept else None
            zero_start = start if start is not None and start.get("inputs_used") == 0 else None
            message = _collapsed(predictions, label, zero_start)
            if message:
                found.append(message)
    message = _diverged(learning_curve, linear_start_kept)
    if message:
        found.append(message)
    return found
