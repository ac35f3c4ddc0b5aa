"""Bootstrap intervals: determinism, containment, skipping, and the vectorised metrics checked
against scikit-learn on exactly the same resamples."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score

from nervus_lightning.evaluation.bootstrap import (
    _resample_blocks,
    bootstrap_ci,
    bootstrap_distribution,
    weighted_auroc,
    weighted_bootstrap_ci,
    weighted_bootstrap_distributions,
    weighted_classification_metrics,
    weighted_regression_metrics,
)
from nervus_lightning.evaluation.metrics import classification_metrics, regression_metrics


def _binary(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.round(np.clip(0.35 * y + 0.65 * rng.uniform(size=n), 0, 1), 2)
    return y, score


def test_ci_contains_point_and_is_deterministic():
    y, score = _binary()
    point = roc_auc_score(y, score)
    first = bootstrap_ci(roc_auc_score, y, score, n_resamples=300, seed=7)
    again = bootstrap_ci(roc_auc_score, y, score, n_resamples=300, seed=7)
    other = bootstrap_ci(roc_auc_score, y, score, n_resamples=300, seed=8)
    lower, upper = first
    assert lower < point < upper
    assert (first.lower, first.upper) == (again.lower, again.upper)
    assert (first.lower, first.upper) != (other.lower, other.upper)
    assert first.n_skipped == 0 and first.reason is None


def test_percentile_interval_matches_numpy_quantiles():
    y, score = _binary()
    values = bootstrap_distribution(roc_auc_score, y, score, n_resamples=200, seed=1)
    lower, upper = bootstrap_ci(roc_auc_score, y, score, n_resamples=200, seed=1, ci=0.9)
    assert (lower, upper) == tuple(np.quantile(values, [0.05, 0.95]))


def test_vectorised_auroc_equals_sklearn_on_same_resamples():
    y, score = _binary()
    loop = bootstrap_distribution(roc_auc_score, y, score, n_resamples=200, seed=3)
    vectorised = weighted_bootstrap_distributions(
        lambda w, yy, ss: {"auroc": weighted_auroc(w, yy, ss)}, y, score, n_resamples=200, seed=3
    )["auroc"]
    np.testing.assert_allclose(vectorised, loop, rtol=1e-12)
    assert tuple(
        weighted_bootstrap_ci(weighted_auroc, y, score, n_resamples=200, seed=3)
    ) == pytest.approx(tuple(bootstrap_ci(roc_auc_score, y, score, n_resamples=200, seed=3)))


@pytest.mark.parametrize(
    "classes, threshold", [(["neg", "pos"], 0.5), (["neg", "pos"], None), (["a", "b", "c"], None)]
)
def test_vectorised_classification_metrics_equal_point_metrics(classes, threshold):
    rng = np.random.default_rng(4)
    k = len(classes)
    y_idx = rng.integers(0, k, 150)
    prob = rng.dirichlet(np.ones(k), 150) + 0.8 * np.eye(k)[y_idx]
    prob = np.round(prob / prob.sum(axis=1, keepdims=True), 2)
    prob /= prob.sum(axis=1, keepdims=True)
    names = np.array(classes, dtype=object)
    distributions = weighted_bootstrap_distributions(
        lambda w, yi, p: weighted_classification_metrics(w, yi, p, classes, threshold=threshold),
        y_idx,
        prob,
        n_resamples=40,
        seed=5,
        strata=y_idx,
    )
    indices = np.concatenate(list(_resample_blocks(150, 40, 5, y_idx)))
    for b, idx in enumerate(indices):
        point = classification_metrics(names[y_idx[idx]], prob[idx], classes, threshold=threshold)
        for metric, value in point.items():
            if metric != "n":
                assert distributions[metric][b] == pytest.approx(value, abs=1e-12), metric


def test_vectorised_regression_metrics_equal_point_metrics():
    rng = np.random.default_rng(6)
    y = rng.normal(1000, 5, 120)  # large mean, small spread: tests the centring
    pred = y + rng.normal(0, 3, 120)
    distributions = weighted_bootstrap_distributions(
        weighted_regression_metrics, y, pred, n_resamples=30, seed=2
    )
    indices = np.concatenate(list(_resample_blocks(120, 30, 2, None)))
    for b, idx in enumerate(indices):
        point = regression_metrics(y[idx], pred[idx])
        assert distributions["mae"][b] == pytest.approx(mean_absolute_error(y[idx], pred[idx]))
        assert distributions["r2"][b] == pytest.approx(r2_score(y[idx], pred[idx]), rel=1e-8)
        for metric in ("rmse", "pearson_r"):
            assert distributions[metric][b] == pytest.approx(point[metric], rel=1e-8)


def test_stratified_resamples_keep_class_counts():
    y = np.array([0] * 30 + [1] * 5)
    blocks = list(_resample_blocks(35, 100, 0, y))
    assert sum(len(block) for block in blocks) == 100
    for block in blocks:
        assert block.shape[1] == 35
        assert np.all((y[block] == 1).sum(axis=1) == 5)


def test_undefined_resamples_are_skipped_and_reported():
    y = np.zeros(30, dtype=int)
    y[0] = 1  # about e^-1 of the plain resamples have no positive case
    score = np.linspace(0, 1, 30)
    with pytest.warns(RuntimeWarning, match="skipped"):
        result = bootstrap_ci(roc_auc_score, y, score, n_resamples=200, seed=0)
    assert 20 < result.n_skipped < 100
    assert "skipped" in result.reason and result.lower is not None
    stratified = bootstrap_ci(roc_auc_score, y, score, n_resamples=200, seed=0, strata=y)
    assert stratified.n_skipped == 0
    hopeless = bootstrap_ci(lambda a: None, y, n_resamples=50)
    assert hopeless.lower is None and hopeless.n_skipped == 50 and "too few" in hopeless.reason


def test_thousand_resamples_are_fast():
    rng = np.random.default_rng(0)
    y_idx = rng.integers(0, 3, 2000)
    prob = rng.dirichlet(np.ones(3), 2000)
    start = time.perf_counter()
    weighted_bootstrap_distributions(
        lambda w, yi, p: weighted_classification_metrics(w, yi, p, ["a", "b", "c"]),
        y_idx,
        prob,
        n_resamples=1000,
        seed=0,
        strata=y_idx,
    )
    assert time.perf_counter() - start < 20  # about 1 s on a laptop core
