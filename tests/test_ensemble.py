"""model.ensemble=N: the combined output is the members' averaged prediction for every task,
each member trains as if alone, and an ensemble trains, predicts from its checkpoint alone,
explains and exports like one model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config, make_dataset

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import LabelSpec, NervusInputError
from nervus_lightning.models.ensemble import EnsembleNet
from nervus_lightning.module import NervusModule
from nervus_lightning.survival import competing, discrete
from nervus_lightning.tasks.classification import ClassificationTask
from nervus_lightning.tasks.regression import RegressionTask
from nervus_lightning.tasks.survival import SurvivalTask
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train


def _members(shape: tuple[int, ...], n: int = 4, scale: float = 3.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [scale * torch.randn(*shape, generator=generator) for _ in range(n)]


# -- the combined output is the averaged prediction -------------------------------------------


def test_classification_combines_probabilities_not_logits():
    task = ClassificationTask([LabelSpec("label_y", "classification", classes=["a", "b", "c"])])
    outputs = _members((7, 3))
    combined = task.transform_output(task.combine(outputs, 0), 0)
    expected = torch.stack([torch.softmax(o, 1) for o in outputs]).mean(0)
    torch.testing.assert_close(combined, expected, atol=1e-6, rtol=0)
    # Averaging logits would give another (sharper) answer: the test tells them apart.
    logit_mean = torch.softmax(torch.stack(outputs).mean(0), 1)
    assert (logit_mean - expected).abs().max() > 0.01
    assert task.averaged == "probabilities"


def test_regression_and_cox_average_what_users_see():
    spec = LabelSpec("label_v", "regression", mean=50.0, std=10.0)
    task = RegressionTask([spec])
    outputs = _members((7, 1))
    combined = task.transform_output(task.combine(outputs, 0), 0)
    expected = torch.stack([task.transform_output(o, 0) for o in outputs]).mean(0)
    torch.testing.assert_close(combined, expected)

    cox = SurvivalTask([LabelSpec("label_death", "survival", period="period_death")])
    torch.testing.assert_close(cox.combine(outputs, 0), torch.stack(outputs).mean(0))
    # What the report's model table says is averaged (it said "probabilities" for every kind).
    assert cox.averaged == "log hazards" and task.averaged == "predictions"


@pytest.mark.parametrize("model", ["logistic_hazard", "pmf", "deephit"])
def test_discrete_models_combine_survival_curves(model):
    task = SurvivalTask(
        [LabelSpec("label_death", "survival", period="period_death")],
        model=model,
        num_durations=6,
    )
    outputs = _members((9, 6))
    combined = discrete.grid_survival(model, task.combine(outputs, 0))
    expected = torch.stack([discrete.grid_survival(model, o) for o in outputs]).mean(0)
    torch.testing.assert_close(combined, expected, atol=2e-6, rtol=0)
    assert (combined.diff(dim=1) <= 1e-6).all()
    assert task.averaged == "curves"


def test_competing_risks_combine_each_cause_incidence():
    spec = LabelSpec("label_death", "survival", period="period_death", causes=2)
    task = SurvivalTask([spec], model="deephit", num_durations=5)
    outputs = _members((6, 10))
    combined = competing.grid_cif(task.combine(outputs, 0), 2)
    expected = torch.stack([competing.grid_cif(o, 2) for o in outputs]).mean(0)
    torch.testing.assert_close(combined, expected, atol=2e-6, rtol=0)


# -- each member learns as if alone -----------------------------------------------------------


def test_each_member_trains_exactly_as_a_network_trained_alone(tmp_path):
    csv = make_dataset(tmp_path, images=False, n=32)
    data = NervusDataModule(csv, use_images=False, batch_size=8)
    data.setup("fit")
    options = {
        "extractor": None,
        "tabular": {"name": "mlp", "hidden": [8], "dropout": 0.0},
        "optimizer": {"name": "adam", "lr": 0.01},
    }
    torch.manual_seed(0)
    ensemble = NervusModule(data.schema, ensemble=3, **options)
    assert isinstance(ensemble.net, EnsembleNet) and len(ensemble.net.members) == 3
    alone = NervusModule(data.schema, **options)
    alone.net.load_state_dict(ensemble.net.members[1].state_dict())
    first = [p.detach().clone() for p in ensemble.net.members[0].parameters()]
    optimisers = [m.configure_optimizers() for m in (ensemble, alone)]
    batches = list(data.train_dataloader())
    for batch in batches * 3:  # no trainer: the epoch's train_loss is never logged
        for module, optimiser in zip((ensemble, alone), optimisers, strict=True):
            optimiser.zero_grad()
            module.training_step(batch, 0).backward()
            optimiser.step()
    for mine, theirs in zip(
        ensemble.net.members[1].parameters(), alone.net.parameters(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
    # The members moved from different starts (not one network repeated).
    moved = [p.detach() for p in ensemble.net.members[0].parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(first, moved, strict=True))
    assert not torch.equal(
        next(ensemble.net.members[0].parameters()), next(ensemble.net.members[1].parameters())
    )


@pytest.mark.parametrize("value", [0, 1.5, "three", True])
def test_bad_ensemble_size_is_a_clear_error_before_training(tmp_path, value):
    csv = make_dataset(tmp_path, images=False, n=16)
    cfg = compose_config([f"data.csv={csv}", *FAST, "model/extractor=none"])
    cfg.model.ensemble = value
    with pytest.raises(NervusInputError, match=r"model\.ensemble="):
        train(train_settings(cfg), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- end to end ---------------------------------------------------------------------------------


def test_fused_classifier_ensemble_trains_predicts_explains_and_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from nervus_lightning.workflows.export import export_model

    csv = make_dataset(tmp_path, n=48)
    run = tmp_path / "run"
    torch.manual_seed(0)
    cfg = compose_config(
        [
            f"data.csv={csv}",
            *FAST,
            "model.ensemble=3",
            "trainer.max_epochs=2",
            "explain.after_training=true",
            "explain.n=3",
            "explain.ig_steps=4",
        ]
    )
    train(train_settings(cfg), run)
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    members = {k.split(".")[2] for k in state if k.startswith("net.members.")}
    assert members == {"0", "1", "2"}
    # The checkpoint alone predicts what training wrote.
    written = pd.read_csv(run / "predictions.csv").set_index("uniqID")
    predict(ckpt, csv, tmp_path / "pred", device="cpu")
    again = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("uniqID")
    columns = [c for c in written if c.startswith("prob_")]
    np.testing.assert_allclose(
        again.loc[written.index, columns].to_numpy(), written[columns].to_numpy(), atol=1e-5
    )
    # Explanations: a map per explained case (the members' maps averaged).
    cases = pd.read_csv(run / "explain" / "cases.csv")
    assert len(cases) == 3 * 2 and cases["map"].notna().all()
    cam = np.load(run / "explain" / cases["map"].iloc[0])
    assert cam.shape == (16, 16) and (cam >= 0).all() and cam.max() > 0
    # ONNX: the exported graph is the combined model.
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    model_file, _ = export_model(ckpt, "onnx", out=tmp_path / "model.onnx")
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    data = NervusDataModule(csv, schema=module.schema, image_size=16, batch_size=7)
    loader = data.predict_dataloader()
    expected = module.infer(loader, "cpu")
    names = [o.name for o in session.get_outputs()]
    got = [[] for _ in names]
    for batch in loader:
        feeds = {"image": batch["image"].numpy(), "tabular": batch["tabular"].numpy()}
        for j, out in enumerate(session.run(names, feeds)):
            got[j].append(out)
    for j, out in enumerate(got):
        np.testing.assert_allclose(np.concatenate(out), expected[j], atol=1e-4, rtol=0)
    probs = written[[c for c in columns if c.startswith("prob_label_cls_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_cox_ensemble_members_start_at_the_linear_fit_and_train_end_to_end(tmp_path):
    csv = make_dataset(tmp_path, task="survival", images=False, n=64)
    data = NervusDataModule(csv, task="survival", use_images=False, batch_size=64)
    data.setup("fit")
    linear = {"name": "mlp", "linear": "auto"}  # what the training config gives
    module = NervusModule(data.schema, extractor=None, tabular=linear, ensemble=2)
    rows = data.split_frame()
    rows = rows[rows.split.isin(["train", "val"])].reset_index(drop=True)
    module.start_linear_terms(rows)
    inputs = module.net.members[0].tabular_extractor.standardise(
        torch.as_tensor(rows[data.schema.input_columns].to_numpy(np.float32))
    )
    train_rows = np.flatnonzero(rows.split == "train")
    val_rows = np.flatnonzero(rows.split == "val")
    fit = module.task.linear_start(inputs, rows, train_rows, val_rows, 0).weight.float()
    for member in module.net.members:
        torch.testing.assert_close(member.linear_terms[0].weight, fit)
    assert fit.abs().sum() > 0

    run = tmp_path / "run"
    torch.manual_seed(0)
    cfg = compose_config(
        [f"data.csv={csv}", "task=survival", *FAST, "model/extractor=none", "model.ensemble=2"]
    )
    train(train_settings(cfg), run)
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    written = pd.read_csv(run / "predictions.csv").set_index("uniqID")
    predict(ckpt, csv, tmp_path / "pred", device="cpu")
    again = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("uniqID")
    columns = [c for c in written if c.startswith(("risk_", "surv_"))]
    assert columns
    np.testing.assert_allclose(
        again.loc[written.index, columns].to_numpy(), written[columns].to_numpy(), atol=1e-5
    )
