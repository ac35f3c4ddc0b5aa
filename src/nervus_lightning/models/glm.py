"""The penalised linear starts of classification and regression heads: multinomial logistic
and linear regression, ridge or elastic net, their penalty chosen on held-out rows by the path
of :mod:`nervus_lightning.models.penalty` (the Cox start is
:mod:`nervus_lightning.survival.linear`). Each fit equals scikit-learn's at the same penalty
(tested)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from nervus_lightning.models.penalty import (
    HELD_OUT_CV_AND_VAL,
    HELD_OUT_VAL,
    Fit,
    PenaltyChoice,
    choose_ridge_or_elastic_net,
    elastic_net_path,
)
from nervus_lightning.models.solvers import minimise_lbfgs, minimise_proximal

__all__ = [
    "ENET_TOLERANCE",
    "MIN_VAL_PER_CLASS",
    "choose_linear_classifier",
    "choose_linear_regression",
    "classifier_held_out",
    "fit_logistic",
    "fit_regression",
    "fit_ridge",
]

#: The proximal solver of the classification and regression starts stops once no weight moves
#: by more than this in a step: on 10-class digits 2.4x faster than 1e-8 with weights 2e-5
#: apart; two strongly correlated inputs (diabetes' s1, s2) settle within 5e-4 of scikit-learn's
#: fit at the same objective to 1e-6. Ample for where training starts.
ENET_TOLERANCE = 1e-6


def _intercept_free(weight: Tensor) -> Tensor:
    """1 for every weight, 0 for the intercepts (the last column): what a penalty touches."""
    mask = torch.ones_like(weight)
    mask[:, -1] = 0.0
    return mask


def _minimise_penalised(
    weight: Tensor, data_loss: Callable[[Tensor], Tensor], penalty: float, l1_ratio: float
) -> Tensor:
    """Minimise ``data_loss(w) + penalty * elastic_net(w without its intercepts)``: L-BFGS for
    ridge (``l1_ratio`` 0), proximal gradient for the elastic net."""

    def smooth(w: Tensor) -> Tensor:
        return data_loss(w) + 0.5 * penalty * (1.0 - l1_ratio) * w[:, :-1].square().sum()

    if not l1_ratio:
        return minimise_lbfgs(weight, smooth)
    mask = _intercept_free(weight)
    return minimise_proximal(
        weight, smooth, penalty * l1_ratio, tolerance=ENET_TOLERANCE, l1_mask=mask
    )


def fit_logistic(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    penalty: float,
    start: Tensor | None = None,
    multinomial: bool = False,
    l1_ratio: float = 0.0,
) -> Tensor:
    """Penalised logistic (``n_classes`` = 2: one logit) or multinomial regression.

    ``x``: ``(n, p)`` float64 standardised inputs; ``y``: ``(n,)`` class indices. Returns the
    ``(k, p + 1)`` weights, the intercept last (not penalised); ``k`` = 1 for two classes
    unless ``multinomial`` (one logit per class, as a softmax head has).
    Objective: mean cross-entropy + ``penalty * (l1_ratio ||w||_1 + (1 - l1_ratio) / 2 ||w||^2)``
    (ridge when ``l1_ratio`` is 0; scikit-learn's ``C`` is ``1 / (penalty * n)``).
    """
    k = 1 if n_classes == 2 and not multinomial else n_classes
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    weight = torch.zeros(k, design.shape[1], dtype=x.dtype) if start is None else start

    def data_loss(w: Tensor) -> Tensor:
        logits = design @ w.T
        if k == 1:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.to(x.dtype))
        return torch.nn.functional.cross_entropy(logits, y.long())

    return _minimise_penalised(weight, data_loss, penalty, l1_ratio)


def fit_regression(
    x: Tensor, y: Tensor, penalty: float, start: Tensor | None = None, l1_ratio: float = 0.0
) -> Tensor:
    """Penalised linear regression of ``y`` on ``x``: ``(1, p + 1)``, the intercept last.

    Objective: mean squared error + ``penalty * (l1_ratio ||w||_1 + (1 - l1_ratio) / 2
    ||w||^2)``: :func:`fit_ridge` (closed form) when ``l1_ratio`` is 0, else the elastic net by
    proximal gradient (scikit-learn's ``ElasticNet(alpha=penalty / 2, l1_ratio=l1_ratio)``).
    """
    if not l1_ratio:
        return fit_ridge(x, y, penalty)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    if start is None:
        start = torch.zeros(1, design.shape[1], dtype=x.dtype)
        start[0, -1] = y.mean()

    def data_loss(w: Tensor) -> Tensor:
        return (design @ w[0] - y).square().mean()

    return _minimise_penalised(start, data_loss, penalty, l1_ratio)


def _gradient_at_intercepts(data_loss: Callable[[Tensor], Tensor], weight: Tensor) -> Tensor:
    """The gradient of ``data_loss`` with respect to every weight but the intercepts, at
    ``weight`` (zeros with fitted intercepts): where the elastic-net path starts."""
    weight = weight.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(data_loss(weight), weight)
    return grad[:, :-1]


def fit_ridge(x: Tensor, y: Tensor, penalty: float, start: Tensor | None = None) -> Tensor:
    """Ridge regression of ``y`` (standardised) on ``x``: ``(1, p + 1)``, the intercept last.

    Objective: mean squared error + ``penalty / 2 * ||w||^2`` (the regression loss in its own
    scale, so that the penalty is the weight decay that keeps it; closed form).
    """
    del start  # closed form: nothing to warm-start
    n, p = x.shape
    mean_x, mean_y = x.mean(0), y.mean()
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ xc / n + 0.5 * penalty * torch.eye(p, dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc / n)
    return torch.cat([w, (mean_y - mean_x @ w)[None]])[None, :]


#: Validation cases of every class needed to choose a classifier's penalty on them.
MIN_VAL_PER_CLASS = 10


def classifier_held_out(val_classes: np.ndarray, n_classes: int) -> str:
    """The :func:`held_out_splits` design of a classification start whose validation rows hold
    the class indices ``val_classes``: :data:`HELD_OUT_VAL` when each of the ``n_classes``
    classes has :data:`MIN_VAL_PER_CLASS` cases there, else :data:`HELD_OUT_CV_AND_VAL`."""
    counts = np.bincount(np.asarray(val_classes, dtype=np.int64), minlength=n_classes)
    enough = len(val_classes) > 0 and counts.min() >= MIN_VAL_PER_CLASS
    return HELD_OUT_VAL if enough else HELD_OUT_CV_AND_VAL


def choose_linear_classifier(
    inputs: Tensor,
    classes: np.ndarray,
    n_classes: int,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int = 0,
    held_out: str | None = None,
) -> PenaltyChoice:
    """Penalised multinomial logistic start of a classification head (one logit per class, as
    the head has), ridge or elastic net (:func:`choose_ridge_or_elastic_net`), its penalty
    chosen by the held-out cross-entropy: on the validation rows when every class has
    :data:`MIN_VAL_PER_CLASS` cases there, else on the folds of train and the validation rows
    together (:data:`HELD_OUT_CV_AND_VAL`, the Cox start's rule for few validation events: the
    few cases of a rare class in val are evidence too; on a simulated 7.5 % finding with 9
    validation positives, over 20 splits, the start alone gained 0.004 test AUROC and 0.003 log
    loss against the folds alone, the whole run 0.002 and 0.003: ``benchmarks/README.md``).
    ``held_out`` imposes another :func:`held_out_splits` design: for benchmarks. Pooling
    the folds of train with the validation rows when val is large enough, as the regression
    start does, moved the test AUROC of five classification sets by less than its spread over 10
    splits, and their log loss both ways (``benchmarks/start_held_out.py``). ``classes``: class
    indices of every row of ``inputs``.
    Returns weights ``(n_classes, n_inputs + 1)``, the intercept last."""
    x = inputs.detach().to(torch.float64).cpu()
    y = torch.as_tensor(classes, dtype=torch.long)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    def make_fit(l1_ratio: float) -> Fit:
        def fit(rows: np.ndarray, penalty: float, start: Tensor | None) -> Tensor:
            rows_t = torch.as_tensor(rows)
            return fit_logistic(
                x[rows_t], y[rows_t], n_classes, penalty, start, True, l1_ratio=l1_ratio
            )

        return fit

    def held_out_loss(weight: Tensor, fit_rows: np.ndarray, held_rows: np.ndarray) -> float:
        rows_t = torch.as_tensor(held_rows)
        with torch.no_grad():
            logits = design[rows_t] @ weight.T
            return float(torch.nn.functional.cross_entropy(logits, y[rows_t], reduction="sum"))

    enet_path = None
    if x.shape[1] >= 2:
        train_t = torch.as_tensor(np.asarray(train_rows))
        counts = torch.bincount(y[train_t], minlength=n_classes).to(x.dtype)
        at_zero = torch.zeros(n_classes, design.shape[1], dtype=x.dtype)
        at_zero[:, -1] = torch.log((counts + 0.5) / (counts.sum() + 0.5 * n_classes))

        def train_loss(w: Tensor) -> Tensor:
            return torch.nn.functional.cross_entropy(design[train_t] @ w.T, y[train_t])

        enet_path = elastic_net_path(_gradient_at_intercepts(train_loss, at_zero))
    if held_out is None:
        held_out = classifier_held_out(classes[val_rows], n_classes)
    return choose_ridge_or_elastic_net(
        make_fit, held_out_loss, train_rows, val_rows, held_out, enet_path, seed
    )


def choose_linear_regression(
    inputs: Tensor,
    target: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int = 0,
    held_out: str = HELD_OUT_CV_AND_VAL,
) -> PenaltyChoice:
    """Penalised linear start of a regression head on the standardised ``target``, ridge or
    elastic net (:func:`choose_ridge_or_elastic_net`), its penalty chosen by the held-out
    squared error summed over the validation rows and the :data:`INNER_FOLDS` folds of the
    training rows (:data:`HELD_OUT_CV_AND_VAL`): with 30 validation rows and 100 inputs the
    validation rows alone chose the elastic net's penalty badly (test R2 0.21 against 0.28 over
    10 splits of a simulation; ``benchmarks/start_held_out.py``), and the folds add every
    training row to what is held out (``held_out``: another design, for benchmarks). Returns
    weights ``(1, n_inputs + 1)``, the intercept last."""
    x = inputs.detach().to(torch.float64).cpu()
    y = torch.as_tensor(target, dtype=torch.float64)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    def make_fit(l1_ratio: float) -> Fit:
        def fit(rows: np.ndarray, penalty: float, start: Tensor | None) -> Tensor:
            rows_t = torch.as_tensor(rows)
            return fit_regression(x[rows_t], y[rows_t], penalty, start, l1_ratio)

        return fit

    def held_out_loss(weight: Tensor, fit_rows: np.ndarray, held_rows: np.ndarray) -> float:
        rows_t = torch.as_tensor(held_rows)
        return float((design[rows_t] @ weight[0] - y[rows_t]).square().sum())

    enet_path = None
    if x.shape[1] >= 2:
        train_t = torch.as_tensor(np.asarray(train_rows))
        at_zero = torch.zeros(1, design.shape[1], dtype=x.dtype)
        at_zero[0, -1] = y[train_t].mean()

        def train_loss(w: Tensor) -> Tensor:
            return (design[train_t] @ w[0] - y[train_t]).square().mean()

        enet_path = elastic_net_path(_gradient_at_intercepts(train_loss, at_zero))
    return choose_ridge_or_elastic_net(
        make_fit, held_out_loss, train_rows, val_rows, held_out, enet_path, seed
    )
