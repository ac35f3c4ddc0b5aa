"""The report's figures draw the numbers of established implementations: reliability points are
scikit-learn's calibration_curve, Kaplan-Meier panels scikit-survival's estimator."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.lines import Line2D
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


def test_reliability_points_are_sklearn_calibration_curve_without_empty_bins():
    y_val, p_val = _binary_case(0)
    y_test, p_test = _binary_case(1, 150)
    fig = plots.plot_reliability(
        {"val": (y_val, p_val), "test": (y_test, p_test)}, ["no", "yes"], positive_class="yes"
    )
    curve_ax, count_ax = fig.axes
    for name, (y, p) in {"val": (y_val, p_val), "test": (y_test, p_test)}.items():
        observed, predicted = calibration_curve(y == "yes", p[:, 1], n_bins=10)
        line = _line(curve_ax, name)
        np.testing.assert_allclose(line.get_xdata(), predicted)
        np.testing.assert_allclose(line.get_ydata(), observed)
        assert len(predicted) < 10  # the empty bins are not drawn (at 0 or anywhere)
        counts = np.histogram(p[:, 1], bins=np.linspace(0, 1, 11))[0]
        _, _, drawn_counts = plots.reliability_bins(y == "yes", p[:, 1])
        np.testing.assert_array_equal(drawn_counts, counts[counts > 0])
    # The count panel shows the cases per bin of each data set, in its colour.
    stairs = [patch.get_data().values for patch in count_ax.patches]
    np.testing.assert_array_equal(stairs[0], np.histogram(p_val[:, 1], np.linspace(0, 1, 11))[0])
    assert len(stairs) == 2


def test_multiclass_reliability_is_top_label():
    rng = np.random.default_rng(2)
    classes = ["a", "b", "c"]
    logits = rng.normal(size=(200, 3)) * 2
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.asarray(classes, dtype=object)[rng.integers(0, 3, 200)]
    fig = plots.plot_reliability({"test": (y, prob)}, classes)
    correct = np.asarray(classes, dtype=object)[prob.argmax(axis=1)] == y
    observed, predicted = calibration_curve(correct, prob.max(axis=1), n_bins=10)
    line = _line(fig.axes[0], "test")
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
