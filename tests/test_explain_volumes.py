"""Grad-CAM of volume models: the 3D map points at the evidence, lies in the world where the
network's input lies (NIfTI affines), and the command writes the maps, inputs and mid-slice PNGs
of a small_cnn_3d trained one epoch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

nib = pytest.importorskip("nibabel")
pytest.importorskip("captum")

from conftest import compose_config, run_command  # noqa: E402
from test_volume_training import FAST_3D, SIZE, make_volume_csv  # noqa: E402

from nervus_lightning.data.volume_input import VolumeSettings, read_training_volume  # noqa: E402
from nervus_lightning.models.attribution import (  # noqa: E402
    GradCamLayer,
    find_gradcam_layer,
    grad_cam,
)
from nervus_lightning.models.extractors import SmallCNN3d  # noqa: E402
from nervus_lightning.workflows.explain_volumes import (  # noqa: E402
    mid_slice_overlay,
    network_affine,
)
from nervus_lightning.workflows.settings import TrainSettings  # noqa: E402
from nervus_lightning.workflows.train import train  # noqa: E402

REGION = (slice(0, 8), slice(0, 8), slice(8, 16))  # the octant the toy network reads


class RegionReader(nn.Module):
    """Fixed weights: channel 0 is the input inside :data:`REGION`, channel 1 outside it, both
    pooled 2 x 2 x 2 (the layer Grad-CAM weighs, an 8^3 grid); the output is channel 0's mean."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, 16, 16, 16)
        mask[(0, 0, *REGION)] = 1
        self.register_buffer("mask", mask)
        self.layer = nn.AvgPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = torch.cat([x * self.mask, x * (1 - self.mask)], dim=1)
        features = self.layer(channels)
        return features[:, :1].mean(dim=(2, 3, 4))


def test_map_is_hot_where_the_network_looks_not_at_a_brighter_blob_elsewhere():
    volume = torch.full((1, 1, 16, 16, 16), 0.2)
    volume[0, 0, 2:5, 3:6, 11:14] = 0.8  # inside the region the network reads
    volume[0, 0, 10:14, 10:14, 2:6] = 1.0  # brighter, but outside it
    net = RegionReader()
    cam = grad_cam(net, volume, GradCamLayer(net.layer, "layer"), 0)[0].numpy()
    assert cam.shape == (16, 16, 16) and (cam >= 0).all()
    assert np.unravel_index(cam.argmax(), cam.shape) in {
        (d, h, w) for d in range(2, 5) for h in range(3, 6) for w in range(11, 14)
    }
    outside = np.ones(cam.shape, bool)
    outside[REGION] = False
    # Trilinear upsampling spreads the 8^3 grid by at most one voxel across the region's edge.
    assert cam[10:14, 10:14, 2:6].max() == 0
    assert cam[outside].sum() < 0.1 * cam.sum()


def test_small_cnn_3d_layer_is_its_last_stage():
    layer = find_gradcam_layer(SmallCNN3d(widths=[4, 8, 8]))
    assert layer.path == "backbone.stage3"


def test_network_affine_puts_the_input_voxel_where_the_scan_has_it(tmp_path):
    # A scan of 1 mm voxels, translated, with one bright voxel; read at 1 mm into 16^3: one axis
    # cropped (20 -> 16), one padded (12 -> 16), one kept. No resampling: the voxel stays whole.
    raw = np.zeros((20, 12, 16), np.int16)
    raw[15, 3, 9] = 1000
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = [-7.0, 12.0, 30.0]
    image = nib.Nifti1Image(raw, ras)
    image.header["cal_min"], image.header["cal_max"] = 0, 1000
    path = tmp_path / "scan.nii.gz"
    nib.save(image, str(path))
    settings = VolumeSettings((16, 16, 16), (1.0, 1.0, 1.0), "auto")
    tensor = read_training_volume(path, settings)[0].numpy()
    voxel = np.unravel_index(tensor.argmax(), tensor.shape)
    world = network_affine(path, settings) @ [*voxel, 1.0]
    np.testing.assert_allclose(world, ras @ [15, 3, 9, 1.0], atol=1e-6)


def test_mid_slice_overlay_draws_three_planes_side_by_side():
    volume, cam = np.zeros((6, 8, 10)), np.zeros((6, 8, 10))
    cam[3, 4, 5] = 1.0
    picture = mid_slice_overlay(volume, cam)
    assert picture.shape == (8, 10 + 2 + 10 + 2 + 8, 3) and picture.dtype == np.uint8
    # The hot voxel sits on all three mid-slices, the only coloured pixel of each panel (jet's
    # dark red at 1; black elsewhere, white gaps); coronal and sagittal have superior at the
    # top, padded by one row above and below.
    red = np.argwhere((picture[..., 0] > 0) & (picture[..., 2] == 0)).tolist()
    assert red == [[3, 12 + 5], [3, 24 + 4], [4, 5]]


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_volumes")
    csv = make_volume_csv(root, n=24)
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    config = compose_config([f"data.csv={csv}", *FAST_3D])
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), root / "run")
    best = json.loads((root / "run" / "summary.json").read_text())["best_checkpoint"]
    return root, csv, best


def test_explain_command_writes_nifti_maps_over_the_input_and_mid_slice_pngs(volume_model):
    root, csv, best = volume_model
    out = root / "explain"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nervus_lightning.explain",
            f"ckpt={best}",
            f"data.csv={csv}",
            "n=2",
            "explain.ig_steps=2",
            f"out={out}",
            f"hydra.run.dir={root / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == 2
    frame = pd.read_csv(csv)
    for row in cases.itertuples():
        cam = nib.load(out / row.map)
        shown = nib.load(out / row.input)
        assert cam.shape == shown.shape == (SIZE, SIZE, SIZE)
        np.testing.assert_allclose(cam.affine, shown.affine)
        # Read at the scan's own size (no data.spacing) but in LPS axes: every input voxel lands,
        # through the affines, on a whole voxel of the scan holding the same value.
        scan = nib.load(root / frame.set_index("uniqID").loc[row.uniqID, "imgpath"])
        grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).reshape(-1, 3)
        index = nib.affines.apply_affine(np.linalg.inv(scan.affine) @ cam.affine, grid)
        np.testing.assert_allclose(index, np.rint(index), atol=1e-6)
        index = np.rint(index).astype(int)
        raw = np.asarray(scan.dataobj)[tuple(index.T)]
        seen = np.asarray(shown.dataobj)[tuple(grid.T)]
        assert np.corrcoef(raw, seen)[0, 1] > 0.999
        values = np.asarray(cam.dataobj)
        assert values.dtype == np.float32 and (values >= 0).all() and values.max() > 0
        assert 0 <= np.asarray(shown.dataobj).min() and np.asarray(shown.dataobj).max() <= 1
        picture = np.asarray(Image.open(out / row.overlay))
        assert picture.shape == (SIZE, 3 * SIZE + 4, 3)
    assert row.map.endswith("_gradcam.nii.gz") and row.input.endswith("_input.nii.gz")
    assert (out / "attribution.csv").is_file()  # the fused model's input_* columns


@pytest.mark.parametrize(("name", "path"), [("resnet18", "layer4"), ("densenet121", "features")])
def test_monai_extractors_get_their_last_stage(name, path):
    pytest.importorskip("monai")
    from nervus_lightning.models.extractors import MonaiExtractor

    extractor = MonaiExtractor(name).eval()
    layer = find_gradcam_layer(extractor)
    assert layer.path == f"backbone.{path}"
    head = nn.Linear(extractor.out_features, 1)
    volume = torch.rand(1, 1, 32, 32, 32)
    cam = grad_cam(lambda x: head(extractor(x).flatten(1)), volume, layer, 0)
    assert cam.shape == (1, 32, 32, 32) and layer.grid is not None and len(layer.grid) == 3


# -- several volumes per case ----------------------------------------------------------------

VOLUME_VIEWS = ["arterial", "venous"]
#: The venous scans' RAS affine: axes permuted and flipped, 2 mm voxels, translated, so that a
#: map written with the arterial affine (or none) would lie elsewhere.
VENOUS_RAS = np.array(
    [[0.0, 0.0, -2.0, 40.0], [2.0, 0.0, 0.0, -25.0], [0.0, -2.0, 0.0, 60.0], [0.0, 0.0, 0.0, 1.0]]
)


def make_two_view_csv(root, n: int = 16):
    """:func:`make_volume_csv`'s cases with a second view: the arterial scan is the case's own,
    the venous one another case's values in another orientation and place (:data:`VENOUS_RAS`)."""
    csv = make_volume_csv(root, n=n)
    frame = pd.read_csv(csv).rename(columns={"imgpath": "imgpath_arterial"})
    venous = []
    for i, source in enumerate(frame["imgpath_arterial"][::-1]):
        scan = nib.load(root / source)
        image = nib.Nifti1Image(np.asarray(scan.dataobj), VENOUS_RAS)
        image.header["cal_min"], image.header["cal_max"] = 0, 1000
        venous.append(f"vol/venous_{i:03d}.nii.gz")
        nib.save(image, str(root / venous[-1]))
    frame["imgpath_venous"] = venous
    frame.to_csv(csv, index=False)
    return csv


def assert_input_lies_on_its_scan(shown, scan_path) -> None:
    """Every voxel of the network's input lands, through the affines, on a whole voxel of the
    scan holding the same value (the volumes are read at their own size: no resampling)."""
    scan = nib.load(scan_path)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).reshape(-1, 3)
    index = nib.affines.apply_affine(np.linalg.inv(scan.affine) @ shown.affine, grid)
    np.testing.assert_allclose(index, np.rint(index), atol=1e-6)
    raw = np.asarray(scan.dataobj)[tuple(np.rint(index).astype(int).T)]
    seen = np.asarray(shown.dataobj)[tuple(grid.T)]
    assert np.corrcoef(raw, seen)[0, 1] > 0.999


@pytest.fixture(scope="module")
def two_view_run(tmp_path_factory):
    """A fused model of two volume views (one shared small_cnn_3d), explained after training."""
    root = tmp_path_factory.mktemp("explain_volume_views")
    csv = make_two_view_csv(root)
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    overrides = [
        f"data.csv={csv}",
        *FAST_3D,
        "evaluation.n_bootstrap=0",
        "explain.after_training=true",
        "explain.n=4",
        "explain.ig_steps=2",
    ]
    config = compose_config(overrides)
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), root / "run")
    best = json.loads((root / "run" / "summary.json").read_text())["best_checkpoint"]
    return root, csv, best


def test_each_volume_view_gets_its_map_in_its_own_scans_world(two_view_run):
    from test_explain_multiview import _one_extractor_per_view

    from nervus_lightning.checkpoints import checkpoint_datamodule, load_trained

    root, csv, best = two_view_run
    run = root / "run"
    page = (run / "evaluation" / "report.html").read_text()
    assert "Where the model looked" in page
    assert "<small>arterial</small>" in page and "<small>venous</small>" in page
    attribution = pd.read_csv(run / "explain" / "attribution.csv")
    assert set(attribution["input"]) == {
        "image/arterial",
        "image/venous",
        "input_flag",
        "input_noise",
    }

    out = root / "cli"
    done = run_command(
        "nervus_lightning.explain",
        [
            f"ckpt={best}",
            f"data.csv={csv}",
            "n=2",
            "explain.ig_steps=2",
            f"out={out}",
            f"hydra.run.dir={root / 'hydra'}",
        ],
        root,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    frame = pd.read_csv(csv).set_index("uniqID")
    assert len(cases) == 2 and (cases["missing_views"] == "").all()
    module = load_trained(best, map_location="cpu").eval()
    data = checkpoint_datamodule(module, csv, batch_size=2)
    settings = data.dataset("test").volume
    affines, peaks = {}, []
    for row in cases.to_dict("records"):
        for view in VOLUME_VIEWS:
            stem = f"label_cls/{row['uniqID']}__{view}"
            assert row[f"map_{view}"] == f"{stem}_gradcam.nii.gz"
            assert row[f"input_{view}"] == f"{stem}_input.nii.gz"
            assert row[f"overlay_{view}"] == f"{stem}.png"
            cam, shown = nib.load(out / row[f"map_{view}"]), nib.load(out / row[f"input_{view}"])
            assert cam.shape == shown.shape == (SIZE, SIZE, SIZE)
            scan = root / frame.loc[row["uniqID"], f"imgpath_{view}"]
            # The map and the input share that view's own affine, as the network saw the view.
            np.testing.assert_allclose(cam.affine, shown.affine)
            np.testing.assert_allclose(cam.affine, network_affine(scan, settings), atol=1e-6)
            np.testing.assert_allclose(
                np.asarray(shown.dataobj), read_training_volume(scan, settings)[0], atol=1e-6
            )
            assert_input_lies_on_its_scan(shown, scan)
            values = np.asarray(cam.dataobj)
            assert values.dtype == np.float32 and (values >= 0).all()
            peaks.append(values.max())
            picture = np.asarray(Image.open(out / row[f"overlay_{view}"]))
            assert picture.shape == (SIZE, 3 * SIZE + 4, 3)
            affines[view] = cam.affine
    assert not np.allclose(affines["arterial"], affines["venous"]) and max(peaks) > 0

    # Each view's map is captum's Grad-CAM with only that view varying, the other view and the
    # table held at the case's values.
    from captum.attr import LayerAttribution, LayerGradCam

    batch = next(iter(torch.utils.data.DataLoader(data.dataset("test"), batch_size=2)))
    image, tabular = batch["image"], batch["tabular"]
    assert image.shape == (2, 2, 1, SIZE, SIZE, SIZE)
    twin = _one_extractor_per_view(module.net)
    target = torch.tensor([module.schema.labels[0].classes.index(c) for c in cases["explained"]])
    for v, view in enumerate(VOLUME_VIEWS):

        def forward(pixels, v=v):
            both = torch.stack([pixels if u == v else image[:, u] for u in range(2)], 1)
            return twin(image=both, tabular=tabular)[0]

        layer = find_gradcam_layer(twin.view_extractors[v]).module
        want = LayerGradCam(forward, layer).attribute(
            image[:, v], target=target, relu_attributions=True
        )
        want = LayerAttribution.interpolate(want, (SIZE,) * 3, "trilinear")[:, 0].clamp_min(0)
        for k, row in enumerate(cases.to_dict("records")):
            got = np.asarray(nib.load(out / row[f"map_{view}"]).dataobj)
            np.testing.assert_allclose(got, want[k].detach().numpy(), rtol=1e-4, atol=1e-8)
