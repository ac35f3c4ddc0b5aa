"""The penalised linear starts (:mod:`nervus_lightning.models.penalty`,
:func:`nervus_lightning.survival.linear.choose_linear_cox`): each fit equals scikit-learn's or
scikit-survival's estimate at the same penalty, and the penalty is the held-out loss's minimum
over the path, chosen on validation rows (or folds of train) only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from sksurv.datasets import load_breast_cancer as load_survival_breast_cancer
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

from nervus_lightning.models.penalty import (
    choose_linear_classifier,
    choose_ridge,
    fit_logistic,
    fit_ridge,
    penalty_path,
)
from nervus_lightning.survival.linear import choose_linear_cox, fit_linear_cox
from nervus_lightning.survival.loss import cox_partial_log_likelihood


def _split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: int(0.6 * n)], order[int(0.6 * n) : int(0.8 * n)], order[int(0.8 * n) :]


def _diabetes():
    x, y = load_diabetes(return_X_y=True)
    train, val, _ = _split(len(x))
    x = StandardScaler().fit(x[train]).transform(x)
    return x, (y - y[train].mean()) / y[train].std(), train, val


@pytest.mark.parametrize("penalty", [0.01, 0.3, 5.0])
def test_ridge_fit_equals_scikit_learn(penalty):
    x, y, train, _ = _diabetes()
    # MSE + penalty/2 ||w||^2 is scikit-learn's ||r||^2 + alpha ||w||^2 with alpha = n penalty/2.
    reference = Ridge(alpha=len(train) * penalty / 2).fit(x[train], y[train])
    weight = fit_ridge(torch.tensor(x[train]), torch.tensor(y[train]), penalty)[0].numpy()
    np.testing.assert_allclose(weight[:-1], reference.coef_, atol=1e-8)
    np.testing.assert_allclose(weight[-1], reference.intercept_, atol=1e-8)


def test_ridge_penalty_is_the_validation_minimum_of_the_path():
    x, y, train, val = _diabetes()
    choice = choose_ridge(torch.tensor(x), y, train, val)
    assert choice.chosen_on == "val"
    errors = {
        p: np.square(
            Ridge(alpha=len(train) * p / 2).fit(x[train], y[train]).predict(x[val]) - y[val]
        ).sum()
        for p, _ in choice.path
    }
    assert choice.penalty == min(errors, key=errors.get)
    for p, loss in choice.path:
        assert loss == pytest.approx(errors[p], rel=1e-6)


@pytest.mark.parametrize("penalty", [0.001, 0.1])
def test_logistic_fit_equals_scikit_learn(penalty):
    x, y = load_breast_cancer(return_X_y=True)
    train, _, _ = _split(len(x))
    x = StandardScaler().fit(x[train]).transform(x)
    # mean log loss + penalty/2 ||w||^2 is scikit-learn's with C = 1 / (n penalty).
    reference = LogisticRegression(C=1 / (len(train) * penalty), tol=1e-10, max_iter=10_000)
    reference.fit(x[train], y[train])
    weight = fit_logistic(torch.tensor(x[train]), torch.tensor(y[train]), 2, penalty)[0].numpy()
    np.testing.assert_allclose(weight[:-1], reference.coef_[0], atol=2e-4)
    np.testing.assert_allclose(weight[-1], reference.intercept_[0], atol=2e-4)


def test_multinomial_start_predicts_like_the_binary_fit():
    x, y = load_breast_cancer(return_X_y=True)
    train, val, _ = _split(len(x))
    x = torch.tensor(StandardScaler().fit(x[train]).transform(x))
    choice = choose_linear_classifier(x, y, 2, train, val)
    assert choice.weight.shape == (2, x.shape[1] + 1)
    binary = fit_logistic(x[train], torch.tensor(y[train]), 2, choice.penalty / 2)[0]
    # Two logits w0 = -w1 = d/2 penalised by p/2 (|w0|^2 + |w1|^2) = p/4 |d|^2: one logit d
    # at half the penalty.
    difference = choice.weight[1] - choice.weight[0]
    np.testing.assert_allclose(difference.numpy(), binary.numpy(), atol=2e-3)


def _survival_breast_cancer():
    frame, y = load_survival_breast_cancer()
    x = frame.select_dtypes("number").to_numpy(float)  # 77 gene expressions and 3 clinical
    train, val, _ = _split(len(x))
    x = StandardScaler().fit(x[train]).transform(x)
    return x, y["t.tdm"].astype(float), y["e.tdm"].astype(bool), train, val


def test_cox_start_equals_scikit_survival_at_the_chosen_penalty():
    x, time, event, train, val = _survival_breast_cancer()
    choice = choose_linear_cox(torch.tensor(x), torch.tensor(time), torch.tensor(event), train, val)
    # Per-event penalty: scikit-survival's alpha (on the summed log-likelihood) = penalty * events.
    alpha = choice.penalty * event[train].sum()
    reference = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron")
    reference.fit(x[train], Surv.from_arrays(event[train], time[train]))
    np.testing.assert_allclose(choice.weight[0].numpy(), reference.coef_, atol=1e-4)


def test_cox_start_with_more_inputs_than_events_is_penalised_and_generalises():
    """The failure the penalty path fixes: 80 inputs, about 30 training events. The old start
    (a fixed alpha of 1e-4) has no finite solution worth the name; the chosen one holds up on
    validation rows it never saw."""
    x, time, event, train, val = _survival_breast_cancer()
    assert x.shape[1] > event[train].sum()
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    choice = choose_linear_cox(xt, tt, et, train, val)
    assert choice.chosen_on.startswith("5-fold")  # about 10 validation events: too few
    assert choice.penalty >= 0.1
    old = fit_linear_cox(xt[train], tt[train], et[train]).double()

    def held_out(weight):  # the validation rows' partial likelihood, risk sets of both
        rows = np.concatenate([train, val])
        both = cox_partial_log_likelihood(xt[rows] @ weight, tt[rows], et[rows])
        part = cox_partial_log_likelihood(xt[train] @ weight, tt[train], et[train])
        return float(both - part)

    assert held_out(choice.weight[0]) > held_out(old) + 5


def test_path_is_strong_to_weak_and_stops_after_the_minimum():
    path = penalty_path()
    assert path[0] > path[-1] and all(a > b for a, b in zip(path, path[1:], strict=False))
    x, y, train, val = _diabetes()
    choice = choose_ridge(torch.tensor(x), y, train, val)
    losses = [loss for _, loss in choice.path]
    best = int(np.argmin(losses))
    assert len(losses) <= len(path)
    assert len(losses) == len(path) or len(losses) - 1 - best >= 3
