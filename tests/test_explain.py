"""Explanations: Grad-CAM maps that depend on what the model learned and point at the evidence,
the target layer of every torchvision family offered, the command line, and the per-input
attributions checked against captum itself."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config, make_dataset
from PIL import Image
from torch import nn

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.models.attribution import (
    find_gradcam_layer,
    grad_cam,
    head_forward,
    input_attributions,
)
from nervus_lightning.models.extractors import TorchvisionExtractor
from nervus_lightning.models.mixers import ConcatMixer
from nervus_lightning.models.net import NervusNet
from nervus_lightning.models.tabular import TabularMLP
from nervus_lightning.workflows.explain import attribution_table, explain
from nervus_lightning.workflows.train import train

captum = pytest.importorskip("captum")

SIZE = 32
SQUARE = 6


class TinyCNN(nn.Module):
    """A small extractor of one's own (no torchvision family): needs ``explain.layer``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.out_features = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).amax(dim=(2, 3))


def square_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images; label 1 exactly when a bright square sits in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    images = np.clip(0.3 + rng.normal(0, 0.08, (n, 1, SIZE, SIZE)), 0, 1)
    labels = rng.integers(0, 2, n)
    half = SIZE // 2
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, half - SQUARE + 1, 2)
        images[i, 0, y : y + SQUARE, x : x + SQUARE] = 0.95
    return torch.tensor(images, dtype=torch.float32), torch.tensor(labels)


def _net(seed: int) -> NervusNet:
    torch.manual_seed(seed)
    return NervusNet([2], image_extractor=TinyCNN())


@pytest.fixture(scope="module")
def square_model():
    """A TinyCNN trained until it tells the square apart (a few seconds on a CPU)."""
    images, labels = square_images(128, seed=0)
    net = _net(0)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: more threads only wait for each other
    try:
        for _ in range(10):
            for batch in torch.randperm(len(images)).split(32):
                loss = nn.functional.cross_entropy(net(image=images[batch])[0], labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    test_images, test_labels = square_images(64, seed=1)
    with torch.no_grad():
        accuracy = (net(image=test_images)[0].argmax(1) == test_labels).float().mean()
    assert accuracy > 0.95, f"the square model did not learn (test accuracy {accuracy:.2f})"
    return net, test_images[test_labels == 1]


def _maps(net: NervusNet, images: torch.Tensor) -> np.ndarray:
    layer = find_gradcam_layer(net.image_extractor, "features")
    return grad_cam(head_forward(net, 0, True), images, layer, 1).numpy()


def test_maps_fall_in_the_quadrant_that_decides_the_label(square_model):
    net, positives = square_model
    maps = _maps(net, positives)
    assert maps.shape == (len(positives), SIZE, SIZE) and (maps >= 0).all()
    half = SIZE // 2
    share = maps[:, :half, :half].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    # Chance is 25 %; the evidence is all in the top-left quadrant.
    assert np.median(share) > 0.6, np.round(share, 2)
    assert (share > 0.5).mean() > 0.8


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; a constant map (no location at all) counts as 0."""
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_maps_change_when_trained_weights_are_randomised(square_model):
    """Adebayo et al.'s model-randomisation check: a map that stays the same when the learned
    weights are replaced by random ones shows the image, not the model. A random network also
    responds to a bright square, so single draws vary (correlations from 0 to about 0.7 here);
    on average over draws the maps must be far from the trained model's."""
    net, positives = square_model
    trained = _maps(net, positives)
    again = _maps(net, positives)
    assert np.mean([_correlation(a, b) for a, b in zip(trained, again, strict=True)]) > 0.999
    per_draw = []
    for seed in range(1, 9):
        random = _maps(_net(seed).eval(), positives)
        per_draw.append(np.mean([_correlation(a, b) for a, b in zip(trained, random, strict=True)]))
    assert np.mean(per_draw) < 0.5, np.round(per_draw, 2)


FAMILIES = {
    "resnet18": "backbone.layer4",
    "resnet50": "backbone.layer4",
    "densenet121": "backbone.features",
    "efficientnet_b0": "backbone.features.8",
    "efficientnet_v2_s": "backbone.features.7",
    "convnext_tiny": "backbone.features.7",
    "vit_b_16": "backbone.encoder.layers.encoder_layer_11.ln_1",
    # Not offered as YAMLs, but any torchvision name works as model/extractor.name.
    "mobilenet_v3_small": "backbone.features.12",
    "regnet_y_400mf": "backbone.trunk_output",
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_target_layer_of_every_offered_torchvision_family(name):
    from pathlib import Path

    from nervus_lightning.config import config_dir

    offered = {p.stem for p in Path(config_dir(), "model", "extractor").glob("*.yaml")} - {
        "none",
        "small_cnn",  # not torchvision: it names its own layer (test below)
    }
    # The 3D extractors read volumes, which explain refuses (test_volume_training.py).
    offered = {name for name in offered if not name.endswith("_3d")}
    assert offered <= set(FAMILIES), f"add the new extractor(s) {offered - set(FAMILIES)} here"
    torch.manual_seed(0)
    extractor = TorchvisionExtractor(name, in_channels=1, image_size=SIZE).eval()
    head = nn.Linear(extractor.out_features, 2)
    layer = find_gradcam_layer(extractor)
    assert layer.path == FAMILIES[name]
    image = torch.rand(2, 1, SIZE, SIZE)
    maps = grad_cam(lambda x: head(extractor(x)), image, layer, torch.tensor([0, 1]))
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    # The network itself is left as it was (the ViT grid view is only hooked in meanwhile).
    assert not extractor.backbone._forward_hooks and not layer.module._forward_hooks


def test_small_cnn_names_its_last_stage_for_grad_cam():
    from nervus_lightning.models.extractors import SmallCNN

    torch.manual_seed(0)
    extractor = SmallCNN(in_channels=1, widths=(8, 16, 32)).eval()
    layer = find_gradcam_layer(extractor)
    assert layer.path == "backbone.stage3" and layer.module is extractor.backbone.stage3
    head = nn.Linear(extractor.out_features, 2)
    image = torch.rand(2, 1, SIZE, SIZE)
    maps = grad_cam(lambda x: head(extractor(x)), image, layer, torch.tensor([0, 1]))
    assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all() and (maps >= 0).all()
    assert maps.flatten(1).amax(1).gt(0).all()  # the last stage has a real map: not all zero
    # explain.layer still wins over the extractor's own choice.
    assert find_gradcam_layer(extractor, "backbone.stage2").path == "backbone.stage2"


def test_own_extractor_needs_a_layer_path():
    extractor = TinyCNN()
    with pytest.raises(NervusInputError, match=r"explain\.layer=<module path>.*features"):
        find_gradcam_layer(extractor)
    with pytest.raises(NervusInputError, match=r"explain\.layer='features\.9' is not a module"):
        find_gradcam_layer(extractor, "features.9")
    assert find_gradcam_layer(extractor, "features.6").module is extractor.features[6]


def _fused(seed: int = 0) -> NervusNet:
    torch.manual_seed(seed)
    tabular = TabularMLP(mean=[1.0, 50.0], std=[0.5, 10.0], hidden=[8], dropout=0.0)
    mixer = ConcatMixer([32, 8], hidden=[16], dropout=0.0)
    return NervusNet([2, 1], image_extractor=TinyCNN(), tabular_extractor=tabular, mixer=mixer)


def test_attributions_match_captum_and_add_up():
    from captum.attr import IntegratedGradients

    net = _fused().eval()
    # input_b cannot move the output: its first-layer weights are zero.
    with torch.no_grad():
        net.tabular_extractor.net[0].weight[:, 1] = 0.0
    images, _ = square_images(6, seed=3)
    tabular = torch.tensor([[1.0 + i, 40.0 + 5 * i] for i in range(6)])
    mean = torch.tensor([1.0, 50.0])
    target = torch.tensor([0, 1, 1, 0, 1, 0])
    values, delta = input_attributions(net, 0, images, tabular, mean, target, n_steps=64)
    assert values.shape == (6, 3)

    forward = lambda image, table: net(image=image, tabular=table)[0]  # noqa: E731
    direct = IntegratedGradients(forward).attribute(
        (images, tabular),
        baselines=(torch.zeros_like(images), mean.expand(6, 2)),
        target=target,
        n_steps=64,
    )
    np.testing.assert_allclose(values[:, 0], direct[0].sum(dim=(1, 2, 3)).numpy(), rtol=1e-4)
    np.testing.assert_allclose(values[:, 1:], direct[1].numpy(), rtol=1e-4, atol=1e-7)
    # Completeness: the attributions add up to the output minus the output at the baseline.
    with torch.no_grad():
        out = forward(images, tabular).gather(1, target[:, None])[:, 0]
        base = forward(torch.zeros_like(images), mean.expand(6, 2)).gather(1, target[:, None])
    np.testing.assert_allclose(values.sum(1), (out - base[:, 0]).numpy(), atol=2e-3)
    assert np.abs(delta).max() < 2e-3

    table = attribution_table([values], ["label_cls"], ["image", "input_a", "input_b"])
    np.testing.assert_allclose(table["mean_abs_attribution"], np.sort(np.abs(values).mean(0))[::-1])
    assert table["share"].sum() == pytest.approx(1.0)
    assert table["input"].iloc[-1] == "input_b" and table["mean_abs_attribution"].iloc[-1] == 0


@pytest.fixture(scope="module")
def explained_run(tmp_path_factory):
    """A fused classifier trained with explain.after_training=true (small_cnn, 32 px)."""
    root = tmp_path_factory.mktemp("explained")
    csv = make_dataset(root, size=SIZE)
    overrides = [
        f"data.csv={csv}",
        *FAST,
        f"data.image_size={SIZE}",
        "explain.after_training=true",
        "explain.n=5",
        "explain.ig_steps=8",
        "explain.layer=backbone.stage2",  # 16 x 16 at 32 px (the default stage3: 8 x 8)
    ]
    torch.manual_seed(0)
    run = root / "run"
    train(train_settings(compose_config(overrides)), run)
    return root, csv, run


def test_training_writes_explanations_and_the_report_shows_them(explained_run):
    _, _, run = explained_run
    cases = pd.read_csv(run / "explain" / "cases.csv", dtype={"truth": str, "explained": str})
    assert len(cases) == 5 * 2 and set(cases["label"]) == {"label_cls", "label_three"}
    assert (cases["split"] == "test").all()
    # The explained class is the predicted class of predictions.csv (stored threshold applied).
    predictions = pd.read_csv(run / "predictions.csv", dtype=str).set_index("uniqID")
    for row in cases.itertuples():
        assert row.explained == predictions.loc[row.uniqID, f"pred_{row.label}"]
        prob = float(predictions.loc[row.uniqID, f"prob_{row.label}_{row.explained}"])
        assert row.score == pytest.approx(prob, abs=1e-5)
    attribution = pd.read_csv(run / "explain" / "attribution.csv")
    assert set(attribution["input"]) == {"image", "input_a", "input_b"}
    page = (run / "evaluation" / "report.html").read_text()
    assert "Where the model looked" in page and "How much each input moved" in page


def test_explain_command_writes_maps_and_overlays(explained_run):
    root, csv, run = explained_run
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    out = root / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning.explain",
            f"ckpt={ckpt}",
            f"data.csv={csv}",
            "split=val",
            "n=3",
            "explain.ig_steps=4",
            "explain.layer=backbone.stage2",
            f"out={out}",
            f"hydra.run.dir={root / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("explained 3 case(s) of split val") == 1  # the final line, once
    frame = pd.read_csv(csv)
    val_ids = frame.loc[frame["split"] == "val", "uniqID"].head(3)
    for label in ("label_cls", "label_three"):
        for uniq_id in val_ids:
            cam = np.load(out / label / f"{uniq_id}.npy")
            assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32 and (cam >= 0).all()
            picture = np.asarray(Image.open(out / label / f"{uniq_id}.png"))
            assert picture.shape == (SIZE, SIZE, 3) and picture.dtype == np.uint8
    assert len(pd.read_csv(out / "cases.csv")) == 6

    with pytest.raises(NervusInputError, match=r"split='external' has no rows"):
        explain(ckpt, csv, out, split="external")


def test_after_training_options_are_checked_before_the_first_epoch(tmp_path):
    csv = make_dataset(tmp_path, n=16, size=16)
    base = [f"data.csv={csv}", *FAST, "explain.after_training=true"]
    with pytest.raises(NervusInputError, match=r"split='external' has no rows"):
        train(train_settings(compose_config([*base, "explain.split=external"])), tmp_path / "a")
    with pytest.raises(NervusInputError, match=r"explain\.layer='nowhere' is not a module"):
        train(train_settings(compose_config([*base, "explain.layer=nowhere"])), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tabular_regression_model_gets_attributions_only(tmp_path):
    from nervus_lightning.data.datamodule import NervusDataModule
    from nervus_lightning.module import NervusModule
    from nervus_lightning.workflows.explain import explain_module

    csv = make_dataset(tmp_path, task="regression", images=False, n=24)
    data = NervusDataModule(csv, task="regression", use_images=False, batch_size=8)
    torch.manual_seed(0)
    module = NervusModule(data.schema, extractor=None, tabular={"name": "mlp", "hidden": [8]})
    result = explain_module(module, data, tmp_path / "explain", split="test", n=4, ig_steps=8)
    assert not (tmp_path / "explain" / "label_value").exists()  # no image, no maps
    assert list(result.cases["explained"]) == ["output"] * 4
    expected = module.infer(data.eval_dataloader("test"))[0][:4, 0]
    np.testing.assert_allclose(result.cases["score"], expected, rtol=1e-5)
    written = pd.read_csv(tmp_path / "explain" / "attribution.csv")
    assert sorted(written["input"]) == ["input_a", "input_b"] and (written["cases"] == 4).all()
