"""Export for deployment: the ONNX graph (run by onnxruntime) and the torch.export program give
the probabilities of PyTorch on real batches, and the JSON beside them carries the contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, compose_config, make_dataset

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.demo import write_multiview_demo
from nervus_lightning.data.schema import NervusInputError
from nervus_lightning.module import NervusModule
from nervus_lightning.workflows.export import export_model
from nervus_lightning.workflows.train import train

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: name -> (make_dataset options, training overrides). Survival and regression are tabular: their
#: graphs differ from classification only in the output transform.
MODELS = {
    "image": ({"tabular": False}, []),
    "tabular": ({"images": False}, ["model/extractor=none"]),
    "fused": ({}, []),
    "rgb": ({"tabular": False, "rgb": True}, ["data.in_channels=3"]),
    "survival": ({"task": "survival", "images": False}, ["task=survival", "model/extractor=none"]),
    # A discrete-time survival model: the graph returns the survival curve on the time grid.
    "survival_pmf": (
        {"task": "survival", "images": False},
        ["task=survival", "task.model=pmf", "task.num_durations=5", "model/extractor=none"],
    ),
    "regression": (
        {"task": "regression", "images": False},
        ["task=regression", "model/extractor=none"],
    ),
    # Two views (frontal, lateral; a quarter of the laterals missing) fused with a tabular input.
    "multiview": ({"multiview": True}, ["data.missing_views=allow"]),
}
#: Each trains a resnet18 for its own test (about 25 s on a shared CPU); "fused" runs the same
#: image path (GrayStem) in the default run, and tests/test_multiview.py exports a two-view model.
SLOW = {"image", "rgb", "multiview"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train each kind of model once per module; name -> checkpoint path."""
    cache: dict[str, str] = {}

    def _get(name: str) -> str:
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            options, overrides = MODELS[name]
            if options.get("multiview"):
                csv = write_multiview_demo(root, n=40, seed=3, missing_fraction=0.25)
            else:
                csv = make_dataset(root, **options)
            torch.manual_seed(0)
            cfg = compose_config([f"data.csv={csv}", *FAST, *overrides])
            run = root / "run"
            train(train_settings(cfg), run)
            cache[name] = json.loads((run / "summary.json").read_text())["best_checkpoint"]
            cache[name + ".csv"] = str(csv)
        return cache[name]

    _get.cache = cache
    return _get


def _module_and_loader(ckpt: str, csv: str):
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    datamodule = NervusDataModule(
        csv,
        schema=module.schema,
        image_size=module.hparams.image_size,
        in_channels=module.hparams.in_channels,
        batch_size=7,  # not the export's example batch size: the batch axis must be dynamic
        num_workers=0,
    )
    return module, datamodule.predict_dataloader()


def _feeds(batch, names: list[str]) -> dict[str, np.ndarray]:
    # Images and tabular values as float32; the view mask stays bool.
    return {
        name: batch[name].numpy() if name == "view_mask" else batch[name].numpy().astype(np.float32)
        for name in names
    }


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]
)
def test_onnx_matches_pytorch_on_real_batches(trained, tmp_path, name):
    ckpt = trained(name)
    module, loader = _module_and_loader(ckpt, trained.cache[name + ".csv"])
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "model.onnx")
    contract = json.loads(contract_file.read_text())
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    assert input_names == [entry["name"] for entry in contract["inputs"]]
    output_names = [o.name for o in session.get_outputs()]
    assert output_names == [entry["name"] for entry in contract["outputs"]]

    expected = module.infer(loader, "cpu")
    got: list[list[np.ndarray]] = [[] for _ in output_names]
    for batch in loader:
        for j, out in enumerate(session.run(output_names, _feeds(batch, input_names))):
            got[j].append(out)
    sizes = {len(b["index"]) for b in loader}
    assert len(sizes) > 1  # a last, smaller batch ran through the same graph
    for j, out in enumerate(got):
        np.testing.assert_allclose(np.concatenate(out), expected[j], atol=1e-4, rtol=0)
    if module.schema.task == "classification":
        np.testing.assert_allclose(np.concatenate(got[0]).sum(axis=1), 1.0, atol=1e-5)
    if name == "survival":  # tabular Cox: the default linear term beside the network is exported
        assert any(".linear_terms." in key for key in module.state_dict())


def test_contract_lists_what_happens_before_the_graph(trained, tmp_path):
    ckpt = trained("fused")
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    _, contract_file = export_model(ckpt, "onnx", out=tmp_path / "fused.onnx")
    assert contract_file == tmp_path / "fused.onnx.json"
    contract = json.loads(contract_file.read_text())
    image, tabular = contract["inputs"]
    assert image["name"] == "image" and image["shape"] == ["batch", 1, 16, 16]
    assert image["range"] == [0.0, 1.0]
    assert tabular["name"] == "tabular" and tabular["columns"] == ["input_a", "input_b"]
    assert tabular["shape"] == ["batch", 2]
    cls, three = contract["outputs"]
    assert cls["name"] == "prob_label_cls" and cls["classes"] == ["no", "yes"]
    assert cls["positive_class"] == "yes"
    assert cls["threshold"] == pytest.approx(module.task.thresholds[0])
    assert cls["threshold"] is not None
    assert three["classes"] == ["x", "y", "z"] and three["shape"] == ["batch", 3]
    assert "threshold" not in three  # multi-class: no operating point
    pre = contract["preprocessing"]
    assert pre["image_size"] == 16 and pre["in_channels"] == 1
    assert pre["bit_depth"] == module.schema.bit_depth == 8
    assert pre["window"] == module.schema.window and pre["frame"] == module.schema.frame
    assert contract["image_size"] == 16 and contract["in_channels"] == 1


def test_survival_contract_carries_the_training_aggregates(trained, tmp_path):
    ckpt = trained("survival")
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "surv.onnx")
    (entry,) = json.loads(contract_file.read_text())["outputs"]
    assert entry["name"] == "risk_label_death" and entry["shape"] == ["batch", 1]
    reference = module.task.references[0]
    assert entry["eval_times"] == reference.eval_times.tolist()
    # The survival probabilities a deployer computes from the JSON and the graph's risk equal
    # the library's (the baseline read linearly between its times, as the 'meaning' says).
    assert entry["time_summary"]["baseline_linear"] == 1.0 and "linearly" in entry["meaning"]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    inputs = {"tabular": np.random.default_rng(1).normal(0, 1, (5, 2)).astype(np.float32)}
    (risk,) = session.run(None, inputs)
    times = np.asarray(entry["baseline"]["times"])
    cumhaz = np.asarray(entry["baseline"]["cumhaz"])
    h0 = np.interp(entry["eval_times"], np.r_[0.0, times], np.r_[0.0, cumhaz])
    assert not np.isin(entry["eval_times"], times).all()  # a time between stored ones is read
    mine = np.exp(-h0[None, :] * np.exp(risk.astype(np.float64)))
    np.testing.assert_allclose(
        mine, reference.survival(risk[:, 0].astype(np.float64), reference.eval_times), atol=1e-6
    )


def test_torch_export_round_trip(trained, tmp_path):
    ckpt = trained("fused")
    module, loader = _module_and_loader(ckpt, trained.cache["fused.csv"])
    model_file, contract_file = export_model(ckpt, "torch_export", out=tmp_path / "fused.pt2")
    assert json.loads(contract_file.read_text())["format"] == "torch_export"
    program = torch.export.load(str(model_file)).module()
    expected = module.infer(loader, "cpu")
    got: list[list[torch.Tensor]] = [[] for _ in expected]
    with torch.no_grad():
        for batch in loader:
            for j, out in enumerate(program(batch["image"], batch["tabular"])):
                got[j].append(out)
    for j, out in enumerate(got):
        np.testing.assert_allclose(torch.cat(out).numpy(), expected[j], atol=1e-5, rtol=0)


def test_default_output_is_beside_the_checkpoint(trained):
    ckpt = trained("tabular")
    model_file, contract_file = export_model(ckpt, "onnx")
    assert model_file.parent == contract_file.parent == Path(ckpt).parent
    assert model_file.suffix == ".onnx" and model_file.is_file() and contract_file.is_file()


@pytest.mark.parametrize(
    "ckpt, fmt, match",
    [("missing.ckpt", "onnx", "checkpoint not found"), (None, "tflite", "format='tflite'")],
)
def test_user_errors(trained, tmp_path, ckpt, fmt, match):
    path = tmp_path / ckpt if ckpt else trained("tabular")
    with pytest.raises(NervusInputError, match=match):
        export_model(path, fmt)


def test_missing_onnx_package_is_a_user_error(trained, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    with pytest.raises(NervusInputError, match=r"nervus-lightning\[export\]"):
        export_model(trained("tabular"), "onnx")


def test_command_line(trained, tmp_path):
    ckpt = trained("tabular")
    out = tmp_path / "cli" / "net.onnx"
    command = [sys.executable, "-m", "nervus_lightning.export", f"hydra.run.dir={tmp_path}/hydra"]
    result = subprocess.run(
        [*command, f"ckpt={ckpt}", f"out={out}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and (out.parent / "net.onnx.json").is_file()
    assert result.stdout.count(f"exported {ckpt} to {out}") == 1  # the final line, once

    result = subprocess.run(
        [*command, f"ckpt={tmp_path}/nope.ckpt"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_multiview_contract_lists_the_views(trained, tmp_path):
    ckpt = trained("multiview")
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "mv.onnx")
    contract = json.loads(contract_file.read_text())
    image, tabular, mask = contract["inputs"]
    assert image["shape"] == ["batch", 2, 1, 16, 16] and image["views"] == ["frontal", "lateral"]
    assert image["columns"] == ["imgpath_frontal", "imgpath_lateral"]
    assert tabular["columns"] == ["input_age"]
    assert mask["name"] == "view_mask" and mask["dtype"] == "bool"
    assert mask["shape"] == ["batch", 2]
    assert contract["views"] == [
        {"view": "frontal", "column": "imgpath_frontal"},
        {"view": "lateral", "column": "imgpath_lateral"},
    ]
    assert contract["preprocessing"]["image_columns"] == image["columns"]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "tabular", "view_mask"]


def test_discrete_survival_contract_is_the_curve_on_the_grid(trained, tmp_path):
    ckpt = trained("survival_pmf")
    module = NervusModule.load_from_checkpoint(ckpt, map_location="cpu")
    model_file, contract_file = export_model(ckpt, "onnx", out=tmp_path / "pmf.onnx")
    (entry,) = json.loads(contract_file.read_text())["outputs"]
    assert entry["name"] == "surv_label_death" and entry["shape"] == ["batch", 5]
    assert entry["survival_model"] == "pmf"
    np.testing.assert_allclose(entry["grid"], module.task.cuts[0].tolist())
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["surv_label_death"]
    (surv,) = session.run(None, {"tabular": np.zeros((3, 2), dtype=np.float32)})
    assert surv.shape == (3, 5)
    assert np.all(np.diff(surv, axis=1) <= 1e-6) and surv.min() >= 0 and surv.max() <= 1
