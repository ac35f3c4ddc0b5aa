"""``data.window=auto`` for volumes follows the 2D rule: a volume without a window of its own (a
DICOM series without VOI LUT or Window Center/Width, a NIfTI without ``cal_min``/``cal_max``)
is shown with the data set's window, chosen once on the TRAINING volumes (0.5th to 99.5th
percentiles of their modality-LUT values; one window per DICOM Modality, one for NIfTI), stored
in the schema as two numbers per window, and reused unchanged by predict and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from conftest import compose_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from test_volume_training import FAST_3D  # noqa: E402
from test_volumes import Series  # noqa: E402

from nervus_lightning.checkpoints import checkpoint_datamodule, load_trained  # noqa: E402
from nervus_lightning.data import datamodule as datamodule_module  # noqa: E402
from nervus_lightning.data.datamodule import NervusDataModule  # noqa: E402
from nervus_lightning.data.preview import auto_window_note  # noqa: E402
from nervus_lightning.data.volume_input import (  # noqa: E402
    VolumeSettings,
    read_training_volume,
)
from nervus_lightning.data.volume_nifti import NIFTI_WINDOW_KEY  # noqa: E402
from nervus_lightning.workflows.settings import TrainSettings  # noqa: E402
from nervus_lightning.workflows.train import train  # noqa: E402

SHAPE = (8, 8, 8)
PERCENTILES = (0.5, 99.5)


def _nifti(path: Path, values: np.ndarray, display_range=None) -> Path:
    image = nib.Nifti1Image(values, np.diag([1.5, 1.5, 3.0, 1.0]))
    if display_range is not None:
        image.header["cal_min"], image.header["cal_max"] = display_range
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _window(values: np.ndarray) -> list[float]:
    """The data set's window of pooled values, written out: [center, width] of the percentiles."""
    low, high = np.percentile(np.concatenate([np.ravel(v) for v in values]), PERCENTILES)
    return [(low + high) / 2, max(high - low, 1.0)]


@pytest.fixture(scope="module")
def data_set(tmp_path_factory):
    """Training volumes without a window (int16 and float32 NIfTI, CT and MR series) and with
    one (a NIfTI display range, a CT Window Center/Width); val and test volumes without a window
    whose values lie far from the training ones, so that using them would move the window."""
    root = tmp_path_factory.mktemp("volume_window")
    rng = np.random.default_rng(0)
    rows, expected = [], {"CT": [], "MR": [], NIFTI_WINDOW_KEY: []}

    def add(kind: str, split: str, own_window: bool, far: bool = False) -> None:
        name = f"case{len(rows):02d}"
        if kind == "nifti":
            values = rng.normal(1500 if far else 40, 10 if far else 30, (8, 8, 6))
            values = values.astype(np.int16)
            path = _nifti(
                root / f"{name}.nii.gz",
                rng.uniform(-1000, 3000, (8, 8, 6)).astype(np.int16) if own_window else values,
                (-160, 240) if own_window else None,
            )
            hu = values
        elif kind == "float_nifti":
            hu = rng.normal(60, 20, (8, 8, 6)).astype(np.float32)
            path = _nifti(root / f"{name}.nii.gz", hu)
        else:  # a CT or MR series of six 8 x 8 slices, 12 bits stored
            modality = kind.upper()
            centre = 3000 if far else 1324 if kind == "ct" else 800
            stored = np.clip(rng.normal(centre, 10 if far else 100, (6, 8, 8)), 0, 4095)
            if own_window:
                stored = rng.uniform(0, 4095, (6, 8, 8))
            stored = stored.astype(np.uint16)
            intercept = -1024.0 if kind == "ct" else 0.0
            elements = {"Modality": modality}
            if own_window:
                elements.update(WindowCenter="40", WindowWidth="400")
            path = Series(stored, intercept=intercept, **elements).write(root / name)
            hu = stored.astype(np.float64) + intercept
            kind = modality
        if split == "train" and not own_window:
            key = NIFTI_WINDOW_KEY if "nifti" in kind else kind
            expected[key].append(hu)
        rows.append(
            {
                "uniqID": name,
                "imgpath": str(path.relative_to(root)),
                "input_flag": len(rows) % 2,
                "label_cls": ["no", "yes"][len(rows) % 3 == 0],
                "split": split,
                "kind": kind,
                "own_window": own_window,
            }
        )

    for _ in range(3):
        add("nifti", "train", own_window=False)
        add("ct", "train", own_window=False)
    add("float_nifti", "train", own_window=False)
    add("mr", "train", own_window=False)
    add("mr", "train", own_window=False)
    add("nifti", "train", own_window=True)
    add("ct", "train", own_window=True)
    for split in ("val", "val", "test", "test"):
        add("nifti", split, own_window=False, far=True)
        add("ct", split, own_window=False, far=True)
    csv = root / "data.csv"
    table = pd.DataFrame(rows)
    table.to_csv(csv, index=False)
    windows = {key: _window(values) for key, values in expected.items()}
    return root, csv, table, windows


def _datamodule(csv: Path, **options) -> NervusDataModule:
    return NervusDataModule(csv, volume_size=list(SHAPE), **options)


def _image(data: NervusDataModule, uniq: str) -> torch.Tensor:
    dataset = data.dataset(None, cached=False)
    return dataset[int(np.flatnonzero(data.frame["uniqID"] == uniq)[0])]["image"]


def test_the_window_is_the_percentiles_of_the_training_volumes_only(data_set):
    """Per DICOM Modality and one for NIfTI (int16 and float alike), from the training volumes
    without a window of their own: the val/test volumes (values far away) and the volumes with
    their own window (values spread from -1000 to 3000) leave it unchanged."""
    _, csv, _, windows = data_set
    data = _datamodule(csv)
    assert data.schema.window == "auto"
    chosen = data.schema.auto_window
    assert chosen is not None and sorted(chosen) == ["CT", "MR", NIFTI_WINDOW_KEY]
    for key, (center, width) in windows.items():
        np.testing.assert_allclose(chosen[key], [center, width], rtol=1e-9, err_msg=key)
    assert windows["CT"][0] < 400 and windows[NIFTI_WINDOW_KEY][0] < 100  # not the far values
    # Aggregates only: two numbers per window, nothing per volume or patient.
    assert all(len(numbers) == 2 for numbers in chosen.values())
    assert json.loads(json.dumps(data.schema.to_dict()))["auto_window"] == chosen


def test_volumes_without_their_own_window_are_shown_with_the_data_sets(data_set):
    root, csv, table, windows = data_set
    data = _datamodule(csv)
    for row in table.itertuples():
        if row.own_window:
            window = "auto"  # their own: the NIfTI display range, the CT Window Center/Width
        else:
            window = tuple(windows[NIFTI_WINDOW_KEY if "nifti" in row.kind else row.kind])
        expected = read_training_volume(root / row.imgpath, VolumeSettings(SHAPE, None, window))
        torch.testing.assert_close(_image(data, row.uniqID), expected, msg=row.uniqID)
    # Plain auto before this rule: a windowless int16 NIfTI at its data type's full range,
    # where its 40 +- 30 HU are a flat grey; the data set's window spreads them over [0, 1].
    shown = _image(data, table.loc[table["kind"] == "nifti", "uniqID"].iloc[0])
    assert shown.std() > 0.1


def test_predict_reuses_the_stored_window_and_chooses_none(data_set, monkeypatch, tmp_path):
    root, csv, table, windows = data_set
    trained = _datamodule(csv)
    schema = json.loads(json.dumps(trained.schema.to_dict()))

    def refuse(*args, **kwargs):
        raise AssertionError("a window was chosen again at prediction")

    monkeypatch.setattr(datamodule_module, "choose_volume_auto_window", refuse)
    # New volumes only (the far val/test ones), as at another site.
    held_out = table[table["split"] != "train"].drop(columns="split")
    held_out["imgpath"] = [str(root / p) for p in held_out["imgpath"]]
    new_csv = tmp_path / "site_b.csv"
    held_out.to_csv(new_csv, index=False)
    data = NervusDataModule(new_csv, schema=schema)
    assert data.schema.auto_window == trained.schema.auto_window
    row = held_out.iloc[1]
    expected = read_training_volume(
        row["imgpath"], VolumeSettings(SHAPE, None, tuple(windows[row["kind"]]))
    )
    torch.testing.assert_close(_image(data, row["uniqID"]), expected)


def test_preview_names_the_data_sets_windows(data_set):
    _, csv, _, _ = data_set
    note = auto_window_note(_datamodule(csv))
    assert note.startswith("data.window=auto, volumes without their own window: CT: center ")
    assert "; MR: center " in note and "; NIfTI: center " in note


def test_a_fixed_window_chooses_no_data_set_window(data_set):
    _, csv, _, _ = data_set
    assert _datamodule(csv, window=[40, 400]).schema.auto_window is None


@pytest.fixture(scope="module")
def trained(data_set, tmp_path_factory):
    _, csv, _, _ = data_set
    run = tmp_path_factory.mktemp("trained") / "run"
    options = [f"data.csv={csv}", *FAST_3D, f"data.volume_size=[{SHAPE[0]},{SHAPE[1]},{SHAPE[2]}]"]
    config = compose_config(options)
    train(TrainSettings.from_config(OmegaConf.to_container(config, resolve=True)), run)
    return json.loads((run / "summary.json").read_text())["best_checkpoint"], run


def test_the_checkpoint_reads_volumes_as_training_did(data_set, trained):
    root, csv, table, windows = data_set
    ckpt, run = trained
    module = load_trained(ckpt, map_location="cpu")
    for key, numbers in windows.items():
        np.testing.assert_allclose(module.schema.auto_window[key], numbers, rtol=1e-9)
    assert json.loads((run / "schema.json").read_text())["auto_window"] == module.schema.auto_window
    again = checkpoint_datamodule(module, csv)
    training = _datamodule(csv)
    for uniq in table["uniqID"]:
        torch.testing.assert_close(_image(again, uniq), _image(training, uniq), msg=uniq)


def test_the_export_contract_states_the_data_sets_window(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from nervus_lightning.workflows.export import export_model

    ckpt, _ = trained
    module = load_trained(ckpt, map_location="cpu")
    _, contract_file = export_model(ckpt, "onnx", out=tmp_path / "model.onnx")
    pre = json.loads(contract_file.read_text())["preprocessing"]
    assert pre["window"] == "auto" and pre["auto_window"] == module.schema.auto_window
    assert any("'auto_window'" in step and "NIfTI" in step for step in pre["steps"])
