"""End to end through the real Hydra configs: every task x input combination, checkpoints,
outputs, predict on an external CSV from the checkpoint alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config

from nervus_lightning.evaluation.thresholds import choose_threshold
from nervus_lightning.module import NervusModule
from nervus_lightning.predict import predict
from nervus_lightning.train import train

INPUTS = {
    "image": ["model/tabular=none"],
    "tabular": ["model/extractor=none"],
    "both": [],
}


def _run(csv, run_dir, overrides):
    cfg = compose_config([f"data.csv={csv}", *FAST, *overrides])
    objective = train(cfg, run_dir)
    return cfg, objective


@pytest.mark.parametrize("inputs", sorted(INPUTS))
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_task_and_inputs_end_to_end(dataset, tmp_path, task, inputs):
    csv = dataset(task=task, group=True)
    run = tmp_path / "run"
    cfg, objective = _run(csv, run, [f"task={task}", *INPUTS[inputs]])
    assert np.isfinite(objective)
    for name in (
        "predictions.csv",
        "metrics.json",
        "schema.json",
        "learning_curve.csv",
        "learning_curve.png",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    pred = pd.read_csv(run / "predictions.csv")
    source = pd.read_csv(csv)
    assert list(pred.uniqID) == list(source.uniqID)
    assert {"uniqID", "split", "group"} <= set(pred.columns)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"train", "val", "test"} <= set(metrics)
    if task == "classification":
        probs = pred[["prob_label_cls_no", "prob_label_cls_yes"]].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()
        three = pred[[f"prob_label_three_{c}" for c in "xyz"]].to_numpy()
        assert np.allclose(three.sum(axis=1), 1.0)
        assert set(pred.pred_label_cls) <= {"no", "yes"}
        assert {"auroc", "accuracy"} <= set(metrics["test"]["label_cls"])
    else:
        assert {"mae", "rmse", "r2"} <= set(metrics["test"]["label_value"])
        # predictions come back in the target's units, not standardised ones
        assert abs(pred.pred_label_value.mean() - source.label_value.mean()) < 3.0
    curve = pd.read_csv(run / "learning_curve.csv")
    assert {"epoch", "train_loss", "val_loss"} <= set(curve.columns) and len(curve) == 1
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2
    for path in ckpts:
        torch.load(path, weights_only=True)


def test_classifier_learns_the_signal(dataset, tmp_path):
    csv = dataset(n=96, images=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/extractor=none", "trainer.max_epochs=15", "optimizer.lr=0.01"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["label_cls"]["auroc"] > 0.85


def test_checkpoint_policies(dataset, tmp_path):
    csv = dataset(images=False)
    best_run, each_run = tmp_path / "best", tmp_path / "each"
    common = ["model/extractor=none", "trainer.max_epochs=6", "optimizer.lr=0.05"]
    _run(csv, best_run, [*common, "checkpoint=best"])
    _run(csv, each_run, [*common, "checkpoint=each"])
    best = sorted(p.name for p in (best_run / "checkpoints").glob("*.ckpt"))
    assert len(best) == 2 and "last.ckpt" in best
    val = pd.read_csv(each_run / "learning_curve.csv").val_loss.to_numpy()
    improvements = int(sum(v < min(val[:i], default=np.inf) for i, v in enumerate(val)))
    each = [p for p in (each_run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(each) == improvements >= 1
    losses = sorted(float(p.stem.split("val_loss")[1]) for p in each)
    assert len(set(losses)) == len(losses)


def test_predict_external_csv_from_checkpoint_alone(dataset, tmp_path):
    csv = dataset(extra_splits={"external_siteb": 6}, group=True)
    run = tmp_path / "run"
    _run(csv, run, [])
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    train_pred = pd.read_csv(run / "predictions.csv")
    ext = pd.read_csv(csv)
    ext = ext[ext.split == "external_siteb"]
    ext_csv = tmp_path / "external" / "ext.csv"
    ext_csv.parent.mkdir()
    # Paths relative to the new CSV's folder, as a hospital would ship them.
    ext = ext.assign(imgpath=[str((csv.parent / p).resolve()) for p in ext.imgpath])
    ext.to_csv(ext_csv, index=False)
    out = tmp_path / "predict_out"
    metrics = predict(ckpt, ext_csv, out)
    assert set(metrics) == {"external_siteb"}
    pred = pd.read_csv(out / "predictions.csv")
    expected = train_pred[train_pred.split == "external_siteb"].reset_index(drop=True)
    cols = ["prob_label_cls_no", "prob_label_cls_yes"]
    np.testing.assert_allclose(pred[cols].to_numpy(), expected[cols].to_numpy(), atol=1e-6)
    # The external report applies the operating threshold chosen on the training run's val
    # split (stored in the checkpoint), not one chosen on the external cases.
    stored = json.loads((run / "schema.json").read_text())["labels"][0]["threshold"]
    val = train_pred[train_pred.split == "val"]
    expected_threshold = choose_threshold(
        (val.label_cls == "yes").to_numpy(), val.prob_label_cls_yes.to_numpy(), "youden"
    )
    assert stored == pytest.approx(expected_threshold)
    report = pd.read_csv(out / "evaluation" / "metrics.csv")
    row = report[(report.label == "label_cls") & (report.metric == "threshold")]
    assert set(row.split) == {"external_siteb"}
    assert row.value.iloc[0] == pytest.approx(stored)
    assert (out / "evaluation" / "report.html").is_file()


def test_predict_unlabelled_csv(dataset, tmp_path):
    csv = dataset(images=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/extractor=none"])
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    new = pd.read_csv(csv).drop(columns=["label_cls", "label_three", "split"]).head(5)
    new_csv = tmp_path / "new.csv"
    new.to_csv(new_csv, index=False)
    metrics = predict(ckpt, new_csv, tmp_path / "out")
    assert metrics == {}
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(pred) == 5 and set(pred.split) == {"external"}


def test_load_from_checkpoint_restores_scaler(dataset, tmp_path):
    csv = dataset(images=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/extractor=none"])
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    module = NervusModule.load_from_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True)
    assert module.schema.labels[0].classes == ["no", "yes"]
    mean = raw["state_dict"]["net.tabular_extractor.mean"]
    np.testing.assert_allclose(mean.numpy(), module.schema.input_mean, rtol=1e-6)
    assert raw["hyper_parameters"]["run_config"]["task"]["name"] == "classification"


@pytest.mark.parametrize("bits,rgb,channels", [(16, False, 1), (8, True, 1), (8, False, 3)])
def test_image_formats_train(dataset, tmp_path, bits, rgb, channels):
    csv = dataset(bit_depth=bits, rgb=rgb, tabular=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/tabular=none", f"data.in_channels={channels}"])
    assert (run / "predictions.csv").is_file()


@pytest.mark.parametrize("aug", ["xray", "randaug", "trivialaugwide"])
def test_augmentations_and_weighted_sampler_run(dataset, tmp_path, aug):
    csv = dataset(tabular=False)
    _run(
        csv,
        tmp_path / "run",
        [
            "model/tabular=none",
            f"augmentation={aug}",
            "sampler=weighted",
            "scheduler=cosine",
            "optimizer=adamw",
        ],
    )


@pytest.mark.parametrize("opt,sched", [("sgd", "plateau"), ("radam", "none")])
def test_optimizers_and_schedulers(dataset, tmp_path, opt, sched):
    csv = dataset(images=False)
    _run(
        csv,
        tmp_path / "run",
        ["model/extractor=none", f"optimizer={opt}", f"scheduler={sched}", "trainer.max_epochs=2"],
    )


def test_resume_from_last_checkpoint(dataset, tmp_path):
    csv = dataset(images=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/extractor=none", "trainer.max_epochs=2"])
    last = run / "checkpoints" / "last.ckpt"
    run2 = tmp_path / "run2"
    _run(csv, run2, ["model/extractor=none", "trainer.max_epochs=3", f"ckpt_path={last}"])
    curve = pd.read_csv(run2 / "learning_curve.csv")
    assert list(curve.epoch) == [2]
