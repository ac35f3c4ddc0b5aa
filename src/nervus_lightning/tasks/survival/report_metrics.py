"""The survival section's metrics beyond those of
:func:`~nervus_lightning.survival.metrics.survival_metrics`, keyed as ``metrics.csv`` names
them: each competing cause's concordance (Wolbers), IPCW concordance, td-AUCs and integrated
Brier score, the null model's IBS with the index of prediction accuracy, and each cause's
observed and predicted cumulative incidence at the calibration time. A missing value's reason
goes to ``reasons`` when a dict is given.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from nervus_lightning.survival import competing
from nervus_lightning.survival.metrics import (
    cause_ibs,
    cause_td_auc,
    cause_uno_c,
    format_time,
    null_ibs,
    prediction_accuracy,
)
from nervus_lightning.survival.reference import SurvivalReference


def cause_metrics(
    time: np.ndarray,
    cause: np.ndarray,
    cause_risk: np.ndarray,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Wolbers' C of each competing cause (``cause_risk`` ``(n, K)``; ``{}`` for K = 0)."""
    out: dict[str, float | None] = {}
    for c in range(1, cause_risk.shape[1] + 1):
        key = f"c_index_cause{c}"
        out[key] = competing.cause_concordance(time, cause, cause_risk[:, c - 1], c)
        if out[key] is None and reasons is not None:
            reasons[key] = f"no cause-{c} event with a comparable pair"
    return out


def cause_ipcw_metrics(
    reference: SurvivalReference,
    time: np.ndarray,
    cause: np.ndarray,
    cause_risk: np.ndarray,
    auc_cif: np.ndarray | None,
    ibs_cif: np.ndarray | None,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Each competing cause's censoring-weighted concordance of its risk (``cause_risk``
    ``(n, K)``), cumulative/dynamic AUC at the evaluation times and integrated Brier score,
    from the predicted CIFs (``(n, K, times)``) at ``reference.eval_times`` (``auc_cif``) and
    on its IBS grid (``ibs_cif``); None where the CIF columns are missing."""
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    missing = "no cif_<label>_<cause>_grid<k> columns in the predictions"
    for c in range(1, cause_risk.shape[1] + 1):
        key = f"c_index_uno_cause{c}"
        out[key], text = cause_uno_c(reference, time, cause, cause_risk[:, c - 1], c)
        if text is not None:
            why[key] = text
        if auc_cif is None:
            keys = [f"td_auc_cause{c}_t{format_time(t)}" for t in reference.eval_times]
            out.update(dict.fromkeys(keys))
            why.update(dict.fromkeys(keys, missing))
        else:
            values, reason = cause_td_auc(reference, time, cause, auc_cif[:, c - 1], c)
            out.update(values)
            why.update(reason)
        key = f"ibs_cause{c}"
        if ibs_cif is None:
            out[key], why[key] = None, missing
        else:
            out[key], text = cause_ibs(reference, time, cause, ibs_cif[:, c - 1], c)
            if text is not None:
                why[key] = text
    if reasons is not None:
        reasons.update(why)
    return out


def accuracy_metrics(
    reference: SurvivalReference,
    time: np.ndarray,
    event: np.ndarray,
    scores: Mapping[str, float | None],
    causes: int,
    reasons: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """``ibs_null`` (the integrated Brier score of the training split's covariate-free
    prediction on the same rows and grid as ``ibs``) and the index of prediction accuracy
    ``ipa`` = 1 - ``ibs`` / ``ibs_null``, and ``ipa_cause<c>`` from ``ibs_cause<c>`` and the
    training Aalen-Johansen incidence; ``scores`` holds the model's ``ibs`` values."""
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    out["ibs_null"], text = null_ibs(reference, time, event)
    keys = [("ibs", "ibs_null", "ipa")]
    if text is not None:
        why["ibs_null"] = text
    for c in range(1, causes + 1):
        out[f"ibs_null_cause{c}"], text = null_ibs(reference, time, event, c)
        if text is not None:
            why[f"ibs_null_cause{c}"] = text
        keys.append((f"ibs_cause{c}", f"ibs_null_cause{c}", f"ipa_cause{c}"))
    for model, null, key in keys:
        out[key] = prediction_accuracy(scores.get(model), out[null])
        if out[key] is None:
            why[key] = f"needs {model} and {null}"
    if reasons is not None:
        reasons.update(why)
    return out


def cif_calibration(
    rows: pd.DataFrame,
    label: Mapping,
    time: np.ndarray,
    cause: np.ndarray,
    t: float,
    reasons: dict[str, str],
) -> dict[str, float | None]:
    """Each cause's observed (Aalen-Johansen) and mean predicted cumulative incidence at ``t``."""
    causes = int(label["causes"])
    predicted = competing.model_cif(rows, label, [t])
    observed = competing.aalen_johansen(time, cause, [t], causes)[:, 0]
    out: dict[str, float | None] = {}
    for c in range(1, causes + 1):
        key = f"cif_observed_cause{c}"
        out[key] = float(observed[c - 1])
        if t > time.max():
            out[key] = None
            reasons[key] = f"t = {t:g} is beyond the evaluated follow-up ({time.max():g})"
        key = f"cif_predicted_cause{c}"
        out[key] = None if predicted is None else float(predicted[:, c - 1, 0].mean())
        if predicted is None:
            reasons[key] = "no cif_<label>_<cause>_grid<k> columns in the predictions"
    return out
