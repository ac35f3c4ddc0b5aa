r"""Competing risks with DeepHit: one endpoint whose event column codes the cause.

This module owns what a competing-risk endpoint changes with respect to a single-event DeepHit
endpoint (:mod:`nervus_lightning.survival.discrete`): the coding of the label, the head's
meaning, pycox's competing-risk loss, the cause-specific cumulative incidence functions (CIFs),
the per-cause risk scores and the cause-specific concordance. The loss is pycox's
(``DeepHitLoss`` = ``nll_pmf_cr`` + ``rank_loss_deephit_cr``); nothing of it is re-implemented
(``tests/test_survival_competing.py`` compares it with pycox on the same batch).

Label
    ``label_<name>`` holds 0 (censored) or the cause 1..K of the first event, K >= 2 (found on
    the training split; every cause must have a training event). Selected by the values
    themselves: a 0/1 column stays a single-event endpoint.
Time grid
    As a single-event model's, from the times of *any* event of the training split. pycox's
    transform moves an event to the next cut; a time beyond the last cut is censored there
    (cause 0), as pycox's competing-risk example does.
Head
    ``K * m`` outputs :math:`\phi_{c,k}` (cause-major). One softmax over all ``K * m`` of them
    and a fixed 0 (the mass of "no event within the grid"), pycox's ``DeepHit``:
    :math:`f_{c,k} = P(\text{cause } c \text{ in interval } k)`. The cumulative incidence of
    cause ``c`` at the k-th cut is :math:`F_c(\tau_k) = \sum_{l \le k} f_{c,l}` (pycox's
    ``predict_cif``) and the event-free survival is :math:`S(\tau_k) = 1 - \sum_c F_c(\tau_k)`
    (pycox's ``predict_surv``). Each :math:`F_c` is non-decreasing in [0, 1], and
    :math:`\sum_c F_c + S = 1` at every time. Between the cuts the curves are linear (constant
    density), after the last cut constant, as single-event curves.
Start
    The head starts as the training Aalen-Johansen cumulative incidences on the grid
    (:func:`start_logits`: the bias of its output layer, its weights zero), the maximum of
    the competing-risk likelihood without inputs, as a single-event head starts as the
    Kaplan-Meier curve. From outputs of zero (every one of the ``K * m + 1`` cells equally
    likely) a small study's training stopped early with each cause's incidence still pulled
    towards the others': on ``cgvhd`` (60 training patients, 52 cause-1 failures;
    ``benchmarks/competing.py``, five splits) the mean predicted cause-1 incidence at the
    middle evaluation time was 0.52 of the Aalen-Johansen estimate on those same patients.
Loss weight
    Unless ``task.alpha`` is set, a competing-risk head is trained on the likelihood alone
    (:data:`COMPETING_ALPHA`; a single-event DeepHit keeps the paper's 0.2, for ``pmf`` is its
    likelihood alone). With DeepHit's rank loss at 0.8 of the loss the cumulative incidences
    were pulled off the observed ones for a Wolbers C no better: on 1,000 simulated patients
    with two causes (``benchmarks/competing.py``, five splits, both with this start) the
    validation IPA of the two causes was 0.108 and 0.082 at ``alpha = 0.2`` against 0.200 and
    0.153 at 1, their Wolbers C 0.734 / 0.762 against 0.731 / 0.757.
Risk scores
    ``risk_<name>`` is the single-event score of the event-free curve, ``1 - RMST(tau)/tau``
    (any cause = the event). ``risk_<name>_<c>`` is the restricted mean time lost to cause
    ``c`` (Andersen 2013) as a fraction of the grid, :math:`\frac1\tau\int_0^\tau F_c(t)\,dt`:
    in [0, 1], higher = more likely to fail from cause ``c`` and sooner, and the cause risks sum
    to ``risk_<name>`` (the restricted mean time lost splits by cause).
Cause-specific concordance
    Wolbers et al.'s C-index for competing risks (Epidemiology 2009; 20: 555-561), without
    censoring weights: a subject failing from cause ``c`` at :math:`T_i` is comparable with
    every subject still event-free after :math:`T_i` *and with every subject who failed from
    another cause*, at any time (that subject will never fail from ``c``); concordant when the
    cause-``c`` failure has the higher ``risk_<name>_<c>``. Computed as Harrell's C (scikit-
    survival's definitions) after moving other-cause failures, censored, beyond the last time.
    Censoring the other causes instead would score a cause-specific hazard, not the CIF the
    model predicts, so it is not reported.
Observed cumulative incidence
    The Aalen-Johansen estimate of each cause's CIF (scikit-survival's
    ``cumulative_incidence_competing_risks``) on the evaluated cases, against the mean of their
    predicted CIFs (calibration in the large: both estimate the population's CIF under
    independent censoring). 1 - Kaplan-Meier with the other causes censored would overstate
    the incidence, so it is never drawn.
Censoring-weighted cause-specific statistics
    ``c_index_uno_cause<c>``: Wolbers' C with Uno's censoring weights, truncated at Uno's
    ``tau`` (:func:`nervus_lightning.survival.ipcw.cause_uno_concordance`);
    ``ibs_cause<c>``: the integrated inverse-probability-of-censoring-weighted Brier score of
    cause ``c``'s predicted CIF (:func:`nervus_lightning.survival.ipcw.cause_brier_scores`,
    :func:`nervus_lightning.survival.metrics.cause_ibs`), on the times of ``ibs``;
    ``td_auc_cause<c>_t<time>``: cause ``c``'s cumulative/dynamic AUC at each evaluation time,
    marker the predicted CIF there, other-cause failures among the controls
    (:func:`nervus_lightning.survival.ipcw.cause_dynamic_auc`,
    :func:`nervus_lightning.survival.metrics.cause_td_auc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from nervus_lightning.survival.baseline import as_numpy
from nervus_lightning.survival.concordance import concordance_counts, weighted_concordance
from nervus_lightning.survival.discrete import (
    COMPETING_ALPHA,
    HAZARD_FLOOR,
    deephit_alpha,
    discretize,
    interpolate_survival,
    risk_score,
)
from nervus_lightning.survival.ipcw import aalen_johansen

__all__ = [
    "COMPETING_ALPHA",
    "aalen_johansen",
    "cause_concordance",
    "cause_risks",
    "cif_column",
    "cif_grid_column",
    "competing_loss",
    "discretize_causes",
    "grid_cif",
    "model_cif",
    "split_cif",
    "start_logits",
    "survival_from_cif",
    "wolbers_data",
]


def discretize_causes(cuts: np.ndarray, time: Any, cause: Any) -> tuple[np.ndarray, np.ndarray]:
    """Interval index and cause (0 = censored) of each case on ``cuts``.

    pycox's ``LabTransDiscreteTime`` on "any event", then the cause back where the transform
    kept an event (a time beyond the grid becomes censored at its last cut).
    """
    cause = as_numpy(cause).astype(np.int64)
    idx, is_event = discretize(cuts, time, (cause != 0).astype(np.float64))
    return idx, np.where(is_event != 0, cause, 0).astype(np.int64)


def start_logits(cuts: np.ndarray, time: Any, cause: Any, causes: int) -> np.ndarray:
    r"""Head outputs ``(causes * m,)`` (cause-major) whose cumulative incidences
    (:func:`grid_cif`) are the Aalen-Johansen estimates of ``time`` and ``cause`` discretised
    on ``cuts`` (module docstring, "Start").

    With :func:`discretize_causes`' interval index :math:`j_i` and cause :math:`c_i`, cause
    ``c``'s hazard in interval ``k`` is :math:`h_{c,k} = d_{c,k} / n_k`, its failures among the
    :math:`n_k = \#\{j_i \ge k\}` cases still followed; :math:`S_k = \prod_{l \le k}(1 -
    \sum_c h_{c,l})` and :math:`f_{c,k} = S_{k-1} h_{c,k}`: the maximum of pycox's
    ``nll_pmf_cr`` without inputs. The logits are :math:`\phi_{c,k} = \log f_{c,k} - \log
    S_{m-1}` (the mass left beyond the grid is the fixed zero logit). Each hazard is at least
    :data:`~nervus_lightning.survival.discrete.HAZARD_FLOOR` and their sum at most one minus
    it, so every logit is finite. Only grid-level counts enter: no time of a patient.
    """
    cuts = np.asarray(cuts, dtype=np.float64)
    idx, codes = discretize_causes(cuts, time, cause)
    m = cuts.shape[0]
    at_risk = np.bincount(idx, minlength=m)[::-1].cumsum()[::-1].astype(np.float64)
    hazard = np.empty((causes, m))
    for c in range(1, causes + 1):
        failures = np.bincount(idx, weights=(codes == c).astype(np.float64), minlength=m)
        hazard[c - 1] = np.divide(failures, at_risk, out=np.zeros(m), where=at_risk > 0)
    hazard = np.maximum(hazard, HAZARD_FLOOR)
    total = hazard.sum(axis=0)
    hazard *= np.minimum(1.0, (1.0 - HAZARD_FLOOR) / total)  # all causes: below 1
    log_surv = np.cumsum(np.log1p(-hazard.sum(axis=0)))
    before = np.r_[0.0, log_surv[:-1]]
    return (before + np.log(hazard) - log_surv[-1]).reshape(-1)


def competing_loss(
    phi: Tensor,
    causes: int,
    cuts: np.ndarray,
    time: Tensor,
    cause: Tensor,
    alpha: float | None = None,
    sigma: float = 0.1,
) -> Tensor:
    """pycox's competing-risk DeepHit loss (``DeepHitLoss``) of one batch, likelihood weight
    ``alpha`` (:data:`COMPETING_ALPHA` when None; at 1, its likelihood ``nll_pmf_cr`` alone,
    without building the n x n pair matrix of a rank loss weighted 0).

    ``phi`` is ``(n, causes * m)`` (cause-major); ``time`` and ``cause`` the observed times and
    cause codes of cases with both known, discretised on ``cuts`` on the CPU.
    """
    from pycox.models.data import pair_rank_mat
    from pycox.models.loss import DeepHitLoss, nll_pmf_cr

    idx, codes = discretize_causes(
        cuts, time.detach().cpu().numpy(), cause.detach().cpu().numpy().round()
    )
    shaped = phi.view(phi.shape[0], causes, -1)
    idx_t = torch.from_numpy(idx).to(phi.device)
    codes_t = torch.from_numpy(codes).to(phi.device)
    weight = deephit_alpha(alpha, causes)
    if weight == 1:
        return nll_pmf_cr(shaped, idx_t, codes_t)
    rank_mat = torch.from_numpy(pair_rank_mat(idx, codes)).to(phi.device, phi.dtype)
    return DeepHitLoss(weight, sigma)(shaped, idx_t, codes_t, rank_mat)


def grid_cif(phi: Tensor, causes: int) -> Tensor:
    """Cumulative incidence of each cause at the cut points, ``(n, causes * m)`` cause-major."""
    phi = phi.float()
    padded = torch.cat([phi, torch.zeros_like(phi[:, :1])], dim=1)
    pmf = torch.softmax(padded, dim=1)[:, :-1].reshape(phi.shape[0], causes, -1)
    return pmf.cumsum(dim=2).clamp(0.0, 1.0).reshape(phi.shape[0], -1)


def split_cif(values: np.ndarray, causes: int) -> np.ndarray:
    """The head's flattened CIFs as ``(n, causes, m)``."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(values.shape[0], causes, -1)


def survival_from_cif(cif: np.ndarray) -> np.ndarray:
    """Event-free survival ``1 - sum_c F_c`` of ``(n, causes, m)`` CIFs, ``(n, m)``."""
    return np.clip(1.0 - cif.sum(axis=1), 0.0, 1.0)


def cause_risks(cif: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Restricted mean time lost to each cause over the grid, as a fraction of it, ``(n, K)``."""
    return np.stack([risk_score(1.0 - cif[:, c], cuts) for c in range(cif.shape[1])], axis=1)


def cif_column(name: str, cause: int, time_text: str) -> str:
    """Column of ``predictions.csv`` with the CIF of ``cause`` at an evaluation time."""
    return f"cif_{name}_{cause}_t{time_text}"


def cif_grid_column(name: str, cause: int, k: int) -> str:
    """Column of ``predictions.csv`` with the CIF of ``cause`` at the ``k``-th cut."""
    return f"cif_{name}_{cause}_grid{k}"


def wolbers_data(time: Any, cause: Any, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(event, time)`` whose Harrell's C is Wolbers' C of cause ``c`` (module docstring):
    cause-``c`` failures are the events, other-cause failures censored after every time."""
    time = as_numpy(time)
    cause = as_numpy(cause)
    beyond = 2.0 * np.abs(time).max() + 1.0 if time.shape[0] else 1.0
    other = (cause != 0) & (cause != c)
    return cause == c, np.where(other, beyond, time)


def cause_concordance(time: Any, cause: Any, risk: Any, c: int) -> float | None:
    """Wolbers' C of cause ``c`` for the risk scores ``risk`` (None: no comparable pair)."""
    event, moved = wolbers_data(time, cause, c)
    if event.shape[0] < 2 or not event.any():
        return None
    counts = concordance_counts(event, moved, as_numpy(risk))
    if not counts.scored.any():
        return None
    value = weighted_concordance(counts)
    return None if np.isnan(value) else value


def model_cif(rows: pd.DataFrame, label: Mapping[str, Any], times: Any) -> np.ndarray | None:
    """A competing label's predicted CIFs at ``times``, ``(len(rows), K, len(times))``, read from
    the ``cif_<label>_<cause>_grid<k>`` columns and interpolated as the curves of
    ``predictions.csv``; None when the label has no causes or the columns are missing."""
    causes, grid = int(label.get("causes") or 0), label.get("grid")
    if not causes or not grid:
        return None
    cuts = np.asarray(grid, dtype=np.float64)
    columns = [
        [cif_grid_column(label["name"], c, k) for k in range(len(cuts))]
        for c in range(1, causes + 1)
    ]
    if not {x for cause in columns for x in cause} <= set(rows.columns):
        return None
    return np.stack(
        [
            interpolate_survival(rows[cause].to_numpy(dtype=np.float64), cuts, times)
            for cause in columns
        ],
        axis=1,
    )
