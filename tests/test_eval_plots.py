"""The report's figures draw the numbers of established implementations: reliability points are
scikit-learn's calibration_curve (quantile bins) with scipy's Wilson intervals, Kaplan-Meier
panels scikit-survival's estimator."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.lines import Line2D
from scipy import stats
from sklearn.calibration import calibration_curve
from sksurv.nonparametric import kaplan_meier_estimator

from nervus_lightning.evaluation import plots
from nervus_lightning.survival.plots import plot_km_risk_group_panels


def _line(ax, label: str) -> Line2D:
    return next(line for line in ax.get_lines() if line.get_label() == label)


def _binary_case(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities only in [0, 0.25) and (0.7, 1]: several of the ten bins stay empty."""
    rng = np.random.default_rng(seed)
    p = np.where(rng.uniform(size=n) < 0.5, rng.uniform(0, 0.25, n), rng.uniform(0.7, 1, n))
    y = np.where(rng.uniform(size=n) < p, "yes", "no").astype(object)
    return y, np.c_[1 - p, p]


def test_reliability_bins_are_sklearn_quantile_bins_with_wilson_intervals():
    # 300 distinct probabilities: 10 bins of 30, the bins of calibration_curve's quantile strategy.
    y, p = _binary_case(0)
    outcome = (y == "yes").astype(float)
    table = plots.reliability_bins(outcome, p[:, 1])
    observed, predicted = calibration_curve(outcome, p[:, 1], n_bins=10, strategy="quantile")
    np.testing.assert_allclose(table["predicted"], predicted)
    np.testing.assert_allclose(table["observed"], observed)
    assert (table["n"] == 30).all()
    for row in table.itertuples():
        expected = stats.binomtest(int(row.events), int(row.n)).proportion_ci(method="wilson")
        assert row.lower == pytest.approx(expected.low)
        assert row.upper == pytest.approx(expected.high)


@pytest.mark.parametrize(("n", "bins"), [(300, 10), (150, 7), (45, 2), (19, 1), (2, 1)])
def test_reliability_bins_hold_at_least_twenty_cases(n, bins):
    # Probabilities crowded at a few values: ties never leave a bin short of cases.
    rng = np.random.default_rng(n)
    p = rng.choice([0.1, 0.5, 0.9], n)
    table = plots.reliability_bins(rng.uniform(size=n) < p, p)
    assert len(table) == bins and table["n"].sum() == n
    assert table["n"].max() - table["n"].min() <= 1
    if n >= 20:
        assert table["n"].min() >= 20


def test_reliability_diagram_draws_the_bins_with_their_intervals():
    y_val, p_val = _binary_case(0)
    y_test, p_test = _binary_case(1, 150)
    fig = plots.plot_reliability(
        {"val": (y_val, p_val), "test": (y_test, p_test)}, ["no", "yes"], positive_class="yes"
    )
    curve_ax, count_ax = fig.axes
    for container, (y, p) in zip(
        curve_ax.containers, [(y_val, p_val), (y_test, p_test)], strict=True
    ):
        table = plots.reliability_bins(y == "yes", p[:, 1])
        line, _, (bars,) = container.lines
        np.testing.assert_allclose(line.get_xdata(), table["predicted"])
        np.testing.assert_allclose(line.get_ydata(), table["observed"])
        assert line.get_linestyle() != "None"  # bins of 30 and 15 cases are joined
        segments = bars.get_segments()
        np.testing.assert_allclose([s[0][1] for s in segments], table["lower"])
        np.testing.assert_allclose([s[1][1] for s in segments], table["upper"])
    # The lower panel shows the predicted probabilities of each data set, in its colour.
    stairs = [patch.get_data().values for patch in count_ax.patches]
    np.testing.assert_array_equal(stairs[0], np.histogram(p_val[:, 1], np.linspace(0, 1, 11))[0])
    assert len(stairs) == 2


def test_reliability_diagram_draws_no_line_through_tiny_bins():
    y = np.array(["yes", "no"], dtype=object)
    p = np.array([[0.2, 0.8], [0.7, 0.3]])
    fig = plots.plot_reliability({"test": (y, p)}, ["no", "yes"], positive_class="yes")
    (container,) = fig.axes[0].containers
    assert container.lines[0].get_linestyle() == "None"


def test_multiclass_reliability_is_top_label():
    rng = np.random.default_rng(2)
    classes = ["a", "b", "c"]
    logits = rng.normal(size=(200, 3)) * 2
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.asarray(classes, dtype=object)[rng.integers(0, 3, 200)]
    fig = plots.plot_reliability({"test": (y, prob)}, classes)
    correct = np.asarray(classes, dtype=object)[prob.argmax(axis=1)] == y
    observed, predicted = calibration_curve(
        correct, prob.max(axis=1), n_bins=10, strategy="quantile"
    )
    line = fig.axes[0].containers[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), predicted)
    np.testing.assert_allclose(line.get_ydata(), observed)


def test_roc_overlays_one_curve_per_split_with_the_interval_in_the_legend():
    y_val, p_val = _binary_case(0)
    y_test, p_test = _binary_case(1, 150)
    fig = plots.plot_roc(
        {"val": (y_val, p_val), "test": (y_test, p_test), "one_class": (y_val[:0], p_val[:0])},
        ["no", "yes"],
        positive_class="yes",
        intervals={"test": {"yes": (0.61, 0.72)}},
        threshold=0.5,
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 2
    assert labels[1].startswith("test: AUC") and "(95% CI 0.610-0.720)" in labels[1]


def test_km_panels_draw_scikit_survival_estimates():
    rng = np.random.default_rng(3)
    panels = {}
    for split, n in (("val", 80), ("test", 60)):
        time = rng.exponential(5, n).round(1) + 0.1
        event = rng.uniform(size=n) < 0.7
        groups = rng.integers(0, 2, n)
        panels[split] = (time, event, groups)
    fig = plot_km_risk_group_panels(panels, title="km")
    for ax, (time, event, groups) in zip(fig.axes[::2], panels.values(), strict=True):
        high = groups == 1
        km_time, km_surv = kaplan_meier_estimator(event[high], time[high])
        line = next(li for li in ax.get_lines() if li.get_label().startswith("high risk"))
        np.testing.assert_allclose(line.get_ydata(), np.r_[1.0, km_surv])
        np.testing.assert_allclose(line.get_xdata(), np.r_[0.0, km_time])


@pytest.mark.parametrize("n_panels", [1, 3])
def test_regression_panels_share_their_range(n_panels):
    rng = np.random.default_rng(4)
    panels = {
        f"s{i}": {f"s{i}": (rng.normal(i, 1, 50), rng.normal(i, 1, 50))} for i in range(n_panels)
    }
    fig = plots.plot_regression_scatter(panels, label="y")
    limits = {ax.get_xlim() for ax in fig.axes if ax.get_visible()}
    assert len(limits) == 1
    plots.plot_bland_altman(panels, label="y")
