"""Export of a model trained on 3D volumes: the ONNX graph (onnxruntime) and the torch.export
program give PyTorch's outputs on random volumes at any batch size, and the JSON beside them
states how a volume is read (orientation, spacing or resize, crop/pad, window, scaling) with
settings only, no value of a patient."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("nibabel")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from conftest import compose_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from test_privacy import find_patient_values  # noqa: E402
from test_volume_training import FAST_3D, SIZE, make_volume_csv  # noqa: E402

from nervus_lightning.checkpoints import load_trained  # noqa: E402
from nervus_lightning.workflows.export import export_model  # noqa: E402
from nervus_lightning.workflows.settings import TrainSettings  # noqa: E402
from nervus_lightning.workflows.train import train  # noqa: E402


def _train(
    root: Path, overrides: list[str], base: list[str] = FAST_3D, two_views: bool = False
) -> tuple[Path, str]:
    csv = make_volume_csv(root, n=16)
    if two_views:  # an arterial and a venous phase per case
        frame = pd.read_csv(csv).rename(columns={"imgpath": "imgpath_arterial"})
        frame["imgpath_venous"] = frame["imgpath_arterial"][::-1].to_numpy()
        frame.to_csv(csv, index=False)
    torch.manual_seed(0)
    config = compose_config([f"data.csv={csv}", *base, *overrides])
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), root / "run")
    return csv, json.loads((root / "run" / "summary.json").read_text())["best_checkpoint"]


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    """small_cnn_3d with a table, each volume resized to 16^3 (no spacing)."""
    return _train(tmp_path_factory.mktemp("resized"), [])


@pytest.fixture(scope="module")
def spaced(tmp_path_factory):
    """The same with data.spacing and a fixed window (crop/pad about the centre)."""
    return _train(
        tmp_path_factory.mktemp("spaced"), ["data.spacing=[2.0,1.5,1.0]", "data.window=[500,1000]"]
    )


def _random_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch, 1, SIZE, SIZE, SIZE), dtype=np.float32),
        "tabular": np.stack([rng.integers(0, 2, batch), rng.normal(0, 1, batch)], axis=1).astype(
            np.float32
        ),
    }


def _pytorch(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = module({name: torch.from_numpy(value) for name, value in feeds.items()})
    return module.task.transform_output(out[0], 0).numpy()


def test_onnx_of_a_volume_model_matches_pytorch_at_any_batch_size(resized, tmp_path):
    _, ckpt = resized
    module = load_trained(ckpt, map_location="cpu").eval()
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "vol.onnx")
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    image, tabular = session.get_inputs()
    assert (image.name, tabular.name) == ("image", "tabular")
    assert image.shape[1:] == [1, SIZE, SIZE, SIZE] and isinstance(image.shape[0], str)
    assert [o.name for o in session.get_outputs()] == ["prob_label_cls"]
    worst = 0.0
    for batch, seed in [(1, 0), (3, 1), (7, 2)]:  # the export's example batch is 2
        feeds = _random_inputs(batch, seed)
        (got,) = session.run(None, feeds)
        expected = _pytorch(module, feeds)
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"largest |onnxruntime - PyTorch| over 11 random volumes: {worst:.2e}")


def test_torch_export_of_a_volume_model_matches_pytorch(resized, tmp_path):
    _, ckpt = resized
    module = load_trained(ckpt, map_location="cpu").eval()
    model_file, contract_file = export_model(ckpt, "torch_export", out=tmp_path / "vol.pt2")
    assert json.loads(contract_file.read_text())["format"] == "torch_export"
    program = torch.export.load(str(model_file)).module()
    feeds = _random_inputs(5, 3)
    with torch.no_grad():
        (got,) = program(*(torch.from_numpy(feeds[n]) for n in ("image", "tabular")))
    np.testing.assert_allclose(got.numpy(), _pytorch(module, feeds), atol=1e-5, rtol=0)


def test_volume_contract_states_how_a_volume_is_read(resized, spaced, tmp_path):
    contracts = {}
    for name, (_, ckpt) in {"resized": resized, "spaced": spaced}.items():
        _, contract_file = export_model(ckpt, "onnx", out=tmp_path / f"{name}.onnx")
        contracts[name] = json.loads(contract_file.read_text())
    for contract in contracts.values():
        image, tabular = contract["inputs"]
        assert image["shape"] == ["batch", 1, SIZE, SIZE, SIZE] and image["range"] == [0.0, 1.0]
        assert "superior, posterior and left" in image["meaning"]
        assert tabular["columns"] == ["input_flag", "input_noise"]
        pre = contract["preprocessing"]
        assert pre["volume"] is True and pre["orientation"] == "LPS"
        assert pre["axes"] == ["superior", "posterior", "left"]
        assert pre["shape"] == [SIZE] * 3 and contract["volume_size"] == [SIZE] * 3
        assert contract["image_size"] is None  # no 2D image size for a volume model
        assert "bit_depth" not in pre and "frame" not in pre  # 2D-only settings
        assert any("scaled to [0, 1]" in step for step in pre["steps"])
        assert contract["schema"]["volume"]["orientation"] == "LPS"

    resized_pre, spaced_pre = (
        contracts["resized"]["preprocessing"],
        contracts["spaced"]["preprocessing"],
    )
    assert resized_pre["spacing"] is None and resized_pre["window"] == "auto"
    assert resized_pre["spacing_meaning"] == "resized to shape over each volume's extent"
    assert any("over its own extent" in step for step in resized_pre["steps"])
    assert not any("crop" in step for step in resized_pre["steps"])
    assert spaced_pre["spacing"] == [2.0, 1.5, 1.0] and spaced_pre["window"] == [500.0, 1000.0]
    assert any(
        "2.0 x 1.5 x 1.0 mm" in step and "about the centre" in step for step in spaced_pre["steps"]
    )


def test_volume_export_holds_settings_only(resized, tmp_path):
    """No patient's table value in the JSON, nor among the graph's stored arrays."""
    csv, ckpt = resized
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "vol.onnx")
    # Every case's value (16 of them, training and held-out), as the scan needs 10 to call a leak.
    patients = {"input values": pd.read_csv(csv)["input_noise"].to_numpy()}
    contract = json.loads(contract_file.read_text())
    assert not find_patient_values(contract, patients)
    graph = onnx.load(str(model_file))
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    assert arrays and not find_patient_values(arrays, patients)
    # The scan can fail: the same values planted in the JSON are found.
    planted = {**contract, "cases": patients["input values"].tolist()}
    assert find_patient_values(planted, patients)


def test_two_volumes_per_case_export_with_their_views(tmp_path):
    _, ckpt = _train(tmp_path, [], two_views=True)
    module = load_trained(ckpt, map_location="cpu").eval()
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "views.onnx")
    contract = json.loads(contract_file.read_text())
    image = contract["inputs"][0]
    assert image["shape"] == ["batch", 2, 1, SIZE, SIZE, SIZE]
    assert image["views"] == ["arterial", "venous"]
    assert contract["preprocessing"]["image_columns"] == ["imgpath_arterial", "imgpath_venous"]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feeds = _random_inputs(3, 5)
    rng = np.random.default_rng(6)
    feeds["image"] = rng.random((3, 2, 1, SIZE, SIZE, SIZE), dtype=np.float32)
    (got,) = session.run(None, feeds)
    np.testing.assert_allclose(got, _pytorch(module, feeds), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_monai_resnet18_3d_exports_and_matches_pytorch(tmp_path):
    pytest.importorskip("monai")
    base = [o for o in FAST_3D if not o.startswith("model.extractor.")]
    _, ckpt = _train(tmp_path, ["model/extractor=resnet18_3d"], base)
    module = load_trained(ckpt, map_location="cpu").eval()
    start = time.perf_counter()
    model_file, _ = export_model(ckpt, "onnx", out=tmp_path / "resnet.onnx")
    print(f"resnet18_3d ONNX export: {time.perf_counter() - start:.1f} s")
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feeds = _random_inputs(3, 4)
    (got,) = session.run(None, feeds)
    expected = _pytorch(module, feeds)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    print(f"resnet18_3d |onnxruntime - PyTorch|: {np.abs(got - expected).max():.2e}")
