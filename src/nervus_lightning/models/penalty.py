r"""Penalised linear models whose penalty is chosen on held-out rows: the start of a linear term.

A head with a linear term (``model.tabular.linear``; :mod:`nervus_lightning.models.net`) starts
as a fitted linear model of the standardised inputs: a penalised Cox model for a Cox survival
head (:mod:`nervus_lightning.survival.linear`), a penalised multinomial logistic model for a
classification head, a penalised linear regression for a regression head
(:mod:`nervus_lightning.models.glm`); this module is the path they share. Two kinds of penalty
compete on the same held-out rows (:func:`choose_ridge_or_elastic_net`): ridge, and the elastic
net with lasso share :data:`L1_RATIO`, which sets the weights of useless inputs exactly to zero
(where few of many inputs matter it wins; where all matter a little, ridge does). The
penalty :math:`\lambda` of

.. math:: \hat w_\lambda = \arg\min_w\; \ell(w) + \tfrac{\lambda}{2} \lVert w \rVert^2,

with :math:`\ell` the task's training loss in its own scale (per event for Cox, per case
otherwise), is chosen the way glmnet and a careful statistician choose it: on a path of
:data:`PATH_SIZE` values from strong (every weight near zero) to nearly none, each fitted on the
training rows (warm-started from the previous one), the one with the best held-out loss wins.
Held out (:func:`held_out_splits`) are, for the Cox and classification starts, the validation
rows when they are enough, otherwise the folds of a :data:`INNER_FOLDS`-fold split of the
training rows with the few validation rows beside them (for the Cox start the folds drawn
several times and the losses summed, so that one draw does not decide: ``repeats``); for the
regression start both always, every row of train and val held out once. No test row is ever
seen.

The same :math:`\lambda` then stays on the linear term during training, added to the training
loss (:func:`nervus_lightning.models.linear_start.linear_penalty`; for a Cox start scaled on the
held-out rows its ridge part is centred there, :func:`linear_penalty_center`): the training
loss's stationary point for that term is the start, so the term does not drift to the
unpenalised fit that, with more inputs than events, does not exist (the training C-index goes
to 1 while the validation loss explodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import optimize
from torch import Tensor

from nervus_lightning.models.solvers import (
    largest_useful_penalty,
)

__all__ = [
    "ENET_MIN_RATIO",
    "HELD_OUT_CV",
    "HELD_OUT_CV_AND_VAL",
    "HELD_OUT_VAL",
    "INNER_FOLDS",
    "L1_RATIO",
    "choose_ridge_or_elastic_net",
    "elastic_net_path",
    "PATH_SIZE",
    "PenaltyChoice",
    "choose_penalty",
    "describe_choice",
    "held_out_scale",
    "held_out_splits",
    "inputs_in_use",
    "linear_penalty_center",
    "penalty_path",
]

#: Penalties tried, log-spaced from :data:`PATH_HIGH` down to :data:`PATH_LOW`.
PATH_SIZE = 20
#: The strongest penalty of the path (per case or per event, standardised inputs): every weight
#: is then within a few percent of zero.
PATH_HIGH = 100.0
#: The weakest: close to no penalty at all.
PATH_LOW = 1e-4
#: The path stops once this many weaker penalties in a row were all worse than the best.
PATIENCE = 3
#: Folds of the training rows, held out in turn (:func:`held_out_splits`).
INNER_FOLDS = 5
#: Where held-out losses come from (:func:`held_out_splits`): the validation rows; the folds of
#: the training rows; both.
HELD_OUT_VAL, HELD_OUT_CV, HELD_OUT_CV_AND_VAL = "val", "cv", "cv+val"
HELD_OUT_DESIGNS = (HELD_OUT_VAL, HELD_OUT_CV, HELD_OUT_CV_AND_VAL)
#: The lasso share of the elastic-net candidate (glmnet's ``alpha``; scikit-survival's Coxnet
#: and scikit-learn's ``l1_ratio``).
L1_RATIO = 0.5
#: The elastic-net path runs from the penalty that zeroes every weight down to this fraction of
#: it (glmnet's ``lambda.min.ratio`` for fewer cases than inputs).
ENET_MIN_RATIO = 0.01


@dataclass(frozen=True)
class PenaltyChoice:
    """What :func:`choose_penalty` chose, for the run folder and the report."""

    penalty: float
    weight: Tensor = field(repr=False)
    #: ``"val"``, ``"5-fold cross-validation of train"`` or both (:func:`held_out_splits`).
    chosen_on: str
    #: Every penalty tried and its held-out loss (lower is better).
    path: tuple[tuple[float, float], ...] = field(repr=False)
    #: The lasso share of the penalty (0: ridge; :func:`elastic_net_term`).
    l1_ratio: float = 0.0
    #: The best held-out loss of each kind of penalty compared (``{"ridge": ..., ...}``).
    compared: tuple[tuple[str, float], ...] = ()
    #: The factor the fit's linear predictor was multiplied by, chosen on the held-out rows
    #: with the penalty (:func:`held_out_scale`; 1 when the scale was not profiled).
    scale: float = 1.0
    #: Where the ridge part of the penalty is centred during training (None: at zero;
    #: :func:`linear_penalty_center`), so that a scaled start stays where the penalised training
    #: loss is stationary.
    center: Tensor | None = field(default=None, repr=False)

    def describe(self) -> str:
        return describe_choice(self.summary())

    def summary(self) -> dict[str, object]:
        """A JSON-able record: the chosen penalty, where it was chosen, the values tried (the
        strongest and weakest) and the path's held-out losses."""
        return {
            "penalty": self.penalty,
            "chosen_on": self.chosen_on,
            "tried": len(self.path),
            "strongest": self.path[0][0],
            "weakest": self.path[-1][0],
            "path": [[p, None if not math.isfinite(s) else s] for p, s in self.path],
            "l1_ratio": self.l1_ratio,
            "compared": {k: None if not math.isfinite(v) else v for k, v in self.compared},
            "scale": self.scale,
            "center": None if self.center is None else self.center.tolist(),
        }

    def best_loss(self) -> float:
        """The chosen penalty's held-out loss."""
        return min((loss for _, loss in self.path), default=math.inf)


def describe_choice(summary: dict[str, object]) -> str:
    """``"penalty 0.3 chosen on val from 12 values (100 down to 0.03)"`` of a
    :meth:`PenaltyChoice.summary`."""
    l1_ratio = float(summary.get("l1_ratio", 0.0) or 0.0)
    kind = f"elastic net (lasso share {l1_ratio:g}) " if l1_ratio else ""
    compared = summary.get("compared") or {}
    against = ""
    if len(compared) > 1:
        others = (name for name in compared if (name == "ridge") != (not l1_ratio))
        against = f"; compared with {', '.join(others)} on the same rows"
    scale = float(summary.get("scale", 1.0) or 0.0)
    scaled = f", its linear predictor scaled by {scale:.3g} there" if scale != 1.0 else ""
    used, inputs = summary.get("inputs_used"), summary.get("inputs")
    kept = ""
    if used == 0 and inputs:
        kept = ", every input's weight 0 (no linear effect predicted those rows better than none)"
    elif used is not None and inputs and used < inputs:
        kept = f", {used} of {inputs} inputs with a non-zero weight"
    return (
        f"{kind}penalty {summary['penalty']:.3g} chosen on {summary['chosen_on']} from "
        f"{summary['tried']} values ({summary['strongest']:.3g} down to {summary['weakest']:.3g})"
        f"{scaled}{kept}{against}"
    )


def inputs_in_use(weight: Tensor, inputs: int) -> dict[str, int]:
    """``{"inputs": inputs, "inputs_used": u}``: how many of the ``inputs`` input columns have a
    non-zero weight in a start's ``weight`` (``(k, inputs)``, or ``(k, inputs + 1)`` with the
    intercept last), for :func:`describe_choice` and the run diagnostics (a start whose every
    weight is 0 predicts the same for every case)."""
    used = (weight[:, :inputs] != 0).any(dim=0).sum()
    return {"inputs": int(inputs), "inputs_used": int(used)}


def penalty_path(n: int = PATH_SIZE, high: float = PATH_HIGH, low: float = PATH_LOW) -> list[float]:
    """``n`` penalties log-spaced from ``high`` down to ``low`` (strong first, for warm starts)."""
    return [float(v) for v in np.geomspace(high, low, n)]


#: ``fit(rows, penalty, start) -> weight``: the penalised fit on ``rows`` (indices).
Fit = Callable[[np.ndarray, float, Tensor | None], Tensor]
#: ``loss(weight, fit_rows, held_out_rows) -> float``: the held-out loss (lower is better).
HeldOutLoss = Callable[[Tensor, np.ndarray, np.ndarray], float]


def held_out_splits(
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    held_out: str,
    seed: int = 0,
    repeats: int = 1,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The ``(fit rows, held-out rows)`` pairs of ``held_out`` (:data:`HELD_OUT_VAL`,
    :data:`HELD_OUT_CV` or :data:`HELD_OUT_CV_AND_VAL`) and how a report says it: the
    validation rows fitted on ``train_rows``; or the :data:`INNER_FOLDS` folds of
    ``train_rows`` in turn, each fitted on the others (a split seeded by ``seed``); or both,
    so that every training row and every validation row is held out once.

    ``repeats`` > 1 (the designs with folds): that many fold draws from the one generator (the
    first is the draw of ``repeats`` = 1), and the validation pair listed as many times, so
    that every row is held out ``repeats`` times and val keeps its share of the sum
    (:func:`choose_penalty` fits a pair listed twice once and counts its loss twice)."""
    if held_out not in HELD_OUT_DESIGNS:
        raise ValueError(f"held_out {held_out!r} is not one of {HELD_OUT_DESIGNS}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    if held_out != HELD_OUT_VAL:
        draws = np.random.default_rng(seed)
        for _ in range(repeats):
            folds = np.array_split(draws.permutation(train_rows), INNER_FOLDS)
            splits += [
                (np.concatenate([f for k, f in enumerate(folds) if k != i]), fold)
                for i, fold in enumerate(folds)
            ]
    if held_out != HELD_OUT_CV and len(val_rows):
        times = repeats if held_out == HELD_OUT_CV_AND_VAL else 1
        splits += [(train_rows, val_rows)] * times
    cv = f"{INNER_FOLDS}-fold cross-validation of train"
    if repeats > 1 and held_out != HELD_OUT_VAL:
        cv += f" ({repeats} fold draws)"
    both = f"val and {cv}" if len(val_rows) else cv
    return splits, {HELD_OUT_VAL: "val", HELD_OUT_CV: cv, HELD_OUT_CV_AND_VAL: both}[held_out]


#: The profiled scale is searched between these factors (:func:`held_out_scale`), and 0.
SCALE_RANGE = (1e-2, 1e3)
#: ... to within this much of its logarithm (0.1 %: about 15 held-out losses per penalty).
SCALE_TOLERANCE = 1e-3


def held_out_scale(loss_at: Callable[[float], float]) -> tuple[float, float]:
    """The factor ``s`` >= 0 of a linear predictor with the lowest held-out loss ``loss_at(s)``,
    and that loss: a bounded search over ``log s`` in :data:`SCALE_RANGE`, never worse than
    ``s`` = 1 (the fit as it is) or 0 (no input used)."""
    low, high = (math.log(v) for v in SCALE_RANGE)
    found = optimize.minimize_scalar(
        lambda u: loss_at(math.exp(u)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": SCALE_TOLERANCE},
    )
    candidates = [(loss_at(1.0), 1.0), (loss_at(0.0), 0.0)]
    if math.isfinite(found.fun):
        candidates.append((float(found.fun), math.exp(float(found.x))))
    loss, scale = min(candidates)
    return scale, loss


def linear_penalty_center(
    weight: Tensor, data_gradient: Tensor, penalty: float, l1_ratio: float
) -> Tensor | None:
    r"""The centre :math:`c` of the ridge part of the training penalty :math:`\lambda (a \lVert w
    \rVert_1 + \tfrac{1-a}{2} \lVert w - c \rVert^2)` at which ``weight`` (the start) is a
    stationary point of the training loss plus penalty, given the data loss's gradient
    ``data_gradient`` there: :math:`c = w + (\nabla\ell(w) + \lambda a\,\mathrm{sign}(w)) /
    (\lambda (1 - a))` where :math:`w \ne 0`, 0 where the elastic net set it to zero. At the
    penalised fit itself (scale 1) :math:`c` is 0, the plain penalty; a start scaled on held-out
    rows (:func:`held_out_scale`) would otherwise be pulled back to the shrunken fit while the
    network trains. None without a ridge part or a penalty."""
    ridge = penalty * (1.0 - l1_ratio)
    if not ridge > 0:
        return None
    lasso = penalty * l1_ratio * torch.sign(weight)
    return torch.where(weight != 0, weight + (data_gradient + lasso) / ridge, 0.0)


def choose_penalty(
    fit: Fit,
    held_out_loss: HeldOutLoss,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    held_out: str,
    penalties: Sequence[float] | None = None,
    seed: int = 0,
    l1_ratio: float = 0.0,
    profile_scale: bool = False,
    repeats: int = 1,
) -> PenaltyChoice:
    """The penalty of ``penalties`` (default :func:`penalty_path`) with the lowest held-out loss,
    the sum over the splits of :func:`held_out_splits` (``held_out``, ``repeats`` fold draws; a
    split listed more than once is fitted once and its loss counted as often as it is listed).
    Ties go to the stronger penalty (the simpler model). The returned weight is the fit on all
    of ``train_rows`` with the chosen penalty; ``l1_ratio`` (what ``fit`` does) is recorded.

    ``profile_scale`` (weights without an intercept: a Cox model's): each penalty is scored by
    its held-out loss at the best factor of its fits' linear predictors (:func:`held_out_scale`,
    one factor for all splits), so that the path is compared on the direction of its fits (the
    ranking of the held-out rows) and not on how far the penalty shrank them; the returned
    weight is the chosen fit times its factor.
    """
    penalties = list(penalties or penalty_path())
    listed, where = held_out_splits(train_rows, val_rows, held_out, seed, repeats)
    counts: dict[tuple[bytes, bytes], int] = {}
    distinct: dict[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray]] = {}
    for fit_rows, held_rows in listed:
        key = (np.asarray(fit_rows).tobytes(), np.asarray(held_rows).tobytes())
        counts[key] = counts.get(key, 0) + 1
        distinct.setdefault(key, (fit_rows, held_rows))
    splits, times = list(distinct.values()), list(counts.values())
    starts: list[Tensor | None] = [None] * len(splits)
    losses: list[float] = []
    scales: list[float] = []
    for penalty in penalties:
        for k, (fit_rows, _) in enumerate(splits):
            starts[k] = fit(fit_rows, penalty, starts[k])

        def loss_at(scale: float, fits: list[Tensor | None] = starts) -> float:
            return sum(
                n * held_out_loss(scale * w, fit_rows, held_rows)
                for w, n, (fit_rows, held_rows) in zip(fits, times, splits, strict=True)
            )

        scale, total = held_out_scale(loss_at) if profile_scale else (1.0, loss_at(1.0))
        losses.append(total if math.isfinite(total) else math.inf)
        scales.append(scale)
        # Weaker penalties only overfit more once the held-out loss has risen PATIENCE times
        # in a row past its minimum (glmnet stops its path early the same way).
        if len(losses) > PATIENCE and min(losses) < min(losses[-PATIENCE:]):
            break
    best = int(np.argmin(losses))  # the first minimum: the strongest penalty among ties
    weight = fit(train_rows, penalties[best], None)
    return PenaltyChoice(
        penalty=penalties[best],
        weight=scales[best] * weight,
        chosen_on=where,
        path=tuple((p, float(s)) for p, s in zip(penalties, losses, strict=False)),
        l1_ratio=l1_ratio,
        scale=scales[best],
    )


def elastic_net_path(grad_at_zero: Tensor, l1_ratio: float = L1_RATIO) -> list[float]:
    """:data:`PATH_SIZE` penalties from the one that zeroes every weight of the elastic net
    (``grad_at_zero``: the unpenalised loss's gradient at zero weights, intercepts fitted;
    :func:`largest_useful_penalty`) down to :data:`ENET_MIN_RATIO` of it. Empty when that
    gradient is zero (inputs that say nothing: every penalty gives the all-zero fit)."""
    strongest = largest_useful_penalty(grad_at_zero, l1_ratio)
    if not strongest > 0 or not math.isfinite(strongest):
        return []
    return [float(v) for v in np.geomspace(strongest, strongest * ENET_MIN_RATIO, PATH_SIZE)]


def choose_ridge_or_elastic_net(
    make_fit: Callable[[float], Fit],
    held_out_loss: HeldOutLoss,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    held_out: str,
    enet_path: Sequence[float] | None,
    seed: int = 0,
    profile_scale: bool = False,
    repeats: int = 1,
) -> PenaltyChoice:
    """Ridge (on :func:`penalty_path`) against the elastic net with lasso share :data:`L1_RATIO`
    (on ``enet_path``), each with its penalty chosen by :func:`choose_penalty` on the same
    held-out rows; the kind with the lower held-out loss at its best penalty is the start (ties
    go to ridge), and ``compared`` records both. ``make_fit(l1_ratio)`` gives the
    ``fit(rows, penalty, start)`` of that kind; ``enet_path`` None or empty (one input, or
    inputs that say nothing: nothing to select) tries ridge alone. ``profile_scale`` and
    ``repeats``: see :func:`choose_penalty`."""
    ridge = choose_penalty(
        make_fit(0.0),
        held_out_loss,
        train_rows,
        val_rows,
        held_out,
        None,
        seed,
        profile_scale=profile_scale,
        repeats=repeats,
    )
    if not enet_path:
        return ridge
    sparse = choose_penalty(
        make_fit(L1_RATIO),
        held_out_loss,
        train_rows,
        val_rows,
        held_out,
        enet_path,
        seed,
        L1_RATIO,
        profile_scale,
        repeats,
    )
    compared = (("ridge", ridge.best_loss()), ("elastic net", sparse.best_loss()))
    best = sparse if sparse.best_loss() < ridge.best_loss() else ridge
    return replace(best, compared=compared)
