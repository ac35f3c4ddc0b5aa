"""Cox partial likelihood against scikit-survival's CoxPHOptimizer on real data with tied times."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sksurv.datasets import load_veterans_lung_cancer, load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.linear_model.coxph import CoxPHOptimizer

from nervus_lightning.survival.loss import cox_loss, cox_partial_log_likelihood

DATASETS = {
    "whas500": (load_whas500, ["age", "bmi", "hr", "sysbp", "diasbp", "los"]),
    "veterans": (load_veterans_lung_cancer, ["Age_in_years", "Karnofsky_score"]),
}


def _load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    loader, columns = DATASETS[name]
    features, outcome = loader()
    x = features[columns].to_numpy(dtype=float)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    event_field, time_field = outcome.dtype.names
    event = np.ascontiguousarray(outcome[event_field], dtype=bool)
    time = np.ascontiguousarray(outcome[time_field], dtype=float)
    return x, time, event, outcome


def _sksurv_log_likelihood(x, time, event, coef, ties):
    optimizer = CoxPHOptimizer(x, event, time, np.zeros(x.shape[1]), ties)
    # CoxPHOptimizer returns the negative log partial likelihood averaged over all samples.
    return -optimizer.nlog_likelihood(coef) * x.shape[0]


@pytest.fixture(scope="module", params=sorted(DATASETS))
def data(request):
    x, time, event, outcome = _load(request.param)
    event_times, counts = np.unique(time[event], return_counts=True)
    assert (counts > 1).sum() >= 10, "the reference data set must contain tied event times"
    return x, time, event, outcome


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_log_likelihood_matches_sksurv_at_mle_and_elsewhere(data, ties):
    x, time, event, outcome = data
    model = CoxPHSurvivalAnalysis(ties=ties).fit(x, outcome)
    rng = np.random.default_rng(0)
    for coef in (model.coef_, rng.normal(scale=0.5, size=x.shape[1])):
        expected = _sksurv_log_likelihood(x, time, event, coef, ties)
        risk = torch.from_numpy(x @ coef)
        got = cox_partial_log_likelihood(
            risk, torch.from_numpy(time), torch.from_numpy(event), ties
        )
        assert got.item() == pytest.approx(expected, rel=1e-5)
        loss = cox_loss(risk, torch.from_numpy(time), torch.from_numpy(event), ties)
        assert loss.item() == pytest.approx(-expected / event.sum(), rel=1e-5)


def test_efron_and_breslow_differ_with_ties(data):
    x, time, event, _ = data
    risk = torch.from_numpy(x[:, 0])
    efron = cox_partial_log_likelihood(risk, torch.from_numpy(time), torch.from_numpy(event))
    breslow = cox_partial_log_likelihood(
        risk, torch.from_numpy(time), torch.from_numpy(event), ties="breslow"
    )
    assert efron.item() > breslow.item()  # Efron's denominators are smaller


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_gradient_matches_sksurv(data, ties):
    x, time, event, outcome = data
    model = CoxPHSurvivalAnalysis(ties=ties).fit(x, outcome)

    # At the maximum likelihood estimate the gradient vanishes.
    coef = torch.tensor(model.coef_, requires_grad=True)
    cox_loss(
        torch.from_numpy(x) @ coef, torch.from_numpy(time), torch.from_numpy(event), ties
    ).backward()
    assert torch.allclose(coef.grad, torch.zeros_like(coef.grad), atol=1e-6)

    # Elsewhere it equals sksurv's analytic gradient (of the loss averaged over samples).
    w = np.random.default_rng(1).normal(scale=0.5, size=x.shape[1])
    optimizer = CoxPHOptimizer(x, event, time, np.zeros(x.shape[1]), ties)
    optimizer.update(w)
    coef = torch.tensor(w, requires_grad=True)
    cox_loss(
        torch.from_numpy(x) @ coef, torch.from_numpy(time), torch.from_numpy(event), ties
    ).backward()
    np.testing.assert_allclose(
        coef.grad.numpy() * event.sum() / x.shape[0], optimizer.gradient, rtol=1e-6, atol=1e-10
    )


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_no_event_gives_graph_connected_zero(ties):
    risk = torch.randn(7, requires_grad=True)
    time = torch.arange(7.0)
    event = torch.zeros(7, dtype=torch.bool)
    loss = cox_loss(risk, time, event, ties)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(7))
    assert cox_partial_log_likelihood(risk.detach(), time, event, ties).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_huge_risks_stay_finite(ties, dtype):
    generator = torch.Generator().manual_seed(0)
    risk = (torch.randint(0, 2, (64,), generator=generator) * 2000.0 - 1000.0).to(dtype)
    risk = (risk + torch.randn(64, generator=generator, dtype=dtype)).requires_grad_()
    time = torch.randint(1, 8, (64,), generator=generator).to(dtype)  # many ties
    event = torch.rand(64, generator=generator) < 0.6
    loss = cox_loss(risk, time, event, ties)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(risk.grad).all()


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_permutation_invariance(data, ties):
    x, time, event, _ = data
    risk = torch.from_numpy(x @ np.linspace(-0.5, 0.5, x.shape[1]))
    time_t, event_t = torch.from_numpy(time), torch.from_numpy(event)
    reference = cox_partial_log_likelihood(risk, time_t, event_t, ties)
    perm = torch.randperm(risk.shape[0], generator=torch.Generator().manual_seed(3))
    permuted = cox_partial_log_likelihood(risk[perm], time_t[perm], event_t[perm], ties)
    assert permuted.item() == pytest.approx(reference.item(), rel=1e-12)


def test_breslow_equals_efron_without_ties():
    generator = torch.Generator().manual_seed(0)
    risk = torch.randn(50, generator=generator, dtype=torch.float64)
    time = torch.rand(50, generator=generator, dtype=torch.float64)
    assert torch.unique(time).shape[0] == 50
    event = torch.rand(50, generator=generator) < 0.5
    efron = cox_partial_log_likelihood(risk, time, event, "efron")
    breslow = cox_partial_log_likelihood(risk, time, event, "breslow")
    assert efron.item() == pytest.approx(breslow.item(), rel=1e-12)


def test_event_as_float_and_bool_agree():
    risk = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5])
    time = torch.tensor([2.0, 2.0, 1.0, 3.0, 2.0])
    event = torch.tensor([1, 1, 0, 1, 0])
    as_bool = cox_loss(risk, time, event.bool())
    as_float = cox_loss(risk, time, event.float())
    assert as_bool.item() == pytest.approx(as_float.item())


def test_invalid_arguments():
    risk, time, event = torch.zeros(3), torch.ones(3), torch.ones(3)
    with pytest.raises(ValueError, match="ties"):
        cox_loss(risk, time, event, ties="exact")
    with pytest.raises(ValueError, match="same length"):
        cox_loss(risk, torch.ones(4), event)
    with pytest.raises(ValueError, match="1-D"):
        cox_loss(risk[:, None], time, event)
