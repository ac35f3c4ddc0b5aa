"""The model as it starts (its linear terms at the penalised linear fit) competes with the epochs'
checkpoints on the validation loss: kept unless an epoch beat it by more than one standard
error, removed when one did, and said so in the model summary, the report and the checkpoint
itself."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config

from nervus_lightning.callbacks import LINEAR_START_CHECKPOINT
from nervus_lightning.checkpoints import CHOICE_KEY
from nervus_lightning.cli.train import train_settings
from nervus_lightning.outputs import checkpoint_choice
from nervus_lightning.start_choice import RESAMPLES, loss_difference_se, split_loss
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train

QUIET = [
    "model/extractor=none",
    "evaluation.n_bootstrap=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "model.ensemble=1",
]


def _survival_csv(path, n: int, risk_of) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6))
    time = rng.exponential(np.exp(-risk_of(x)))
    censor = rng.exponential(2 * np.median(time), n)
    frame = pd.DataFrame({"uniqID": [f"p{i}" for i in range(n)]})
    frame["split"] = np.repeat(["train", "val", "test"], [n * 3 // 5, n // 5, n - n * 4 // 5])
    for i in range(x.shape[1]):
        frame[f"input_{i}"] = x[:, i]
    frame["label_death"] = (time <= censor).astype(int)
    frame["period_death"] = np.minimum(time, censor).round(4)
    frame.to_csv(path, index=False)
    return frame


def _run(csv, run, overrides):
    train(
        train_settings(compose_config([f"data.csv={csv}", "task=survival", *QUIET, *overrides])),
        run,
    )
    return json.loads((run / "summary.json").read_text())


def test_the_start_is_kept_when_training_only_made_it_worse(tmp_path):
    """A linear effect and a learning rate that wrecks the network from its first epoch: every
    epoch's validation loss is above the start's, so the start is the model, every prediction
    is the linear fit's, and the run folder, the report and predict say so."""
    csv = tmp_path / "data.csv"
    frame = _survival_csv(csv, 250, lambda x: x[:, 0] - 0.7 * x[:, 1])
    overrides = ["optimizer.lr=0.5", "model.tabular.dropout=0", "trainer.max_epochs=6"]
    summary = _run(csv, tmp_path / "run", overrides)
    kept = summary["best_checkpoint"]
    assert kept.endswith(LINEAR_START_CHECKPOINT), kept
    raw = torch.load(kept, map_location="cpu", weights_only=True)
    assert raw[CHOICE_KEY]["linear_start"] is True
    assert checkpoint_choice(raw)["best_epoch"] is None
    # checkpoint=best (the default) keeps one model: the epoch that lost is removed.
    names = {p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")}
    assert names == {LINEAR_START_CHECKPOINT, "last.ckpt"}
    # The network's path adds nothing: each head's last layer is still zero.
    heads = [k for k in raw["state_dict"] if ".heads." in k and k.endswith("weight")]
    assert heads and not raw["state_dict"][max(heads)].any()
    # So the risk is the linear predictor of the standardised inputs.
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    x = frame[[f"input_{i}" for i in range(6)]].to_numpy()
    train_x = x[frame.split == "train"]
    z = (x - train_x.mean(0)) / train_x.std(0)
    linear = np.linalg.lstsq(z, pred.risk_label_death.to_numpy(), rcond=None)
    fitted = z @ linear[0]
    np.testing.assert_allclose(
        fitted, pred.risk_label_death - pred.risk_label_death.mean() + fitted.mean(), atol=1e-3
    )
    model = json.loads((tmp_path / "run" / "model_summary.json").read_text())
    chosen = dict(model["rows"])["checkpoint chosen"]
    assert chosen.startswith("the linear start, before training") and model["best_epoch"] is None
    report = (tmp_path / "run" / "evaluation" / "report.html").read_text(encoding="utf-8")
    assert "the linear start, before training" in report
    out = tmp_path / "pred"
    predict(kept, csv, out)
    again = json.loads((out / "model_summary.json").read_text())
    assert dict(again["rows"])["checkpoint chosen"].startswith("the linear start")
    np.testing.assert_allclose(
        pd.read_csv(out / "predictions.csv").risk_label_death, pred.risk_label_death, atol=1e-6
    )


def test_the_start_gives_way_to_a_network_that_beat_it(tmp_path):
    """A strong nonlinear effect (risk = 1.5 x0^2, no linear part): the trained network beats
    the linear start on validation, is kept, and the start's file is removed."""
    csv = tmp_path / "data.csv"
    _survival_csv(csv, 400, lambda x: 1.5 * x[:, 0] ** 2)
    summary = _run(csv, tmp_path / "run", ["optimizer.lr=0.01", "trainer.max_epochs=40"])
    assert not summary["best_checkpoint"].endswith(LINEAR_START_CHECKPOINT)
    assert not (tmp_path / "run" / "checkpoints" / LINEAR_START_CHECKPOINT).exists()
    model = json.loads((tmp_path / "run" / "model_summary.json").read_text())
    assert model["best_epoch"] is not None and "linear_start_kept" not in model
    # The network's gain is more than the noise of the validation rows, and the table says so.
    kept = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    choice = kept[CHOICE_KEY]["start_choice"]
    assert choice["start_loss"] - choice["best_loss"] > choice["se"] > 0 and not choice["kept"]
    assert "more than one standard error" in dict(model["rows"])["checkpoint chosen"]


def test_a_network_better_by_less_than_one_standard_error_gives_way_to_the_start(tmp_path):
    """A mostly linear effect with a weak curve, 48 validation cases and a learning rate that
    lets the network chase noise: its best epoch's validation loss is below the start's, but by
    less than the standard error of that difference, so the simpler start is kept (the rule of
    glmnet's lambda.1se), and the model table and the checkpoint give the numbers it was chosen
    on. (With a purely linear effect the start, scaled on the validation rows, is no longer
    beaten by any epoch at all.)"""
    csv = tmp_path / "data.csv"
    _survival_csv(csv, 240, lambda x: x[:, 0] - 0.7 * x[:, 1] + 0.5 * x[:, 2] ** 2)
    summary = _run(csv, tmp_path / "run", ["optimizer.lr=0.01", "trainer.max_epochs=40"])
    kept = summary["best_checkpoint"]
    assert kept.endswith(LINEAR_START_CHECKPOINT), kept
    choice = torch.load(kept, map_location="cpu", weights_only=True)[CHOICE_KEY]["start_choice"]
    assert 0 < choice["start_loss"] - choice["best_loss"] < choice["se"], choice
    assert choice["kept"] and choice["resamples"] == RESAMPLES
    # The best epoch's loss is the lowest of the learning curve (the run's own val_loss).
    curve = pd.read_csv(tmp_path / "run" / "learning_curve.csv")
    assert choice["best_loss"] == pytest.approx(curve.val_loss.min(), rel=1e-5)
    assert summary["best_val_loss"] == pytest.approx(choice["start_loss"])
    model = json.loads((tmp_path / "run" / "model_summary.json").read_text())
    chosen = dict(model["rows"])["checkpoint chosen"]
    assert chosen.startswith("the linear start") and "less than one standard error" in chosen


def test_the_standard_error_of_a_loss_difference_matches_the_textbook_one():
    """For a loss that is a mean over cases (squared error), the bootstrap standard error of
    the difference of two models' losses on the same cases is the standard error of the mean
    of the per-case differences, sd / sqrt(n), up to the resampling error (about 5 % at 200
    resamples)."""

    class SquaredError:
        def loss(self, output, batch, j):
            return ((output[:, 0] - batch["target"][:, j]) ** 2).mean()

    module = SimpleNamespace(schema=SimpleNamespace(labels=[None]), task=SquaredError())
    rng = np.random.default_rng(1)
    n = 400
    target = torch.as_tensor(rng.normal(size=(n, 1)))
    first = target + torch.as_tensor(rng.normal(scale=1.0, size=(n, 1)))
    # Two models that err alike, as a network and its own start do: only the paired
    # resampling (both losses on the same resampled cases) sees how little they differ.
    second = first + torch.as_tensor(rng.normal(scale=0.3, size=(n, 1)))
    index = torch.arange(n)
    a = {"index": index, "target": target, "output0": first}
    b = {"index": index, "target": target, "output0": second}
    assert split_loss(module, a) == pytest.approx(float(((first - target) ** 2).mean()))
    per_case = ((first - target) ** 2 - (second - target) ** 2).numpy().ravel()
    textbook = per_case.std(ddof=1) / np.sqrt(n)
    assert loss_difference_se(module, a, b) == pytest.approx(textbook, rel=0.15)
    assert loss_difference_se(module, a, b, resamples=2000) == pytest.approx(textbook, rel=0.06)
