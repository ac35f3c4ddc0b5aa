"""The model as it starts (its linear terms at the penalised linear fit) competes with the epochs'
checkpoints on the validation loss: kept when no epoch beat it, removed when one did, and said
so in the model summary, the report and the checkpoint itself."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from conftest import compose_config

from nervus_lightning.callbacks import LINEAR_START_CHECKPOINT
from nervus_lightning.checkpoints import CHOICE_KEY
from nervus_lightning.cli.train import train_settings
from nervus_lightning.outputs import checkpoint_choice
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
