"""Explanations of several views per case: one Grad-CAM per view (checked against captum run on
a network where only that view varies), one Integrated Gradients input per view (checked against
captum), no map for a missing view, and training + the command line end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, compose_config
from PIL import Image
from test_explain import TinyCNN
from torch import nn

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.demo import write_multiview_demo
from nervus_lightning.models.attribution import (
    find_gradcam_layer,
    gradcam_layers,
    input_attributions,
    view_grad_cams,
)
from nervus_lightning.models.mixers import ConcatMixer
from nervus_lightning.models.net import NervusNet
from nervus_lightning.models.tabular import TabularMLP
from nervus_lightning.module import NervusModule
from nervus_lightning.workflows.explain import explain_module
from nervus_lightning.workflows.train import train

captum = pytest.importorskip("captum")

SIZE = 32
VIEWS = ["frontal", "lateral"]


def _net(shared: bool, seed: int = 0) -> NervusNet:
    """Two views (TinyCNN), one tabular input, the missing-view embedding; not trained."""
    torch.manual_seed(seed)
    image = TinyCNN() if shared else [TinyCNN(), TinyCNN()]
    tabular = TabularMLP(mean=[60.0], std=[12.0], hidden=[8], dropout=0.0)
    mixer = ConcatMixer([32, 32, 8], hidden=[16], dropout=0.0)
    net = NervusNet([2], image, tabular, mixer=mixer, views=VIEWS, missing_views=True).eval()
    with torch.no_grad():  # a non-zero embedding, so that a missing view is not a zero block
        for embedding in net.missing_view_features:
            embedding.normal_()
    return net


def _one_extractor_per_view(net: NervusNet) -> NervusNet:
    """The same function as ``net`` with the shared extractor copied per view: captum can then
    hook one view's layer without it firing for the other view too."""
    if net.view_extractors is not None:
        return net
    twin = copy.deepcopy(net)
    twin.view_extractors = nn.ModuleList(copy.deepcopy(net.image_extractor) for _ in VIEWS)
    twin.image_extractor = None
    return twin


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(4, 2, 1, SIZE, SIZE, generator=generator)
    tabular = torch.tensor([[50.0], [60.0], [70.0], [80.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    image[~mask] = 0.0  # as the data module gives a missing view
    return image, tabular, mask


def _direct_cam(net: NervusNet, v: int, image, tabular, mask, target, layer: str) -> np.ndarray:
    """captum's LayerGradCam on the whole network, only view ``v`` varying."""
    from captum.attr import LayerAttribution, LayerGradCam

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        views = [pixels if u == v else image[:, u] for u in range(len(VIEWS))]
        return net(torch.stack(views, 1), tabular, mask)[0]

    module = net.view_extractors[v].get_submodule(layer)
    cam = LayerGradCam(forward, module).attribute(image[:, v], target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach(), (SIZE, SIZE), "bilinear")
    return cam[:, 0].clamp_min(0).numpy()


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-view"])
def test_each_view_map_is_captums_with_only_that_view_varying(shared):
    net = _net(shared)
    image, tabular, mask = _batch()
    target = torch.tensor([0, 1, 1, 0])
    layers = gradcam_layers(net, "features")
    assert (layers[0] is layers[1]) == shared  # a shared extractor: one layer for both views
    maps = view_grad_cams(net, 0, image, tabular, layers, target, mask)
    assert len(maps) == 2 and all(m.shape == (4, SIZE, SIZE) for m in maps)
    twin = _one_extractor_per_view(net)
    for v in range(2):
        want = _direct_cam(twin, v, image, tabular, mask, target, "features")
        np.testing.assert_allclose(maps[v].numpy(), want, rtol=1e-4, atol=1e-10)
        assert maps[v].amax() > 0  # (an untrained net's map may be all negative evidence: 0)
    # The case without its lateral view: the pixels never reach the output, the map is zero.
    assert maps[1][1].abs().max() == 0
    assert not torch.allclose(maps[0], maps[1])


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-view"])
def test_view_attributions_match_captum_and_a_missing_view_gets_none(shared):
    from captum.attr import IntegratedGradients

    net = _net(shared)
    image, tabular, mask = _batch(1)
    mean = torch.tensor([60.0])
    target = torch.tensor([1, 0, 1, 1])
    values, delta = input_attributions(net, 0, image, tabular, mean, target, 24, mask)
    assert values.shape == (4, 3)  # frontal, lateral, input

    def forward(frontal, lateral, table, view_mask):
        return net(torch.stack([frontal, lateral], 1), table, view_mask)[0]

    direct = IntegratedGradients(forward).attribute(
        (image[:, 0], image[:, 1], tabular),
        baselines=(torch.zeros_like(image[:, 0]), torch.zeros_like(image[:, 1]), mean.expand(4, 1)),
        target=target,
        additional_forward_args=(mask,),
        n_steps=24,
    )
    for v in range(2):
        np.testing.assert_allclose(
            values[:, v], direct[v].sum(dim=(1, 2, 3)).numpy(), rtol=1e-4, atol=1e-7
        )
    np.testing.assert_allclose(values[:, 2], direct[2][:, 0].numpy(), rtol=1e-4, atol=1e-7)
    assert values[1, 1] == 0  # the missing lateral view
    assert np.abs(values[[0, 2, 3], 1]).min() > 0
    with torch.no_grad():
        out = forward(image[:, 0], image[:, 1], tabular, mask).gather(1, target[:, None])[:, 0]
        zero = torch.zeros_like(image[:, 0])
        base = forward(zero, zero, mean.expand(4, 1), mask).gather(1, target[:, None])[:, 0]
    np.testing.assert_allclose(values.sum(1), (out - base).numpy(), atol=2e-3)
    assert np.abs(delta).max() < 2e-3


@pytest.fixture(scope="module")
def gappy_csv(tmp_path_factory):
    """Forty two-view cases, a quarter of them without a lateral view."""
    return write_multiview_demo(tmp_path_factory.mktemp("mvx"), n=40, seed=3, missing_fraction=0.25)


def _module(schema, shared: bool) -> NervusModule:
    torch.manual_seed(0)
    if shared:  # a given module is shared by the views
        return NervusModule(schema, extractor=TinyCNN(), image_size=SIZE)
    return NervusModule(schema, extractor={"name": "resnet18", "shared": False}, image_size=SIZE)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-view"])
def test_explain_writes_one_map_per_present_view(gappy_csv, tmp_path, shared):
    data = NervusDataModule(gappy_csv, image_size=SIZE, missing_views="allow", batch_size=8)
    module = _module(data.schema, shared).eval()
    layer = "features" if shared else "backbone.layer2"  # 4 x 4 at 32 px
    frame = data.split_frame("test").head(6)
    lacking = frame["imgpath_lateral"].isna().to_numpy()
    assert lacking.any() and not lacking.all()
    out = tmp_path / "explain"
    result = explain_module(module, data, out, split="test", n=6, layer=layer, ig_steps=8)

    folder = out / "label_high_sum"
    written = {p.name for p in folder.glob("*.npy")}
    expected = {f"{u}__frontal.npy" for u in frame["uniqID"]}
    expected |= {f"{u}__lateral.npy" for u in frame.loc[~lacking, "uniqID"]}
    assert written == expected
    for name in written:
        cam = np.load(folder / name)
        assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32 and (cam >= 0).all()
        picture = np.asarray(Image.open(folder / name.replace(".npy", ".png")))
        assert picture.shape == (SIZE, SIZE, 3)
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    assert list(cases["missing_views"]) == ["lateral" if m else "" for m in lacking]
    assert (cases.loc[lacking, "map_lateral"] == "").all()
    assert (cases.loc[~lacking, "map_lateral"] != "").all()

    # The files are captum's: Grad-CAM with only that view varying, IG per view.
    batch = next(iter(torch.utils.data.DataLoader(data.dataset("test"), batch_size=6)))
    net = _one_extractor_per_view(module.net)
    image, tabular, mask = batch["image"], batch["tabular"], batch["view_mask"]
    target = torch.as_tensor(
        [["no", "yes"].index(c) for c in result.cases["explained"]], dtype=torch.long
    )
    inner = "features" if shared else "backbone.layer2"
    for v, view in enumerate(VIEWS):
        want = _direct_cam(net, v, image, tabular, mask, target, inner)
        for k, uniq_id in enumerate(frame["uniqID"]):
            if mask[k, v]:
                got = np.load(folder / f"{uniq_id}__{view}.npy")
                np.testing.assert_allclose(got, want[k], rtol=1e-4, atol=1e-10)

    attribution = pd.read_csv(out / "attribution.csv")
    assert sorted(attribution["input"]) == ["image/frontal", "image/lateral", "input_age"]
    from captum.attr import IntegratedGradients

    def forward(frontal, lateral, table, view_mask):
        return module.net(torch.stack([frontal, lateral], 1), table, view_mask)[0]

    mean = torch.tensor(module.schema.input_mean)
    direct = IntegratedGradients(forward).attribute(
        (image[:, 0], image[:, 1], tabular),
        baselines=(torch.zeros_like(image[:, 0]), torch.zeros_like(image[:, 1]), mean.expand(6, 1)),
        target=target,
        additional_forward_args=(mask,),
        n_steps=8,
    )
    want = {
        "image/frontal": direct[0].sum(dim=(1, 2, 3)).abs().mean().item(),
        "image/lateral": direct[1].sum(dim=(1, 2, 3)).abs().mean().item(),
        "input_age": direct[2].abs().mean().item(),
    }
    got = attribution.set_index("input")["mean_abs_attribution"].to_dict()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-8)


def test_image_only_views_are_still_compared(gappy_csv, tmp_path):
    data = NervusDataModule(
        gappy_csv, image_size=SIZE, missing_views="allow", use_tabular=False, batch_size=8
    )
    module = _module(data.schema, shared=True).eval()
    result = explain_module(module, data, tmp_path, split="val", n=4, layer="features", ig_steps=4)
    assert sorted(result.attribution["input"]) == ["image/frontal", "image/lateral"]
    assert find_gradcam_layer(module.net.image_extractor, "features").path == "features"


@pytest.fixture(scope="module")
def explained_run(gappy_csv, tmp_path_factory):
    """A two-view fused model trained with explain.after_training=true (missing views allowed)."""
    run = tmp_path_factory.mktemp("mvrun")
    torch.manual_seed(0)
    overrides = [
        f"data.csv={gappy_csv}",
        *FAST,
        f"data.image_size={SIZE}",
        "data.missing_views=allow",
        "model.extractor.shared=false",
        "evaluation.n_bootstrap=0",
        "explain.after_training=true",
        "explain.n=8",
        "explain.ig_steps=4",
        "explain.layer=backbone.stage2",
    ]
    train(train_settings(compose_config(overrides)), run)
    return run


def test_training_and_the_command_explain_every_view(explained_run, gappy_csv, tmp_path):
    run = explained_run
    cases = pd.read_csv(run / "explain" / "cases.csv", keep_default_na=False)
    assert len(cases) == 8 and {"map_frontal", "map_lateral", "missing_views"} <= set(cases)
    attribution = pd.read_csv(run / "explain" / "attribution.csv")
    assert set(attribution["input"]) == {"image/frontal", "image/lateral", "input_age"}
    page = (run / "evaluation" / "report.html").read_text()
    assert "Where the model looked" in page and "<small>lateral</small>" in page

    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    out = tmp_path / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning.explain",
            f"ckpt={ckpt}",
            f"data.csv={gappy_csv}",
            "split=val",
            "n=5",
            "explain.ig_steps=2",
            "explain.layer=backbone.stage2",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(gappy_csv)
    val = frame[frame["split"] == "val"].head(5)
    for row in val.itertuples():
        assert np.load(out / "label_high_sum" / f"{row.uniqID}__frontal.npy").shape == (SIZE, SIZE)
        lateral = out / "label_high_sum" / f"{row.uniqID}__lateral.npy"
        assert lateral.is_file() == isinstance(row.imgpath_lateral, str)
