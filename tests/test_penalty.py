"""The penalised linear starts (:mod:`nervus_lightning.models.penalty`,
:mod:`nervus_lightning.models.glm`,
:func:`nervus_lightning.survival.linear.choose_linear_cox`): each fit equals scikit-learn's or
scikit-survival's estimate at the same penalty, and the penalty is the held-out loss's minimum
over the path, chosen on validation rows (or folds of train) only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from sksurv.column import encode_categorical
from sksurv.datasets import load_breast_cancer as load_survival_breast_cancer
from sksurv.datasets import load_veterans_lung_cancer
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.util import Surv

from nervus_lightning.models.glm import (
    MIN_VAL_PER_CLASS,
    choose_linear_classifier,
    choose_linear_regression,
    fit_logistic,
    fit_regression,
    fit_ridge,
)
from nervus_lightning.models.penalty import (
    HELD_OUT_CV,
    HELD_OUT_CV_AND_VAL,
    HELD_OUT_VAL,
    choose_penalty,
    describe_choice,
    held_out_scale,
    held_out_splits,
    inputs_in_use,
    penalty_path,
)
from nervus_lightning.models.solvers import elastic_net_term, minimise_proximal
from nervus_lightning.survival.linear import (
    FOLD_DRAWS,
    L1_RATIO,
    MIN_VAL_EVENTS,
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


def test_held_out_splits_hold_out_every_row_once_and_never_fit_on_it():
    train, val = np.arange(0, 53), np.arange(53, 70)
    for design, held in [
        (HELD_OUT_VAL, val),
        (HELD_OUT_CV, train),
        (HELD_OUT_CV_AND_VAL, np.concatenate([train, val])),
    ]:
        splits, where = held_out_splits(train, val, design, seed=3)
        held_out = np.concatenate([rows for _, rows in splits])
        assert sorted(held_out) == sorted(held)  # each once
        for fit_rows, rows in splits:
            assert not set(fit_rows) & set(rows)
            assert set(fit_rows) <= set(train)  # validation rows are never fitted on
        assert len(splits) == {HELD_OUT_VAL: 1, HELD_OUT_CV: 5, HELD_OUT_CV_AND_VAL: 6}[design]
    assert where == "val and 5-fold cross-validation of train"
    splits, where = held_out_splits(train, val[:0], HELD_OUT_CV_AND_VAL)  # no val rows
    assert len(splits) == 5 and where == "5-fold cross-validation of train"


def test_repeated_fold_draws_hold_out_every_row_that_many_times():
    """``repeats`` fold draws: every training row held out once per draw, the validation pair
    listed once per draw (val keeps its share of the sum), the first draw the single draw's;
    the validation design has no folds to draw."""
    train, val = np.arange(0, 53), np.arange(53, 70)
    once, _ = held_out_splits(train, val, HELD_OUT_CV_AND_VAL, seed=3)
    splits, where = held_out_splits(train, val, HELD_OUT_CV_AND_VAL, seed=3, repeats=3)
    assert where == "val and 5-fold cross-validation of train (3 fold draws)"
    assert len(splits) == 18
    held = np.concatenate([rows for _, rows in splits])
    np.testing.assert_array_equal(np.bincount(held), np.full(70, 3))
    for fit_rows, rows in splits:
        assert not set(fit_rows) & set(rows) and set(fit_rows) <= set(train)
    folds = [rows for fit_rows, rows in splits if len(fit_rows) < len(train)]
    for a, b in zip(folds[:5], [rows for fit_rows, rows in once[:5]], strict=True):
        np.testing.assert_array_equal(a, b)  # the first draw is the one-draw split
    assert not np.array_equal(folds[0], folds[5])  # the next draws are others
    assert held_out_splits(train, val, HELD_OUT_VAL, repeats=3) == ([(train, val)], "val")
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        held_out_splits(train, val, HELD_OUT_CV, repeats=0)


def test_a_split_listed_twice_is_fitted_once_and_counted_twice():
    """With several fold draws the held-out loss of each penalty is the sum over every listed
    split (the validation rows once per draw), as if each had been fitted on its own; the
    validation pair is fitted once per penalty."""
    x, y, train, val = _diabetes()
    xt = torch.tensor(x)
    fitted: list[int] = []

    def fit(rows, penalty, start):
        fitted.append(len(rows))
        return fit_ridge(xt[rows], torch.tensor(y[rows]), penalty)

    def loss(weight, fit_rows, held_rows):
        predicted = xt[held_rows] @ weight[0, :-1] + weight[0, -1]
        return float(np.square(predicted.numpy() - y[held_rows]).sum())

    path = [10.0, 1.0, 0.1, 0.01]
    choice = choose_penalty(fit, loss, train, val, HELD_OUT_CV_AND_VAL, path, seed=2, repeats=4)
    assert choice.chosen_on == "val and 5-fold cross-validation of train (4 fold draws)"
    splits, _ = held_out_splits(train, val, HELD_OUT_CV_AND_VAL, seed=2, repeats=4)
    for penalty, total in choice.path:
        expected = sum(loss(fit_ridge(xt[f], torch.tensor(y[f]), penalty), f, h) for f, h in splits)
        assert total == pytest.approx(expected, rel=1e-9)
    # 20 folds and the validation pair per penalty, then the chosen one on all of train.
    assert len(fitted) == len(choice.path) * 21 + 1
    assert fitted.count(len(train)) == len(choice.path) + 1


def test_regression_penalty_is_the_held_out_minimum_of_each_path():
    """Ridge and the elastic net each on their path, every held-out loss (the validation rows
    and the 5 folds of train) equal to scikit-learn's fits at that penalty; the start is the
    kind with the lower minimum, its penalty that minimum's."""
    x, y, train, val = _diabetes()
    choice = choose_linear_regression(torch.tensor(x), y, train, val)
    assert choice.chosen_on == "val and 5-fold cross-validation of train"
    compared = dict(choice.compared)
    assert set(compared) == {"ridge", "elastic net"}
    chosen = "elastic net" if choice.l1_ratio else "ridge"
    assert compared[chosen] == min(compared.values())
    splits, _ = held_out_splits(train, val, HELD_OUT_CV_AND_VAL)

    def held_out_error(model):
        return sum(
            np.square(model.fit(x[fit], y[fit]).predict(x[held]) - y[held]).sum()
            for fit, held in splits
        )

    for p, loss in choice.path:
        if choice.l1_ratio:  # MSE + p (a |w|_1 + (1-a)/2 |w|^2) is ElasticNet's alpha = p / 2
            model = ElasticNet(alpha=p / 2, l1_ratio=choice.l1_ratio, tol=1e-12, max_iter=10**5)
            assert loss == pytest.approx(held_out_error(model), rel=1e-5)
        else:  # MSE + p/2 |w|^2 is Ridge's |r|^2 + alpha |w|^2 with alpha = n p / 2
            errors = [  # each split's fit has its own n
                np.square(
                    Ridge(alpha=len(fit) * p / 2).fit(x[fit], y[fit]).predict(x[held]) - y[held]
                ).sum()
                for fit, held in splits
            ]
            assert loss == pytest.approx(sum(errors), rel=1e-5)
    assert choice.best_loss() == compared[chosen]
    assert dict(choice.path)[choice.penalty] == choice.best_loss()


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


@pytest.mark.parametrize("malignant", [30, None])
def test_classifier_start_holds_out_a_rare_class_beside_the_folds(malignant):
    """A class with fewer than MIN_VAL_PER_CLASS validation cases (a rare finding): the
    penalty is chosen on the 5 folds of train and the validation rows together, every training
    and validation row held out once (the chosen penalty's loss is the cross-entropy summed over
    all of them); with enough cases, on the validation rows alone."""
    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :10]  # the mean features: a quicker path
    if malignant is not None:  # keep every benign case and the first 30 malignant ones
        keep = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)[:malignant]])
        x, y = x[np.sort(keep)], y[np.sort(keep)]
    train, val, _ = _split(len(x))
    rare = np.bincount(y[val], minlength=2).min() < MIN_VAL_PER_CLASS
    assert rare == (malignant is not None)
    x = torch.tensor(StandardScaler().fit(x[train]).transform(x))
    choice = choose_linear_classifier(x, y, 2, train, val)
    design = HELD_OUT_CV_AND_VAL if rare else HELD_OUT_VAL
    splits, where = held_out_splits(train, val, design)
    assert choice.chosen_on == where
    assert choice.chosen_on == ("val and 5-fold cross-validation of train" if rare else "val")
    held = np.sort(np.concatenate([rows for _, rows in splits]))
    np.testing.assert_array_equal(held, np.sort(np.concatenate([train, val]) if rare else val))
    total = 0.0
    for fit_rows, held_rows in splits:
        w = fit_logistic(
            x[fit_rows], torch.tensor(y[fit_rows]), 2, choice.penalty, None, True, choice.l1_ratio
        )
        logits = torch.cat([x[held_rows], torch.ones(len(held_rows), 1, dtype=x.dtype)], 1) @ w.T
        total += float(
            torch.nn.functional.cross_entropy(logits, torch.tensor(y[held_rows]), reduction="sum")
        )
    assert choice.best_loss() == pytest.approx(total, rel=1e-3)


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
    # The start is that fit with its linear predictor scaled by the factor chosen with it.
    assert choice.scale > 0
    np.testing.assert_allclose(
        choice.weight[0].numpy(), choice.scale * reference.coef_.ravel(), atol=2e-4 * choice.scale
    )


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
    assert choice.describe().endswith("; compared with ridge on the same rows")
    # The fit at the path's stopping tolerance (FIT_TOLERANCE) is Coxnet's at that penalty
    # (continuous times: Efron's ties are Breslow's), times the start's scale.
    n_events = int(event[train].sum())
    reference = CoxnetSurvivalAnalysis(
        l1_ratio=L1_RATIO, alphas=[choice.penalty * n_events / len(train)], tol=1e-12
    ).fit(x[train], Surv.from_arrays(event[train], time[train]))
    np.testing.assert_allclose(weight, choice.scale * reference.coef_.ravel(), atol=1e-4)


def test_cox_start_with_more_inputs_than_events_is_penalised_and_generalises():
    """The failure the penalty path fixes: 80 inputs, about 30 training events. The old start
    (a fixed alpha of 1e-4) has no finite solution worth the name; the chosen one holds up on
    test rows it never saw. About 10 validation events are too few to choose on alone: they are
    held out beside the 5 folds of train, drawn FOLD_DRAWS times."""
    x, time, event, train, val = _survival_breast_cancer()
    test = np.setdiff1d(np.arange(len(x)), np.concatenate([train, val]))
    assert x.shape[1] > event[train].sum() and event[val].sum() < MIN_VAL_EVENTS
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    choice = choose_linear_cox(xt, tt, et, train, val)
    cv = f"5-fold cross-validation of train ({FOLD_DRAWS} fold draws)"
    assert choice.chosen_on == f"val and {cv}"
    assert choice.penalty >= 0.1
    old = fit_linear_cox(xt[train], tt[train], et[train]).double()

    def held_out(weight):  # the test rows' partial likelihood, risk sets of both
        rows = np.concatenate([train, test])
        both = cox_partial_log_likelihood(xt[rows] @ weight, tt[rows], et[rows])
        part = cox_partial_log_likelihood(xt[train] @ weight, tt[train], et[train])
        return float(both - part)

    assert held_out(choice.weight[0]) > held_out(old) + 5


def test_path_is_strong_to_weak_and_stops_after_the_minimum():
    path = penalty_path()
    assert path[0] > path[-1] and all(a > b for a, b in zip(path, path[1:], strict=False))
    x, y, train, val = _diabetes()
    choice = choose_linear_regression(torch.tensor(x), y, train, val)
    losses = [loss for _, loss in choice.path]
    best = int(np.argmin(losses))
    assert len(losses) <= len(path)
    assert len(losses) == len(path) or len(losses) - 1 - best >= 3


@pytest.mark.parametrize("penalty", [0.01, 0.1])
def test_elastic_net_regression_fit_equals_scikit_learn(penalty):
    """MSE + p (a |w|_1 + (1 - a)/2 |w|^2) is scikit-learn's ElasticNet with alpha = p / 2."""
    x, y, train, _ = _diabetes()
    reference = ElasticNet(alpha=penalty / 2, l1_ratio=L1_RATIO, tol=1e-12, max_iter=10**5)
    reference.fit(x[train], y[train])
    weight = fit_regression(torch.tensor(x[train]), torch.tensor(y[train]), penalty, None, L1_RATIO)
    ours = weight[0].numpy()
    theirs = np.append(reference.coef_, reference.intercept_)

    def objective(w):
        mse = np.square(x[train] @ w[:-1] + w[-1] - y[train]).mean()
        return mse + penalty * (
            L1_RATIO * np.abs(w[:-1]).sum() + (1 - L1_RATIO) / 2 * np.square(w[:-1]).sum()
        )

    # The solver stops at weight steps of 1e-6: two correlated inputs (s1, s2) settle within
    # 1e-3 of scikit-learn's coordinate descent, at the same objective to 1e-6.
    assert objective(ours) == pytest.approx(objective(theirs), rel=1e-6)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert ((ours[:-1] == 0) == (reference.coef_ == 0)).all()


def test_elastic_net_multinomial_fit_equals_scikit_learn():
    """Mean cross-entropy + p (a |w|_1 + (1 - a)/2 |w|^2), one logit per class, intercepts free:
    scikit-learn's multinomial elastic net (saga) with C = 1 / (n p)."""
    x, y = load_wine(return_X_y=True)
    train, _, _ = _split(len(x))
    x = StandardScaler().fit(x[train]).transform(x)
    penalty = 0.05
    reference = LogisticRegression(
        C=1 / (len(train) * penalty),
        l1_ratio=L1_RATIO,
        solver="saga",
        tol=1e-10,
        max_iter=100_000,
    ).fit(x[train], y[train])
    weight = fit_logistic(
        torch.tensor(x[train]), torch.tensor(y[train]), 3, penalty, None, True, L1_RATIO
    )
    # Softmax logits are defined up to a constant per case: compare centred across classes.
    ours, theirs = weight[:, :-1].numpy(), reference.coef_
    np.testing.assert_allclose(ours - ours.mean(0), theirs - theirs.mean(0), atol=2e-3)
    assert ((ours == 0) == (theirs == 0)).mean() > 0.95


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_elastic_net_start_finds_the_few_inputs_that_matter(task):
    """5 of 100 inputs matter, 90 training rows: the elastic net wins on the validation rows,
    keeps the five and drops most of the noise; ridge keeps every input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 100))
    score = 1.5 * (x[:, 0] + x[:, 1] + x[:, 2] - x[:, 3] - x[:, 4])
    train, val = np.arange(90), np.arange(90, 150)
    if task == "classification":
        y = (rng.random(150) < 1 / (1 + np.exp(-score))).astype(int)
        choice = choose_linear_classifier(torch.tensor(x), y, 2, train, val)
        used = choice.weight[:, :-1].abs().amax(0).numpy()
    else:
        y = score + rng.normal(0, 1.0, 150)
        choice = choose_linear_regression(torch.tensor(x), (y - y.mean()) / y.std(), train, val)
        used = choice.weight[0, :-1].abs().numpy()
    compared = dict(choice.compared)
    assert choice.l1_ratio == L1_RATIO and compared["elastic net"] < compared["ridge"]
    assert (used[:5] > 0).all() and (used[5:] == 0).mean() > 0.6


def test_inputs_that_say_nothing_leave_ridge_alone():
    """Standardised constant inputs are all zero: the elastic net's path is empty (every penalty
    gives the all-zero fit), so ridge is the start, without an error, for every head."""
    x = torch.zeros(60, 3, dtype=torch.float64)
    train, val = np.arange(40), np.arange(40, 60)
    rng = np.random.default_rng(0)
    choices = [
        choose_linear_regression(x, rng.normal(size=60), train, val),
        choose_linear_classifier(x, rng.integers(0, 2, 60), 2, train, val),
        choose_linear_cox(
            x, torch.tensor(rng.exponential(size=60)), torch.ones(60, dtype=torch.bool), train, val
        ),
    ]
    for choice in choices:
        assert choice.l1_ratio == 0 and not choice.compared
        assert torch.all(choice.weight[:, : x.shape[1]] == 0)


def test_held_out_scale_is_the_minimum_and_never_worse_than_the_fit_or_nothing():
    scale, loss = held_out_scale(lambda s: (s - 3.0) ** 2 + 1.0)
    assert scale == pytest.approx(3.0, abs=1e-3) and loss == pytest.approx(1.0, abs=1e-6)
    # A direction that ranks the held-out rows backwards: no input at all is best.
    assert held_out_scale(lambda s: (s + 2.0) ** 2) == (0.0, 4.0)
    # A loss the search cannot see (best exactly at 1): the fit as it is.
    assert held_out_scale(lambda s: 0.0 if s == 1.0 else 1.0) == (1.0, 0.0)


def test_cox_path_is_scored_at_each_fits_best_scale():
    """veterans (sksurv), split seed 1: the validation rows' partial likelihood prefers the
    strongest ridge penalty (the inputs' univariate direction) once each fit's linear predictor
    may take its best scale there; scored as they are, the strongly shrunk fits look like
    no model at all and the elastic net's weak penalty wins. The start is the chosen fit times
    its scale, and its validation partial likelihood is the better one by several units."""
    features, outcome = load_veterans_lung_cancer()
    x = encode_categorical(features).to_numpy(float)
    event, time = outcome["Status"], outcome["Survival_in_days"].astype(float)
    train, val, _ = _split(len(x), 1)
    x = StandardScaler().fit(x[train]).transform(x)
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    profiled = choose_linear_cox(xt, tt, et, train, val)
    as_fitted = choose_linear_cox(xt, tt, et, train, val, profile_scale=False)

    def held_out(weight):  # the validation rows' partial likelihood, risk sets of both
        rows = np.concatenate([train, val])
        both = cox_partial_log_likelihood(xt[rows] @ weight, tt[rows], et[rows])
        part = cox_partial_log_likelihood(xt[train] @ weight, tt[train], et[train])
        return float(both - part)

    assert as_fitted.scale == 1.0 and profiled.scale > 10
    assert profiled.penalty > as_fitted.penalty
    assert held_out(profiled.weight[0]) > held_out(as_fitted.weight[0]) + 3
    # Each path value is its fit's held-out loss at the best scale: the chosen one, recomputed.
    assert profiled.best_loss() == pytest.approx(-held_out(profiled.weight[0]), rel=1e-6)
    assert f"its linear predictor scaled by {profiled.scale:.3g} there" in profiled.describe()
    assert "scaled" not in as_fitted.describe()

    # Training keeps the scaled start: with the penalty's ridge part centred where the choice
    # says, the start is a stationary point of the training loss plus penalty (the network's
    # path at zero); centred at zero, as for an unscaled fit, the penalty pulls it back.
    def gradient(choice, center):
        weight = choice.weight.detach().clone().requires_grad_(True)
        data = _per_event_objective(xt[train], tt[train], et[train], "efron", 0.0)
        total = data(weight) + elastic_net_term(weight, choice.penalty, choice.l1_ratio, center)
        return torch.autograd.grad(total, weight)[0][choice.weight != 0]  # zeros: a subgradient

    assert as_fitted.center is None and profiled.center is not None
    assert profiled.summary()["center"] == profiled.center.tolist()
    assert float(gradient(profiled, profiled.center).abs().max()) < 1e-6
    assert float(gradient(profiled, None).abs().max()) > 1e-2
    # The unscaled fit (here the elastic net's) is stationary with the plain penalty.
    assert float(gradient(as_fitted, None).abs().max()) < 1e-4


def test_the_inputs_a_start_uses_are_counted_and_named():
    """Inputs with a non-zero weight in any row of a start (an intercept, last, is not an
    input), and how the run folder and the report say it."""
    cox = torch.tensor([[0.3, 0.0, -0.1]])
    assert inputs_in_use(cox, 3) == {"inputs": 3, "inputs_used": 2}
    classes = torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, -0.4]])  # intercepts only
    assert inputs_in_use(classes, 2) == {"inputs": 2, "inputs_used": 0}
    assert inputs_in_use(torch.tensor([[0.0, 2.0, 0.0]]), 2)["inputs_used"] == 1
    base = {"penalty": 0.3, "chosen_on": "val", "tried": 12, "strongest": 100, "weakest": 0.03}
    assert describe_choice(base).endswith("(100 down to 0.03)")
    assert describe_choice({**base, "inputs": 3, "inputs_used": 3}) == describe_choice(base)
    assert describe_choice({**base, "inputs": 3, "inputs_used": 2}).endswith(
        ", 2 of 3 inputs with a non-zero weight"
    )
    assert "every input's weight 0" in describe_choice({**base, "inputs": 3, "inputs_used": 0})
