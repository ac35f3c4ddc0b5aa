"""MONAI's 3D extractors (``model/extractor=resnet18_3d``, ``densenet121_3d``) end to end, as a
user runs them: train one epoch on tiny volumes through the command line, predict from the
checkpoint alone (the training run's numbers again), and explain (3D Grad-CAM NIfTI over the
network's input), for classification and survival; and an ensemble of 3D networks.

ResNet18 takes 16^3 volumes (its grid at ``layer4``: 1 voxel); DenseNet121's four poolings
need 32 voxels a side. The command-line runs (three processes each, about a minute on two cores)
are marked slow; the default suite trains ResNet18 once in this process with the command line's
config, and an ensemble of small 3D CNNs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

nib = pytest.importorskip("nibabel")
pytest.importorskip("monai")
pytest.importorskip("captum")

from conftest import FAST, compose_config, run_command  # noqa: E402
from test_volume_training import make_volume_csv  # noqa: E402

from nervus_lightning.checkpoints import checkpoint_datamodule, load_trained  # noqa: E402
from nervus_lightning.data.volume_input import read_training_volume  # noqa: E402
from nervus_lightning.workflows.explain_volumes import network_affine  # noqa: E402

SIDE = {"resnet18_3d": 16, "densenet121_3d": 32}
N_CASES = 16  # 8 train, 4 val, 4 test


def monai_options(extractor: str, task: str) -> list[str]:
    """FAST with a MONAI extractor, small batches, no bootstrap."""
    side = SIDE[extractor]
    return [
        *[o for o in FAST if not o.startswith(("model/extractor", "data.batch_size"))],
        f"model/extractor={extractor}",
        f"data.volume_size=[{side},{side},{side}]",
        "data.batch_size=4",
        f"task={task}",
        "evaluation.n_bootstrap=0",
        # 8 training cases: the stored baseline's steps may rest on 2 (the default, 10, would
        # leave it empty here).
        *(["task.min_patients_per_step=2"] if task == "survival" else []),
    ]


def check_explanations(out, csv, module, side: int, n: int) -> None:
    """``n`` cases explained: each map a non-negative float32 NIfTI of the input's grid, with
    the affine of the volume as the network saw it; the input beside it is that volume (to half
    a step of 1/65535: a training run's image cache holds volumes as ``uint16``)."""
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == n * len(module.schema.labels)
    settings = checkpoint_datamodule(module, csv).dataset("test").volume
    frame = pd.read_csv(csv).set_index("uniqID")
    for row in cases.itertuples():
        cam, shown = nib.load(out / row.map), nib.load(out / row.input)
        assert cam.shape == shown.shape == (side, side, side)
        scan = csv.parent / frame.loc[row.uniqID, "imgpath"]
        np.testing.assert_allclose(cam.affine, network_affine(scan, settings), atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(shown.dataobj), read_training_volume(scan, settings)[0], atol=8e-6
        )
        values = np.asarray(cam.dataobj)
        assert values.dtype == np.float32 and np.isfinite(values).all() and (values >= 0).all()
        assert (out / row.overlay).is_file()


def train_predict_explain(tmp_path, extractor: str, task: str, extra: list[str] = ()) -> dict:
    """Train through the command line, predict the same CSV from the checkpoint, explain two
    test cases; check what every task shares; return the paths."""
    csv = make_volume_csv(tmp_path, n=N_CASES, task=task)
    side = SIDE[extractor]
    run = tmp_path / "run"
    done = run_command(
        "nervus_lightning",
        [f"data.csv={csv}", *monai_options(extractor, task), *extra, f"hydra.run.dir={run}"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    best = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    # What leaves the site: readable with weights_only, the 3D extractor recorded.
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["schema"]["volume"]["shape"] == [side] * 3
    trained = pd.read_csv(run / "predictions.csv")
    assert len(trained) == N_CASES

    done = run_command(
        "nervus_lightning.predict",
        [f"ckpt={best}", f"data.csv={csv}", f"hydra.run.dir={tmp_path / 'predict'}"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    again = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    numbers = [c for c in trained.select_dtypes("number").columns if c in again.columns]
    numbers = [c for c in numbers if c.startswith(("prob_", "risk_", "surv_", "pred_"))]
    assert numbers
    np.testing.assert_allclose(again[numbers], trained[numbers], rtol=1e-5, atol=1e-6)

    out = tmp_path / "explain"
    done = run_command(
        "nervus_lightning.explain",
        [
            f"ckpt={best}",
            f"data.csv={csv}",
            "n=2",
            "explain.ig_steps=2",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    module = load_trained(best, map_location="cpu")
    check_explanations(out, csv, module, side, n=2)
    return {"run": run, "best": best, "predictions": trained, "module": module}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "survival"])
@pytest.mark.parametrize("extractor", ["resnet18_3d", "densenet121_3d"])
def test_monai_extractors_train_predict_and_explain_through_the_command_line(
    tmp_path, extractor, task
):
    result = train_predict_explain(tmp_path, extractor, task)
    module, predictions = result["module"], result["predictions"]
    backbone = type(module.net.image_extractor.backbone).__name__
    assert backbone == {"resnet18_3d": "ResNet", "densenet121_3d": "DenseNet121"}[extractor]
    if task == "classification":
        probabilities = predictions[["prob_label_cls_no", "prob_label_cls_yes"]]
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    else:
        assert np.isfinite(predictions["risk_label_death"]).all()
        # The checkpoint holds the baseline hazard fitted after training.
        assert len(module.task.references[0].baseline.times) > 0


def train_in_process(tmp_path, overrides: list[str], task: str = "classification"):
    """Train with the composed command-line config in this process (explained after training);
    return the CSV, the run folder and the best checkpoint's module."""
    from omegaconf import OmegaConf

    from nervus_lightning.workflows.settings import TrainSettings
    from nervus_lightning.workflows.train import train

    csv = make_volume_csv(tmp_path, n=N_CASES, task=task)
    run = tmp_path / "run"
    config = compose_config(
        [
            f"data.csv={csv}",
            *overrides,
            "explain.after_training=true",
            "explain.n=2",
            "explain.ig_steps=2",
        ]
    )
    torch.manual_seed(0)
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), run)
    best = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    return csv, run, load_trained(best, map_location="cpu").eval()


def test_resnet18_3d_trains_predicts_from_its_checkpoint_and_explains(tmp_path):
    """The default suite's MONAI run (the command line's config, in this process)."""
    csv, run, module = train_in_process(tmp_path, monai_options("resnet18_3d", "classification"))
    assert type(module.net.image_extractor.backbone).__name__ == "ResNet"
    written = pd.read_csv(run / "predictions.csv")
    again = module.infer(checkpoint_datamodule(module, csv).predict_dataloader(), "cpu")[0]
    columns = ["prob_label_cls_no", "prob_label_cls_yes"]
    np.testing.assert_allclose(written[columns].to_numpy(), again, atol=1e-6)
    check_explanations(run / "explain", csv, module, SIDE["resnet18_3d"], n=2)
    assert "Where the model looked" in (run / "evaluation" / "report.html").read_text()


def test_an_ensemble_of_3d_networks_trains_and_its_map_is_the_members_mean(tmp_path):
    """model.ensemble=2 with a 3D extractor (small_cnn_3d: the path is the same for MONAI's), a
    survival task: trained, combined, explained as the mean of its members' maps."""
    from test_volume_training import FAST_3D

    from nervus_lightning.models.attribution import gradcam_layers, view_grad_cams
    from nervus_lightning.models.ensemble import EnsembleNet

    overrides = [*FAST_3D, "task=survival", "model.ensemble=2", "evaluation.n_bootstrap=0"]
    csv, run, module = train_in_process(tmp_path, overrides, task="survival")
    net = module.net
    assert isinstance(net, EnsembleNet) and len(net.members) == 2
    data = checkpoint_datamodule(module, csv)
    written = pd.read_csv(run / "predictions.csv")
    again = module.infer(data.predict_dataloader(), "cpu")[0]
    np.testing.assert_allclose(written["risk_label_death"], again[:, 0], rtol=1e-5, atol=1e-6)
    check_explanations(run / "explain", csv, module, 16, n=2)

    batch = next(iter(torch.utils.data.DataLoader(data.dataset("test"), batch_size=2)))
    image, tabular = batch["image"], batch["tabular"]
    maps = [
        view_grad_cams(member, 0, image, tabular, gradcam_layers(member, None), 0, volume=True)[0]
        for member in net.members
    ]
    assert not torch.allclose(maps[0], maps[1])  # two members with their own weights
    cases = pd.read_csv(run / "explain" / "cases.csv")
    for k, row in enumerate(cases.itertuples()):
        got = np.asarray(nib.load(run / "explain" / row.map).dataobj)
        want = ((maps[0][k] + maps[1][k]) / 2).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)
