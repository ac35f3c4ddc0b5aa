"""The path after training: a checkpoint that travels, options checked before the first epoch,
class names that survive every file, one metrics pipeline and one threshold."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config, make_dataset, skip_without_disk
from sklearn.metrics import roc_auc_score
from torchvision.models import resnet18

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.tasks.classification import obvious_positive_class
from nervus_lightning.workflows.evaluate import evaluate_run, read_predictions
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import train

TABULAR = ["model/extractor=none"]


def _train(csv, run, overrides):
    cfg = compose_config([f"data.csv={csv}", *FAST, *overrides])
    return train(train_settings(cfg), run)


def _metrics_csv(run) -> pd.DataFrame:
    return pd.read_csv(run / "evaluation" / "metrics.csv")


# -- the checkpoint travels ---------------------------------------------------------------------


def test_pretrained_checkpoint_predicts_without_the_weights_file(dataset, tmp_path):
    skip_without_disk(tmp_path, 600)
    weights = tmp_path / "imagenet_resnet18.pth"
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), weights)
    csv = dataset(extra_splits={"external": 6})
    run = tmp_path / "run"
    _train(
        csv,
        run,
        [
            "model/extractor=resnet18",
            "model.extractor.pretrained=true",
            f"model.extractor.weights_path={weights}",
        ],
    )
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    raw = torch.load(ckpt, weights_only=True)
    assert raw["hyper_parameters"]["extractor"]["pretrained"] is False
    assert raw["hyper_parameters"]["extractor"]["weights_path"] is None
    weights.unlink()  # the external site has no ImageNet file and none of our paths

    out = tmp_path / "site_b"
    predict(ckpt, csv, out, device="cpu", evaluation={"n_bootstrap": 20})
    cols = ["prob_label_cls_no", "prob_label_cls_yes", "prob_label_three_x"]
    at_training = pd.read_csv(run / "predictions.csv")
    at_site_b = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(at_site_b[cols], at_training[cols], atol=1e-6)
    # The same external metrics with the stored threshold, though the CSV's val rows are
    # there: predict never re-chooses it.
    ext_train = _metrics_csv(run).query("split == 'external' and group == 'all'")
    ext_pred = _metrics_csv(out).query("split == 'external' and group == 'all'")
    pd.testing.assert_frame_equal(ext_train.reset_index(drop=True), ext_pred.reset_index(drop=True))


# -- every option checked before the first epoch -------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["evaluation.threshold=youdn"], "evaluation.threshold"),
        (["evaluation.ci=1.5"], "evaluation.ci"),
        (["evaluation.n_bootstrap=-3"], "evaluation.n_bootstrap"),
        (["evaluation.target_sensitivity=0"], "evaluation.target_sensitivity"),
        (["+evaluation.positive_class={label_cls:maybe}"], "evaluation.positive_class.label_cls"),
        (["+evaluation.positive_class={label_nope:yes}"], "evaluation.positive_class"),
        (["optimizer.lr=-1"], "optimizer"),
        (["+optimizer.betas=[0.9]"], "optimizer"),
        (["scheduler=plateau", "scheduler.factor=2.0"], "scheduler"),
        (["scheduler=cosine", "+scheduler.t_mx=3"], "scheduler.t_mx"),
        (["task.label_smoothing=2"], "task.label_smoothing"),
        (["+task.smoothing=0.1"], "task.smoothing"),
        (["model/extractor=resnet18", "model.mixer.norm=btch"], "model.mixer.norm"),
        (["model.tabular.norm=lyer"], "model.tabular.norm"),
        (["augmentation.name=xry"], "augmentation.name"),
        (["trainer.precision=17-mixed"], "trainer"),
        (["+trainer.max_epoch=3"], "trainer"),
    ],
)
def test_option_typos_stop_before_the_first_epoch(dataset, tmp_path, overrides, key):
    csv = dataset(images="model/extractor=resnet18" in overrides)
    extractor = [] if "model/extractor=resnet18" in overrides else TABULAR
    run = tmp_path / "run"
    with pytest.raises(NervusInputError, match=key.replace(".", r"\.")):
        _train(csv, run, [*extractor, *overrides])
    assert not (run / "checkpoints").exists()
    assert not (run / "learning_curve.csv").exists()


@pytest.mark.parametrize(
    "task, override, key",
    [("regression", "task.loss=mea", "task.loss"), ("survival", "task.ties=efrn", "task.ties")],
)
def test_task_option_typos_stop_before_the_first_epoch(dataset, tmp_path, task, override, key):
    csv = dataset(task=task, images=False)
    run = tmp_path / "run"
    with pytest.raises(NervusInputError, match=key.replace(".", r"\.")):
        _train(csv, run, [f"task={task}", *TABULAR, override])
    assert not (run / "checkpoints").exists()


def test_command_line_typo_exits_2_before_training(tmp_path):
    csv = make_dataset(tmp_path, images=False)
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning",
            f"data.csv={csv}",
            "model/extractor=none",
            "evaluation.threshold=youdn",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "evaluation.threshold='youdn'" in result.stderr
    assert "Did you mean 'youden'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "checkpoints").exists()


# -- positive class ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes, positive",
    [
        (["0", "1"], "1"),
        (["0.0", "1.0"], "1.0"),
        (["-1", "1"], "1"),
        (["False", "True"], "True"),
        (["no", "yes"], "yes"),
        (["Negative", "Positive"], "Positive"),
        (["abnormal", "normal"], None),
        (["01", "02"], None),
        (["benign", "malignant"], None),
        (["0", "2"], None),
    ],
)
def test_obvious_positive_class(classes, positive):
    assert obvious_positive_class(classes) == positive


# -- class names round-trip through predictions.csv and evaluate ---------------------------------

PAIRS = {
    "label_zero": (["01", "02"], "02"),
    "label_float": (["0.0", "1.0"], None),
    "label_bool": (["False", "True"], None),
    "label_words": (["abnormal", "normal"], "abnormal"),
    "label_comma": (["no finding", "nodule, solid"], "nodule, solid"),
}


def _named_classes_csv(root) -> tuple:
    rng = np.random.default_rng(3)
    n = 64
    signal = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "uniqID": [f"c{i}" for i in range(n)],
            "input_a": signal + rng.normal(0, 0.4, n),
            "input_b": rng.normal(0, 1, n),
            "split": np.array(["train"] * 32 + ["val"] * 16 + ["test"] * 16),
        }
    )
    for name, (classes, _) in PAIRS.items():
        flip = rng.random(n) < 0.15
        frame[name] = np.where(signal ^ flip, classes[1], classes[0])
    frame["label_multi"] = np.array(["1.0", "01", "True"], dtype=object)[
        (signal + rng.integers(0, 2, n)) % 3
    ]
    csv = root / "named.csv"
    frame.to_csv(csv, index=False)
    return csv, frame


def test_class_names_round_trip_exactly(tmp_path):
    csv, frame = _named_classes_csv(tmp_path)
    run = tmp_path / "run"
    positives = ",".join(f"{k}:'{p}'" for k, (_, p) in PAIRS.items() if p is not None)
    _train(csv, run, [*TABULAR, f"+evaluation.positive_class={{{positives}}}"])
    schema = json.loads((run / "schema.json").read_text())
    labels = {lab["name"]: lab for lab in schema["labels"]}
    for name, (classes, positive) in PAIRS.items():
        assert labels[name]["classes"] == classes
        assert labels[name]["positive_class"] == (positive or classes[1])
    assert labels["label_multi"]["classes"] == ["01", "1.0", "True"] or sorted(
        labels["label_multi"]["classes"]
    ) == sorted(["01", "1.0", "True"])

    predictions = read_predictions(run / "predictions.csv", schema)
    for name in [*PAIRS, "label_multi"]:
        classes = labels[name]["classes"]
        assert predictions[name].tolist() == frame[name].tolist()
        assert set(predictions[f"pred_{name}"]) <= set(classes)
        probs = predictions[[f"prob_{name}_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)

    table = _metrics_csv(run)
    for name in [*PAIRS, "label_multi"]:
        rows = table[(table.split == "test") & (table.group == "all") & (table.label == name)]
        assert rows.set_index("metric").loc["n", "value"] == 16
        assert np.isfinite(rows.set_index("metric").loc["auroc", "value"])
    # Rebuilding the report from the files gives the same numbers.
    rebuilt = evaluate_run(run / "predictions.csv", tmp_path / "again", n_bootstrap=20)
    pd.testing.assert_frame_equal(rebuilt.reset_index(drop=True), table)


def test_non_obvious_binary_label_needs_a_positive_class(tmp_path):
    csv, _ = _named_classes_csv(tmp_path)
    with pytest.raises(NervusInputError, match=r"evaluation\.positive_class=\{label_words:"):
        _train(csv, tmp_path / "run", [*TABULAR, "data.labels=[label_words]"])
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- one pipeline, one threshold -----------------------------------------------------------------


def test_metrics_json_equals_metrics_csv_and_thresholded_predictions(dataset, tmp_path):
    csv = dataset(images=False, n=96, extra_splits={"external": 10})
    run = tmp_path / "run"
    _train(csv, run, [*TABULAR, "trainer.max_epochs=3", "optimizer.lr=0.01"])
    metrics = json.loads((run / "metrics.json").read_text())
    table = _metrics_csv(run).query("group == 'all'")
    assert len(table) > 0
    for row in table.itertuples():
        value = metrics[row.split][row.label][row.metric]
        if pd.isna(row.value):
            assert value is None
        else:
            assert value == pytest.approx(row.value, abs=1e-12)
    # pred_<label> of a binary label is the operating point the metrics use.
    schema = json.loads((run / "schema.json").read_text())
    threshold = schema["labels"][0]["threshold"]
    predictions = read_predictions(run / "predictions.csv", schema)
    expected = np.where(predictions.prob_label_cls_yes >= threshold, "yes", "no")
    assert predictions.pred_label_cls.tolist() == expected.tolist()
    test = predictions[predictions.split == "test"]
    positive = test.label_cls == "yes"
    sensitivity = (test.pred_label_cls[positive] == "yes").mean()
    assert metrics["test"]["label_cls"]["sensitivity"] == pytest.approx(sensitivity)


def test_predict_override_is_said_and_needs_val_rows(dataset, tmp_path):
    csv = dataset(images=False, n=64)
    run = tmp_path / "run"
    _train(csv, run, TABULAR)
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    source = pd.read_csv(csv)
    no_val = tmp_path / "no_val.csv"
    source[source.split == "test"].assign(split="external").to_csv(no_val, index=False)
    with pytest.raises(NervusInputError, match="no 'val' rows"):
        predict(
            ckpt, no_val, tmp_path / "p1", device="cpu", evaluation={"threshold": "sensitivity"}
        )
    # Without an override the stored threshold is used, val rows or not.
    predict(ckpt, no_val, tmp_path / "p2", device="cpu", evaluation={"n_bootstrap": 0})
    stored = json.loads((run / "schema.json").read_text())["labels"][0]["threshold"]
    thresholds = _metrics_csv(tmp_path / "p2").query("metric == 'threshold'").value
    assert thresholds.tolist() == pytest.approx([stored] * len(thresholds))
    # An override with val rows re-chooses the threshold there and says so.
    predict(
        ckpt,
        csv,
        tmp_path / "p3",
        device="cpu",
        evaluation={"threshold": "sensitivity", "target_sensitivity": 0.8, "n_bootstrap": 0},
    )
    notes = pd.read_csv(tmp_path / "p3" / "evaluation" / "metrics_notes.csv")
    report = (tmp_path / "p3" / "evaluation" / "report.html").read_text()
    assert "overridden" in report
    assert notes.note.str.contains("overridden|override").any() or "overridden" in report


def test_validation_auroc_is_computed_on_probabilities(dataset, tmp_path):
    csv = dataset(images=False, n=96)
    run = tmp_path / "run"
    # No linear start: the kept model must be the epoch the learning curve scored (a kept
    # linear start has no row there).
    _train(csv, run, [*TABULAR, "trainer.max_epochs=1", "model.tabular.linear=false"])
    curve = pd.read_csv(run / "learning_curve.csv")
    predictions = pd.read_csv(run / "predictions.csv")
    val = predictions[predictions.split == "val"]
    expected = roc_auc_score(
        val.label_three,
        val[[f"prob_label_three_{c}" for c in "xyz"]].to_numpy(),
        multi_class="ovr",
        average="macro",
    )
    assert curve["val_auroc_label_three"].iloc[-1] == pytest.approx(expected, abs=1e-5)
