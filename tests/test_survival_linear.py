"""The linear term of tabular DeepSurv (``model.linear``) and the survival defaults of a user's
own tabular CSV (conf/recipe/survival_none_*.yaml): the model starts as scikit-survival's fitted
linear Cox model, and the default command trains, predicts and exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.models.ensemble import member_nets
from nervus_lightning.module import NervusModule
from nervus_lightning.survival.linear import _per_event_objective, fit_linear_cox
from nervus_lightning.survival.presets import preset_frame
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train

QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "evaluation.n_bootstrap=0",
]


def _inputs(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("input_")]].to_numpy(float)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_linear_cox_fit_equals_scikit_survival_on_whas500(ties):
    frame = preset_frame("whas500", seed=0)
    train_rows = frame[frame.split == "train"]
    x = StandardScaler().fit_transform(_inputs(train_rows))
    event = train_rows.label_death.to_numpy(bool)
    time = train_rows.period_death.to_numpy(float)
    reference = CoxPHSurvivalAnalysis(alpha=1e-4, ties=ties).fit(x, Surv.from_arrays(event, time))
    weight = fit_linear_cox(torch.tensor(x), torch.tensor(time), torch.tensor(event), ties=ties)
    np.testing.assert_allclose(weight.numpy(), reference.coef_, atol=1e-5)


def test_linear_cox_fit_without_events_is_zero():
    weight = fit_linear_cox(torch.randn(10, 3), torch.rand(10), torch.zeros(10))
    assert torch.equal(weight, torch.zeros(3))


def _module(csv, linear=None, **options) -> tuple[NervusModule, NervusDataModule]:
    dm = NervusDataModule(csv, task="survival", batch_size=512)
    tabular = {"name": "mlp"} if linear is None else {"name": "mlp", "linear": linear}
    module = NervusModule(dm.schema, extractor=None, tabular=tabular, **options)
    return module, dm


def test_model_starts_as_scikit_survival_linear_cox(dataset):
    """At initialisation the network path outputs exactly 0 and the log-risk is the fitted
    linear Cox model's (at the penalty chosen on validation, times the factor chosen with it),
    row by row, on the same standardised inputs."""
    csv = dataset(task="survival", n=120, images=False)
    module, dm = _module(csv, linear="auto", task={"name": "survival", "ties": "efron"})
    net = module.net
    assert net.linear_terms is not None
    rows = dm.split_frame()
    module.start_linear_terms(rows[rows.split.isin(["train", "val"])])
    penalty = module.linear_choices["label_death"]["penalty"]
    frame = pd.read_csv(csv)
    x_all = torch.tensor(frame[dm.schema.input_columns].to_numpy(np.float32))
    net.eval()
    with torch.no_grad():
        path = net.heads[0](net.features(tabular=x_all))
        risk = net(tabular=x_all)[0][:, 0].numpy()
    assert torch.equal(path, torch.zeros_like(path))
    # scikit-survival on the training rows, inputs standardised with the stored statistics.
    mean, std = np.asarray(dm.schema.input_mean), np.asarray(dm.schema.input_std)
    train_csv = frame[frame.split == "train"]
    x_train = (train_csv[dm.schema.input_columns].to_numpy(float) - mean) / std
    # The per-event penalty is scikit-survival's alpha (on the summed log-likelihood) / events.
    alpha = penalty * int((train_csv.label_death == 1).sum())
    cox = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron").fit(
        x_train, Surv.from_arrays(train_csv.label_death == 1, train_csv.period_death)
    )
    expected = cox.predict((frame[dm.schema.input_columns].to_numpy(float) - mean) / std)
    scale = module.linear_choices["label_death"]["scale"]  # chosen on val with the penalty
    np.testing.assert_allclose(risk, scale * expected, atol=1e-4 * max(scale, 1.0))
    # The penalty kept in training holds the start where it is: its gradient there cancels the
    # training partial likelihood's (this split's start is scaled, so the penalty is centred).
    assert scale != 1.0 and module.linear_choices["label_death"]["center"] is not None
    term = member_nets(net)[0].linear_terms[0].weight
    (penalty_gradient,) = torch.autograd.grad(module.linear_penalty(), term)
    events = torch.tensor(train_csv.label_death.to_numpy() == 1)
    data = _per_event_objective(
        torch.tensor(x_train),
        torch.tensor(train_csv.period_death.to_numpy(float)),
        events,
        "efron",
        0.0,
    )
    weight = term.detach().double().requires_grad_(True)
    (data_gradient,) = torch.autograd.grad(data(weight), weight)
    np.testing.assert_allclose(penalty_gradient.numpy(), -data_gradient.numpy(), atol=2e-4)
    assert float(data_gradient.abs().max()) > 1e-2  # a gradient the penalty must cancel


def test_linear_term_default_and_refusals(dataset):
    csv = dataset(task="survival", n=60, images=False)
    assert _module(csv, linear="auto")[0].net.linear_terms is not None
    assert _module(csv)[0].net.linear_terms is None  # the class default (old checkpoints)
    # Discrete-time heads: off by default, allowed on request (the term then starts at zero).
    pmf = {"name": "survival", "model": "pmf", "num_durations": 4}
    assert _module(csv, linear="auto", task=pmf)[0].net.linear_terms is None
    module, dm = _module(csv, linear=True, task=pmf)
    module.start_linear_terms(dm.split_frame("train"))
    assert torch.count_nonzero(module.net.linear_terms[0].weight) == 0
    # With images the fusion is kept as it was unless asked.
    fused = dataset(task="survival", n=40)
    dm = NervusDataModule(fused, task="survival", batch_size=8, image_size=16)
    module = NervusModule(
        dm.schema, extractor="resnet18", tabular={"name": "mlp", "linear": "auto"}, image_size=16
    )
    assert module.net.linear_terms is None
    with pytest.raises(NervusInputError, match="model.tabular.linear must be"):
        _module(csv, linear="yes")
    no_inputs = dataset(task="survival", n=40, tabular=False)
    dm = NervusDataModule(no_inputs, task="survival", batch_size=8, image_size=16)
    with pytest.raises(NervusInputError, match="the data have none"):
        NervusModule(dm.schema, tabular={"name": "mlp", "linear": True}, image_size=16)


def test_default_survival_run_on_a_tabular_csv(dataset, tmp_path):
    """`data.csv=... task=survival model/extractor=none` with nothing else: the tabular recipe
    (full batch, linear term from the fitted Cox model) trains end to end; the checkpoint alone
    predicts the same risks and holds no per-patient values."""
    csv = dataset(task="survival", n=80, images=False)
    command = [f"data.csv={csv}", "task=survival", "model/extractor=none", *QUIET]
    cfg = compose_config(command)
    assert cfg.data.batch_size >= 80
    # One full-batch step per epoch: a network that learns a nonlinear effect needs a few
    # hundred (benchmarks/README.md, "The epoch cap of tabular survival"); early stopping ends
    # the rest.
    assert cfg.trainer.max_epochs >= 600 and cfg.early_stopping.patience == 20
    assert cfg.model.tabular.linear == "auto" and cfg.model.ensemble == 5
    # Fewer epochs than the default, to keep the test short; everything else is the default.
    cfg = compose_config([*command, "trainer.max_epochs=3"])
    run = tmp_path / "run"
    train(train_settings(cfg), run)
    curve = pd.read_csv(run / "learning_curve.csv")
    assert len(curve) == cfg.trainer.max_epochs
    pred = pd.read_csv(run / "predictions.csv")
    test = pred[pred.split == "test"]
    metrics = json.loads((run / "metrics.json").read_text())
    direct = concordance_index_censored(
        test.label_death == 1, test.period_death, test.risk_label_death
    )[0]
    assert metrics["test"]["label_death"]["c_index"] == pytest.approx(direct)
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    raw = torch.load(ckpt, weights_only=True)
    members = [f"net.members.{i}.linear_terms.0.weight" for i in range(5)]
    assert all(key in raw["state_dict"] for key in members)
    # The run folder counts the inputs the start's weights use (the start as the members got it).
    start = json.loads((run / "model_summary.json").read_text())["linear_start"]["label_death"]
    first = torch.load(run / "checkpoints" / "linear_start.ckpt", weights_only=True)
    weight = first["state_dict"]["net.members.0.linear_terms.0.weight"]
    assert start["inputs"] == weight.shape[1]
    assert start["inputs_used"] == int((weight != 0).any(dim=0).sum())
    n_rows = len(pd.read_csv(csv))
    for name, tensor in {**raw["state_dict"], **raw["nervus_task_state"]}.items():
        assert n_rows not in tensor.shape, f"{name} has one value per case"
    out = tmp_path / "pred"
    predict(ckpt, csv, out)
    again = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(again.risk_label_death, pred.risk_label_death, atol=1e-6)


def test_user_settings_win_over_the_survival_recipe(dataset):
    cfg = compose_config(
        ["data.csv=x.csv", "task=survival", "model/extractor=none", "trainer.max_epochs=3"]
    )
    assert cfg.trainer.max_epochs == 3
    preset = compose_config(["data=whas500"])  # the preset's own settings
    assert preset.data.batch_size == 4096 and preset.model.tabular.linear is False
    images = compose_config(["data.csv=x.csv", "task=survival"])
    assert images.trainer.max_epochs == compose_config(["data.csv=x.csv"]).trainer.max_epochs
