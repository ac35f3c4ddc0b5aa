"""O(n log n) Harrell's C against scikit-survival's ``concordance_index_censored``: C and every
count, on random data with many tied times and risks and on bundled clinical data sets; the
weighted pair sums of the competing-risks concordance against a direct sum."""

from __future__ import annotations

import numpy as np
import pytest
from sksurv.datasets import load_gbsg2, load_veterans_lung_cancer, load_whas500
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored as sksurv_cindex
from sksurv.metrics import concordance_index_ipcw

from nervus_lightning.survival.concordance import (
    concordance_counts,
    concordance_index_censored,
    weighted_concordance,
    weighted_pairs_before,
)


def assert_same(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> None:
    expected = sksurv_cindex(event, time, risk)
    got = concordance_index_censored(event, time, risk)
    assert got[1:] == tuple(int(v) for v in expected[1:])
    assert got[0] == pytest.approx(float(expected[0]), abs=1e-12)


def test_random_data_with_many_ties_matches_sksurv() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 120))
        time = rng.integers(0, int(rng.integers(1, 15)), n).astype(float)
        event = rng.random(n) < rng.uniform(0.1, 0.9)
        if not event.any():
            event[0] = True
        # Risks on a lattice of steps around the tolerance 1e-8: exact ties, ties within the
        # tolerance, and differences just above it.
        step = rng.choice([0.5e-8, 1e-8, 1.5e-8, 0.1])
        risk = rng.integers(0, int(rng.integers(1, 8)), n) * step
        try:
            expected = sksurv_cindex(event, time, risk)
        except NoComparablePairException:
            with pytest.raises(NoComparablePairException):
                concordance_index_censored(event, time, risk)
            continue
        got = concordance_index_censored(event, time, risk)
        assert got[1:] == tuple(int(v) for v in expected[1:])
        if np.isnan(expected[0]):
            assert np.isnan(got[0])
        else:
            assert got[0] == pytest.approx(float(expected[0]), abs=1e-12)


def test_continuous_risks_larger_set() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    time = np.round(rng.exponential(10, n), 1)
    event = rng.random(n) < 0.4
    assert_same(event, time, rng.normal(size=n))


@pytest.mark.parametrize(
    "loader, event_col, time_col",
    [
        (load_whas500, "fstat", "lenfol"),
        (load_gbsg2, "cens", "time"),
        (load_veterans_lung_cancer, "Status", "Survival_in_days"),
    ],
)
def test_bundled_data_sets(loader, event_col, time_col) -> None:
    x, y = loader()
    event, time = y[event_col], y[time_col].astype(float)
    numeric = x.select_dtypes("number")
    for column in numeric.columns[:4]:  # ages, sizes, scores: many tied risks
        risk = numeric[column].to_numpy(float)
        keep = ~np.isnan(risk)
        assert_same(event[keep], time[keep], risk[keep])


def test_errors_as_sksurv() -> None:
    with pytest.raises(ValueError, match="All samples are censored"):
        concordance_index_censored([0, 0], [1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="minimum of two"):
        concordance_index_censored([1], [1.0], [0.1])
    # Only event: a lone subject at the largest time.
    with pytest.raises(NoComparablePairException):
        sksurv_cindex(np.array([False, True]), np.array([1.0, 2.0]), np.array([0.1, 0.2]))
    with pytest.raises(NoComparablePairException):
        concordance_index_censored([0, 1], [1.0, 2.0], [0.1, 0.2])


def test_weighted_counts_give_unos_c() -> None:
    x, y = load_whas500()
    event, time = y["fstat"], y["lenfol"].astype(float)
    risk = x["age"].to_numpy(float) + 0.1 * x["bmi"].to_numpy(float)
    tau = float(np.percentile(time, 80))
    expected = concordance_index_ipcw(y, y, risk, tau=tau)[0]
    from sksurv.nonparametric import CensoringDistributionEstimator

    g = CensoringDistributionEstimator().fit(y).predict_proba(time)
    counts = concordance_counts(event, time, risk)
    i = counts.index
    weights = np.where(time[i] < tau, 1.0 / g[i] ** 2, 0.0)
    assert weighted_concordance(counts, weights) == pytest.approx(expected, abs=1e-12)


def test_weighted_pairs_before_equal_direct_sums() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n, q = int(rng.integers(1, 90)), int(rng.integers(1, 40))
        time = rng.integers(0, 15, n).astype(float)  # many tied times
        marker = np.round(rng.normal(size=n), 1)  # and tied markers
        weights = rng.uniform(0.5, 3.0, n)
        query_time = rng.integers(0, 16, q).astype(float)
        query_marker = np.round(rng.normal(size=q), 1)
        total, concordant, tied = weighted_pairs_before(
            time, marker, weights, query_time, query_marker
        )
        for k in range(q):
            before = time < query_time[k]
            assert total[k] == pytest.approx(weights[before].sum(), abs=1e-9)
            below = before & (query_marker[k] - marker > 1e-8)
            assert concordant[k] == pytest.approx(weights[below].sum(), abs=1e-9)
            close = before & (np.abs(query_marker[k] - marker) <= 1e-8)
            assert tied[k] == pytest.approx(weights[close].sum(), abs=1e-9)
