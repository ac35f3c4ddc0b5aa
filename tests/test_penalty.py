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
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.util import Surv

from nervus_lightning.models.penalty import (
    choose_linear_classifier,
    choose_ridge,
    fit_logistic,
    fit_ridge,
    minimise_proximal,
    penalty_path,
)
from nervus_lightning.survival.linear import (
    L1_RATIO,
    _fixed_data_log_likelihood,
    _per_event_objective,
    choose_linear_cox,
    fit_linear_cox,
)
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
    n_events = event[train].sum()
    if choice.l1_ratio == 0:
        # Per-event penalty: scikit-survival's alpha (on the summed log-likelihood) = penalty *
        # events.
        reference = CoxPHSurvivalAnalysis(alpha=choice.penalty * n_events, ties="efron")
    else:  # Coxnet's loss is per case: alpha = penalty * events / cases
        reference = CoxnetSurvivalAnalysis(
            l1_ratio=choice.l1_ratio, alphas=[choice.penalty * n_events / len(train)], tol=1e-12
        )
    reference.fit(x[train], Surv.from_arrays(event[train], time[train]))
    np.testing.assert_allclose(choice.weight[0].numpy(), reference.coef_.ravel(), atol=2e-4)


@pytest.mark.parametrize("alpha", [0.02, 0.1])
def test_elastic_net_cox_fit_equals_scikit_survival_coxnet(alpha):
    """The proximal solver against scikit-survival's coordinate descent, Breslow ties (Coxnet's),
    lasso share 0.5: the same coefficients and the same inputs set exactly to zero."""
    x, time, event, train, _ = _survival_breast_cancer()
    xt, tt, et = (torch.tensor(a[train]) for a in (x, time, event))
    n_events = int(event[train].sum())
    penalty = alpha * len(train) / n_events  # per event, as the library's loss
    smooth = _per_event_objective(xt, tt, et, "breslow", penalty * (1 - L1_RATIO))
    start = torch.zeros(1, x.shape[1], dtype=torch.float64)
    ours = minimise_proximal(start, smooth, penalty * L1_RATIO, max_iter=20000, tolerance=1e-12)
    reference = CoxnetSurvivalAnalysis(l1_ratio=L1_RATIO, alphas=[alpha], tol=1e-12, max_iter=10**6)
    reference.fit(x[train], Surv.from_arrays(event[train], time[train]))
    coef = reference.coef_.ravel()
    np.testing.assert_allclose(ours[0].numpy(), coef, atol=2e-4)
    assert 0 < int((coef != 0).sum()) < x.shape[1]  # a sparse fit, not a trivial one
    assert set(np.flatnonzero(ours[0].numpy())) == set(np.flatnonzero(coef))


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_fixed_data_likelihood_equals_the_loss_with_ties(ties):
    """The path's precomputed partial likelihood is the training loss's, value and gradient,
    with many tied times (rounded to 5 values) and censored rows among them."""
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((80, 4)))
    time = torch.tensor(rng.integers(0, 5, 80).astype(float))
    event = torch.tensor(rng.random(80) < 0.6)
    weight = torch.tensor(rng.standard_normal(4), requires_grad=True)
    ours = _fixed_data_log_likelihood(x, time, event, ties)(weight)
    (grad_ours,) = torch.autograd.grad(ours, weight)
    theirs = cox_partial_log_likelihood(x @ weight, time, event, ties)
    (grad_theirs,) = torch.autograd.grad(theirs, weight)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-12)
    np.testing.assert_allclose(grad_ours.numpy(), grad_theirs.numpy(), rtol=1e-10)


def _sparse_survival(n: int = 300, inputs: int = 60, seed: int = 0):
    """Five of ``inputs`` inputs act on the log hazard, the rest are noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, inputs))
    log_hazard = x[:, :5] @ np.array([0.8, -0.7, 0.6, -0.5, 0.5])
    event_time = rng.exponential(1.0, n) * np.exp(-log_hazard)
    censor_time = rng.exponential(2.0, n)
    time, event = np.minimum(event_time, censor_time), event_time <= censor_time
    train, val, _ = _split(n, seed)
    return x, time, event, train, val


def test_sparse_truth_starts_from_the_elastic_net_and_dense_truth_from_either():
    """60 inputs of which 5 matter: the elastic net beats ridge on the held-out rows and is the
    start, with most noise weights exactly zero; the choice names both kinds compared."""
    x, time, event, train, val = _sparse_survival()
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    choice = choose_linear_cox(xt, tt, et, train, val)
    assert choice.l1_ratio == L1_RATIO
    compared = dict(choice.compared)
    assert compared["elastic net"] < compared["ridge"]
    weight = choice.weight[0].numpy()
    assert (weight[5:] == 0).mean() > 0.5 and (weight[:5] != 0).all()
    assert "elastic net (lasso share 0.5)" in choice.describe()
    assert "compared on val with ridge" in choice.describe()


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
