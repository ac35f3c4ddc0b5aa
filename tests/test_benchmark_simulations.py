"""benchmarks/simulations.py: the simulated survival sets follow their stated model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sksurv.nonparametric import kaplan_meier_estimator

SIMULATIONS = Path(__file__).resolve().parents[1] / "benchmarks" / "simulations.py"


@pytest.fixture(scope="module")
def simulations():
    spec = importlib.util.spec_from_file_location("simulations", SIMULATIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crossing_hazards_is_a_nervus_csv_with_a_stratified_split(simulations):
    frame = simulations.crossing_hazards(3000, seed=4)
    assert list(frame.columns) == [
        "uniqID",
        "input_group",
        "input_noise1",
        "input_noise2",
        "input_noise3",
        "label_death",
        "period_death",
        "split",
    ]
    assert frame.uniqID.is_unique and (frame.period_death > 0).all()
    shares = frame.split.value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.002)
    by_split = frame.groupby("split").label_death.mean()
    assert by_split.max() - by_split.min() < 0.005  # stratified by the event
    assert 0.2 < 1 - frame.label_death.mean() < 0.4  # about 30 % censored
    assert frame.period_death.max() <= simulations.FOLLOW_UP
    again = simulations.crossing_hazards(3000, seed=4)
    assert again.equals(frame)
    assert not simulations.crossing_hazards(3000, seed=5).equals(frame)


def test_crossing_hazards_follow_the_stated_weibull_curves_which_cross(simulations):
    frame = simulations.crossing_hazards(20000, seed=0)
    times = np.array([0.5, 2.0, 4.0, 6.0, 8.0])
    truth = {}
    for group in (0, 1):
        rows = frame[frame.input_group == group]
        km_time, km_surv = kaplan_meier_estimator(rows.label_death == 1, rows.period_death)
        km = km_surv[np.searchsorted(km_time, times, side="right") - 1]
        truth[group] = simulations.crossing_survival(np.array([group]), times)[0]
        np.testing.assert_allclose(km, truth[group], atol=0.015)
    # Group 0 (shape 0.5) is below group 1 (shape 4) early and above it late.
    assert (truth[0][:3] < truth[1][:3]).all() and (truth[0][3:] > truth[1][3:]).all()
    # The noise inputs do not enter the outcome.
    for k in (1, 2, 3):
        assert abs(np.corrcoef(frame[f"input_noise{k}"], frame.period_death)[0, 1]) < 0.03
