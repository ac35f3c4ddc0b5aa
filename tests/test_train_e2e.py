"""End to end through the real Hydra configs: every task x input combination, checkpoints,
outputs, predict on an external CSV from the checkpoint alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, assert_objective_is_the_kept_models, compose_config
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.images import read_image
from nervus_lightning.data.sampling import EpochSampler
from nervus_lightning.evaluation.thresholds import choose_threshold
from nervus_lightning.module import NervusModule
from nervus_lightning.outputs import predict_frame
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import build_datamodule, train

INPUTS = {
    "image": ["model/tabular=none"],
    "tabular": ["model/extractor=none"],
    "both": [],
}


def _run(csv, run_dir, overrides):
    cfg = compose_config([f"data.csv={csv}", *FAST, *overrides])
    objective = train(train_settings(cfg), run_dir)
    return cfg, objective


def _best_checkpoint(run):
    return json.loads((run / "summary.json").read_text())["best_checkpoint"]


def _assert_reloaded_best_checkpoint_reproduces(run, csv):
    """The best checkpoint, loaded alone, predicts every case as ``predictions.csv`` says."""
    module = NervusModule.load_from_checkpoint(_best_checkpoint(run), map_location="cpu")
    dm = NervusDataModule(
        csv,
        schema=module.schema,
        image_size=module.hparams.image_size,
        in_channels=module.hparams.in_channels,
        batch_size=7,  # another batching than training's: predictions must not depend on it
    )
    again = predict_frame(module, dm, module.infer(dm.predict_dataloader(), "cpu"))
    written = pd.read_csv(run / "predictions.csv")
    predicted = [c for c in written.columns if c.startswith(("prob_", "pred_", "risk_", "surv_"))]
    assert predicted and list(again.columns) == list(written.columns)
    for col in predicted:
        if pd.api.types.is_numeric_dtype(written[col]):
            np.testing.assert_allclose(again[col].to_numpy(float), written[col], atol=1e-5)
        else:
            assert list(again[col]) == list(written[col]), col


def _assert_learning_curve(run, epochs):
    """One row per epoch, finite losses, and the summary's objective is its lowest val_loss (or
    the linear start's, before training, when the start was kept)."""
    curve = pd.read_csv(run / "learning_curve.csv")
    assert list(curve.epoch) == list(range(epochs))
    assert np.isfinite(curve[["train_loss", "val_loss"]].to_numpy()).all()
    assert_objective_is_the_kept_models(json.loads((run / "summary.json").read_text()), curve)
    return curve


def _assert_probabilities(pred, label, classes):
    probs = pred[[f"prob_{label}_{c}" for c in classes]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert set(pred[f"pred_{label}"]) <= set(classes)
    return probs


def _optimizer_state(ckpt_path):
    """The optimiser's first parameter group and the scheduler states stored in a checkpoint."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    (optimizer,) = ckpt["optimizer_states"]
    return optimizer["param_groups"][0], ckpt["lr_schedulers"]


def _assert_optimizer_class(group, optimizer_class, **options):
    """The stored parameter group has the options of ``optimizer_class`` (and of no other)."""
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    expected = set(optimizer_class(dummy, **options).state_dict()["param_groups"][0])
    assert set(group) - {"initial_lr"} == expected  # schedulers add initial_lr


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
    # Every CSV case predicted exactly once, in CSV order, with its split and group.
    assert list(pred.uniqID) == list(source.uniqID)
    assert list(pred.split) == list(source.split) and list(pred.group) == list(source.group)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"train", "val", "test"} <= set(metrics)
    test = pred[pred.split == "test"]
    if task == "classification":
        _assert_probabilities(pred, "label_cls", ["no", "yes"])
        three = _assert_probabilities(pred, "label_three", list("xyz"))
        got = metrics["test"]["label_cls"]
        assert got["auroc"] == pytest.approx(
            roc_auc_score(test.label_cls == "yes", test.prob_label_cls_yes)
        )
        assert got["accuracy"] == pytest.approx(accuracy_score(test.label_cls, test.pred_label_cls))
        # Multi-class: arg-max prediction, macro one-vs-rest AUROC.
        assert list(pred.pred_label_three) == list(np.array(list("xyz"))[three.argmax(axis=1)])
        test_three = test[[f"prob_label_three_{c}" for c in "xyz"]].to_numpy()
        assert metrics["test"]["label_three"]["auroc"] == pytest.approx(
            roc_auc_score(test.label_three, test_three, multi_class="ovr", labels=list("xyz"))
        )
    else:
        got = metrics["test"]["label_value"]
        truth, guess = test.label_value, test.pred_label_value
        assert got["mae"] == pytest.approx(mean_absolute_error(truth, guess))
        assert got["rmse"] == pytest.approx(root_mean_squared_error(truth, guess))
        assert got["r2"] == pytest.approx(r2_score(truth, guess))
        # predictions come back in the target's units, not standardised ones
        assert abs(pred.pred_label_value.mean() - source.label_value.mean()) < 3.0
    _assert_learning_curve(run, epochs=1)
    assert objective == pytest.approx(
        json.loads((run / "summary.json").read_text())["best_val_loss"]
    )
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2
    for path in ckpts:
        torch.load(path, weights_only=True)
    _assert_reloaded_best_checkpoint_reproduces(run, csv)


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
    # The kept checkpoint holds what predict, export and explain read; only last.ckpt carries
    # the optimiser and callback states that resuming needs.
    kept = torch.load(_best_checkpoint(best_run), weights_only=True)
    last = torch.load(best_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in kept and "callbacks" not in kept
    assert kept["state_dict"].keys() == last["state_dict"].keys()
    assert last["optimizer_states"] and last["callbacks"]
    val = pd.read_csv(each_run / "learning_curve.csv").val_loss.to_numpy()
    improvements = int(sum(v < min(val[:i], default=np.inf) for i, v in enumerate(val)))
    each = [p for p in (each_run / "checkpoints").glob("epoch*.ckpt")]
    assert len(each) == improvements >= 1
    losses = sorted(float(p.stem.split("val_loss")[1]) for p in each)
    assert len(set(losses)) == len(losses)
    # The model as it started (a linear term on tabular inputs) was the first candidate.
    others = {p.name for p in (each_run / "checkpoints").glob("*.ckpt")} - {p.name for p in each}
    assert others == {"last.ckpt", "linear_start.ckpt"}


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
    assert list(pred.uniqID) == list(new.uniqID) and set(pred.split) == {"external"}
    assert not {"label_cls", "label_three"} & set(pred.columns)
    # Without labels the model predicts these cases as it did in the training run.
    trained = pd.read_csv(run / "predictions.csv").head(5)
    for col in ("prob_label_cls_yes", "prob_label_three_x", "pred_label_cls", "pred_label_three"):
        if col.startswith("prob_"):
            np.testing.assert_allclose(pred[col], trained[col], atol=1e-6)
        else:
            assert list(pred[col]) == list(trained[col]), col


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
    cfg, _ = _run(csv, run, ["model/tabular=none", f"data.in_channels={channels}"])
    # The images the model sees: every channel asked for, the file's full range kept.
    images = next(iter(build_datamodule(train_settings(cfg)).eval_dataloader("train")))["image"]
    assert images.shape[1:] == (channels, 16, 16) and images.dtype == torch.float32
    first = np.asarray(Image.open(csv.parent / "img" / "case000.png"), dtype=np.float64)
    first = first[..., 0] if rgb else first  # the RGB files are grey in all three channels
    scale = 65535 if bits == 16 else 255
    for c in range(channels):
        np.testing.assert_allclose(images[0, c].numpy(), first / scale, atol=1e-6)
    levels = torch.unique(images).numel()
    if bits == 16:
        assert levels > 256  # not squeezed through 8 bits
    else:
        assert levels <= 256
    pred = pd.read_csv(run / "predictions.csv")
    assert list(pred.uniqID) == list(pd.read_csv(csv).uniqID)
    _assert_probabilities(pred, "label_cls", ["no", "yes"])
    _assert_reloaded_best_checkpoint_reproduces(run, csv)


@pytest.mark.parametrize("aug", ["xray", "randaug", "trivialaugwide"])
def test_augmentations_weighted_sampler_and_scheduler(dataset, tmp_path, aug):
    csv = dataset(tabular=False)
    frame = pd.read_csv(csv).drop(columns="label_three")
    train_rows = frame.index[frame.split == "train"]
    # 6 of 24 training cases are "yes": the weighted sampler must draw them half of the time.
    frame.loc[train_rows, "label_cls"] = np.where(np.arange(len(train_rows)) % 4 == 0, "yes", "no")
    frame.to_csv(csv, index=False)
    run = tmp_path / "run"
    cfg, _ = _run(
        csv,
        run,
        [
            "model/tabular=none",
            f"augmentation={aug}",
            "sampler=weighted",
            "scheduler=cosine",
            "optimizer=adamw",
        ],
    )
    _assert_learning_curve(run, epochs=1)
    dm = build_datamodule(train_settings(cfg))

    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSampler) and sampler.weights is not None
    drawn = []
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn.append(list(sampler))
    drawn = np.concatenate(drawn)
    is_yes = dm.dataset("train").frame.label_cls.to_numpy() == "yes"
    assert is_yes.mean() == 0.25
    assert is_yes[drawn].mean() == pytest.approx(0.5, abs=0.03)

    # Augmentation changes training images, never validation or test images.
    torch.manual_seed(0)
    augmented, plain = dm.dataset("train", train=True), dm.dataset("train")
    changed = [not torch.equal(augmented[i]["image"], plain[i]["image"]) for i in range(8)]
    assert sum(changed) >= 4, changed
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        frame = dm.split_frame(split)
        images = torch.cat([batch["image"] for batch in loader])
        assert len(images) == len(frame)
        for image, path in zip(images, frame.imgpath, strict=True):
            # 16-pixel files at image_size 16: the evaluation transform leaves them as read.
            torch.testing.assert_close(image, read_image(path, 1), rtol=0, atol=1e-6)

    # Cosine annealing over max_epochs=1 (T_max=1): the epoch's scheduler step, taken before
    # the checkpoint is written, brings the lr from 1e-3 down to eta_min=0.
    group, schedulers = _optimizer_state(run / "checkpoints" / "last.ckpt")
    _assert_optimizer_class(group, torch.optim.AdamW)
    assert group["decoupled_weight_decay"] is True  # AdamW, not Adam
    assert group["weight_decay"] == pytest.approx(1e-2)
    (scheduler,) = schedulers
    assert scheduler["T_max"] == 1 and scheduler["last_epoch"] == 1
    assert scheduler["base_lrs"] == pytest.approx([1e-3])
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)
    _assert_reloaded_best_checkpoint_reproduces(run, csv)


def test_plateau_scheduler_lowers_sgd_learning_rate(dataset, tmp_path):
    csv = dataset(images=False)
    run = tmp_path / "run"
    # threshold=1 asks for a val_loss below 0 to count as improvement: none ever does, so with
    # patience 0 every scheduler step (once per epoch, on val_loss) divides the lr by 10.
    overrides = ["optimizer=sgd", "scheduler=plateau", "scheduler.patience=0"]
    _run(
        csv,
        run,
        ["model/extractor=none", *overrides, "+scheduler.threshold=1.0", "trainer.max_epochs=2"],
    )
    _assert_learning_curve(run, epochs=2)
    group, schedulers = _optimizer_state(run / "checkpoints" / "last.ckpt")
    _assert_optimizer_class(group, torch.optim.SGD, lr=0.01)
    assert group["momentum"] == 0.9 and group["nesterov"] is True
    (scheduler,) = schedulers
    assert scheduler["patience"] == 0 and scheduler["threshold"] == 1.0
    steps = scheduler["last_epoch"]
    assert steps >= 1 and group["lr"] == pytest.approx(0.01 * 0.1**steps)


def test_optimizer_without_scheduler_keeps_its_learning_rate(dataset, tmp_path):
    csv = dataset(images=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/extractor=none", "optimizer=radam", "scheduler=none"])
    group, schedulers = _optimizer_state(run / "checkpoints" / "last.ckpt")
    _assert_optimizer_class(group, torch.optim.RAdam)
    assert schedulers == [] and group["lr"] == pytest.approx(1e-3)


def test_resume_from_last_checkpoint(dataset, tmp_path):
    csv = dataset(images=False)
    run = tmp_path / "run"
    _run(csv, run, ["model/extractor=none", "trainer.max_epochs=2"])
    last = run / "checkpoints" / "last.ckpt"
    run2 = tmp_path / "run2"
    _run(csv, run2, ["model/extractor=none", "trainer.max_epochs=3", f"ckpt_path={last}"])
    curve = pd.read_csv(run2 / "learning_curve.csv")
    assert list(curve.epoch) == [0, 1, 2]  # the curve goes on from the checkpoint


def test_small_cnn_trains_predicts_alone_and_explains(dataset, tmp_path):
    """``model/extractor=small_cnn`` end to end: a fused survival model, its checkpoint alone
    reproduces the predictions, and its Grad-CAM uses the network's own last stage."""
    from nervus_lightning.workflows.explain import explain

    csv = dataset(task="survival")
    run = tmp_path / "run"
    _run(csv, run, ["task=survival", "model/extractor=small_cnn", "trainer.max_epochs=2"])
    module = NervusModule.load_from_checkpoint(_best_checkpoint(run), map_location="cpu")
    extractor = module.net.image_extractor
    assert type(extractor).__name__ == "SmallCNN" and extractor.out_features == 128
    _assert_reloaded_best_checkpoint_reproduces(run, csv)
    risk = pd.read_csv(run / "predictions.csv")["risk_label_death"]
    assert np.isfinite(risk).all() and risk.nunique() > 1
    out = tmp_path / "explain"
    explain(_best_checkpoint(run), csv, out, split="val", n=3)
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == 3
    cam = np.load(out / "label_death" / f"{cases.uniqID.iloc[0]}.npy")
    assert cam.shape == (16, 16) and np.isfinite(cam).all() and (cam >= 0).all()
