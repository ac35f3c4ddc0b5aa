"""One intensity scaling per data set (``data.bit_depth``): chosen on the training images, stored
in the schema, reused unchanged for prediction."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, compose_config
from PIL import Image, PngImagePlugin

from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.images import choose_bit_depth, read_image
from nervus_lightning.data.schema import DataSchema, NervusInputError
from nervus_lightning.module import NervusModule
from nervus_lightning.workflows.predict import predict
from nervus_lightning.workflows.train import build_datamodule, train

SIZE = 8
AUTO_WARNING = "data.bit_depth=auto"


def _png(path, high: int, sbit: int | None = None, dtype=np.uint16) -> np.ndarray:
    """A ramp 0..high saved as PNG (16-bit unless dtype says otherwise); returns the pixels."""
    pixels = np.linspace(0, high, SIZE * SIZE).round().astype(dtype).reshape(SIZE, SIZE)
    info = None
    if sbit is not None:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=info)
    return pixels


def _data_set(root, highs, splits=None, sbit=None, dtypes=None) -> tuple:
    """A CSV with one image per maximum in ``highs``; returns (csv, pixels per image)."""
    splits = splits or ["train"] * len(highs)
    dtypes = dtypes or [np.uint16] * len(highs)
    rows, pixels = [], []
    for i, (high, split, dtype) in enumerate(zip(highs, splits, dtypes, strict=True)):
        rel = f"img/{i}.png"
        pixels.append(_png(root / rel, high, sbit, dtype))
        rows.append({"uniqID": f"c{i}", "imgpath": rel, "label_y": "ab"[i % 2], "split": split})
    csv = root / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, pixels


def _module(csv, **kwargs) -> NervusDataModule:
    return NervusDataModule(csv, task="classification", image_size=SIZE, **kwargs)


def _images(dm: NervusDataModule, split: str | None = None) -> list[np.ndarray]:
    dataset = dm.dataset(split)
    dataset.transform = None  # the pixels as read, not resized
    return [dataset[i]["image"][0].numpy() for i in range(len(dataset))]


def _auto_warnings(record) -> list[str]:
    return [str(w.message) for w in record if AUTO_WARNING in str(w.message)]


def test_dark_12bit_image_without_sbit_scaled_like_the_others_and_warned_once(tmp_path):
    # 12-bit radiographs in 16-bit PNGs without sBIT; image 2 is dark (max 900 < 1024), which
    # looked at alone would pass for a 10-bit image and be divided by 1023.
    highs = [4095, 3000, 900, 4000, 2500, 3800]
    csv, pixels = _data_set(tmp_path, highs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm = _module(csv)
    assert dm.schema.bit_depth == 12
    messages = _auto_warnings(record)
    assert len(messages) == 1
    assert "12 bits" in messages[0] and "4095" in messages[0] and "sBIT" in messages[0]
    for image, expected in zip(_images(dm), pixels, strict=True):
        np.testing.assert_allclose(image, expected / 4095.0, rtol=0, atol=1e-7)
    # The per-image rule that the data module no longer uses scales the dark image differently.
    alone = read_image(tmp_path / "img/2.png", in_channels=1)[0].numpy()
    np.testing.assert_allclose(alone, pixels[2] / 1023.0, rtol=0, atol=1e-7)


def test_only_the_training_split_decides(tmp_path):
    csv, _ = _data_set(tmp_path, [1000, 800, 65535], splits=["train", "train", "val"])
    with pytest.warns(UserWarning, match="10 bits"):
        dm = _module(csv)
    assert dm.schema.bit_depth == 10
    # A validation image above the training depth is told, not silently rescaled.
    with pytest.raises(NervusInputError, match=r"2\.png.*data\.bit_depth"):
        _images(dm, "val")


def test_png_sbit_declares_the_depth_without_decoding(tmp_path, monkeypatch):
    csv, pixels = _data_set(tmp_path, [1000, 900, 700], sbit=12)
    decoded = []
    monkeypatch.setattr(
        "nervus_lightning.data.images._pixel_maximum", lambda p: decoded.append(p) or 0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a depth read from the headers is not warned about
        dm = _module(csv)
    assert dm.schema.bit_depth == 12 and decoded == []
    for image, expected in zip(_images(dm), pixels, strict=True):
        np.testing.assert_allclose(image, expected / 4095.0, rtol=0, atol=1e-7)


def test_sbit_with_values_scaled_to_16_bits_is_told(tmp_path):
    # The PNG standard asks writers to scale values up to 16 bits and keep the original depth in
    # sBIT; the headers alone cannot tell, so reading the first such file says what to set.
    csv, pixels = _data_set(tmp_path, [65535, 40000], sbit=12)
    dm = _module(csv)
    assert dm.schema.bit_depth == 12
    with pytest.raises(NervusInputError, match=r"0\.png.*sBIT.*data\.bit_depth=16"):
        _images(dm)
    dm = _module(csv, bit_depth=16)
    np.testing.assert_allclose(_images(dm)[1], pixels[1] / 65535.0, rtol=0, atol=1e-7)


def test_sbit_wins_over_smaller_pixel_values_and_mixes_with_undeclared(tmp_path):
    _png(tmp_path / "a.png", 4000, sbit=14)
    _png(tmp_path / "b.png", 1000)
    choice = choose_bit_depth([tmp_path / "a.png", tmp_path / "b.png"])
    assert choice.bits == 14 and choice.from_pixel_values
    assert "14 bits" in choice.reason


def test_eight_bit_data_set_and_mixed_depths(tmp_path):
    csv, pixels = _data_set(tmp_path / "eight", [255, 100, 30], dtypes=[np.uint8] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = _module(csv)
    assert dm.schema.bit_depth == 8
    for image, expected in zip(_images(dm), pixels, strict=True):
        np.testing.assert_allclose(image, expected / 255.0, rtol=0, atol=1e-7)

    csv, pixels = _data_set(tmp_path / "mixed", [255, 3000], dtypes=[np.uint8, np.uint16])
    with pytest.warns(UserWarning, match="12 bits"):
        dm = _module(csv)
    first, second = _images(dm)
    np.testing.assert_allclose(first, pixels[0] / 255.0, atol=1e-7)  # 8-bit: always /255
    np.testing.assert_allclose(second, pixels[1] / 4095.0, atol=1e-7)


def test_dicom_bits_stored_is_the_declared_depth():
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    choice = choose_bit_depth([get_testdata_file("CT_small.dcm")])
    assert (choice.bits, choice.from_pixel_values) == (16, False)
    assert "BitsStored" in choice.reason


def test_prediction_uses_the_stored_depth(tmp_path):
    train_csv, _ = _data_set(tmp_path / "train", [4095, 3000, 2000, 4000])
    with pytest.warns(UserWarning, match=AUTO_WARNING):
        trained = _module(train_csv)
    # The schema travels as JSON (schema.json, checkpoint hyper-parameters).
    schema = DataSchema.from_dict(json.loads(json.dumps(trained.schema.to_dict())))
    assert schema.bit_depth == 12

    root = tmp_path / "external"
    dark = _png(root / "dark.png", 600)
    bright = _png(root / "bright.png", 20000)
    pd.DataFrame({"uniqID": ["d"], "imgpath": ["dark.png"]}).to_csv(root / "a.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is guessed again
        dm = NervusDataModule(root / "a.csv", schema=schema, image_size=SIZE)
    assert dm.schema.bit_depth == 12
    np.testing.assert_allclose(_images(dm)[0], dark / 4095.0, rtol=0, atol=1e-7)
    assert bright.max() > 4095
    pd.DataFrame({"uniqID": ["b"], "imgpath": ["bright.png"]}).to_csv(root / "b.csv", index=False)
    dm = NervusDataModule(root / "b.csv", schema=schema, image_size=SIZE)
    with pytest.raises(NervusInputError, match=r"bright\.png.*4095.*bit_depth=12"):
        _images(dm)
    with pytest.raises(NervusInputError, match="trained with"):
        NervusDataModule(root / "a.csv", schema=schema, bit_depth=16)


def test_schema_without_depth_keeps_the_per_image_rule(tmp_path):
    csv, pixels = _data_set(tmp_path, [900])
    legacy = {"labels": [{"name": "label_y", "task": "classification", "classes": ["a", "b"]}]}
    legacy["image_column"] = "imgpath"
    with pytest.warns(UserWarning, match="older version"):
        dm = NervusDataModule(csv, schema=legacy, image_size=SIZE)
    assert dm.schema.bit_depth is None
    np.testing.assert_allclose(_images(dm)[0], pixels[0] / 1023.0, atol=1e-7)
    # Such a model's depth may be given explicitly; the caller's schema is not changed.
    legacy_schema = DataSchema.from_dict(legacy)
    dm = NervusDataModule(csv, schema=legacy_schema, image_size=SIZE, bit_depth=12)
    assert (dm.schema.bit_depth, legacy_schema.bit_depth) == (12, None)
    np.testing.assert_allclose(_images(dm)[0], pixels[0] / 4095.0, atol=1e-7)


@pytest.mark.parametrize("setting", [16, "14"])
def test_explicit_depth_is_used_as_given(tmp_path, setting, monkeypatch):
    csv, pixels = _data_set(tmp_path, [4095, 900])
    monkeypatch.setattr(
        "nervus_lightning.data.datamodule.choose_bit_depth",
        lambda paths: pytest.fail("an explicit depth must not scan the images"),
    )
    dm = _module(csv, bit_depth=setting)
    bits = int(setting)
    assert dm.schema.bit_depth == bits
    for image, expected in zip(_images(dm), pixels, strict=True):
        np.testing.assert_allclose(image, expected / (2**bits - 1), rtol=0, atol=1e-7)


def test_explicit_depth_too_small_names_the_file(tmp_path):
    csv, _ = _data_set(tmp_path, [4095, 900])
    dm = _module(csv, bit_depth=10)
    with pytest.raises(NervusInputError, match=r"0\.png.*4095.*data\.bit_depth"):
        _images(dm)


@pytest.mark.parametrize("bad", [11, 0, "twelve", 32, True, 12.5])
def test_invalid_bit_depth_names_key_and_choices(tmp_path, bad):
    csv, _ = _data_set(tmp_path, [255], dtypes=[np.uint8])
    with pytest.raises(NervusInputError) as info:
        _module(csv, bit_depth=bad)
    assert "data.bit_depth" in str(info.value) and "auto, 8, 10, 12, 14, 16" in str(info.value)


def test_hydra_key_reaches_the_data_module(tmp_path):
    csv, _ = _data_set(tmp_path, [4095, 900])
    for name in ("csv", "demo", "whas500", "gbsg2", "flchain"):
        assert compose_config([f"data={name}"]).data.bit_depth == "auto"
    cfg = compose_config([f"data.csv={csv}", "data.bit_depth=14", "model/tabular=none"])
    assert build_datamodule(train_settings(cfg)).schema.bit_depth == 14


@pytest.mark.slow  # about 20 s: a real training run, its evaluation report and a prediction
def test_train_then_predict_end_to_end_keeps_the_depth(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    rows = []
    for i in range(24):
        # 12-bit data; the class is the brightness, and every 'dark' image stays below 1024.
        high = int(rng.integers(2500, 4096)) if i % 2 else int(rng.integers(300, 1000))
        _png(root / f"img/{i}.png", high)
        split = "train" if i < 12 else ("val" if i < 18 else "test")
        rows.append({"uniqID": f"c{i}", "imgpath": f"img/{i}.png", "label_y": "ab"[i % 2]})
        rows[-1]["split"] = split
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    run = tmp_path / "run"
    cfg = compose_config(
        [
            f"data.csv={root / 'data.csv'}",
            *FAST,
            "model/tabular=none",
            "+evaluation.positive_class={label_y:b}",
        ]
    )
    with pytest.warns(UserWarning, match=AUTO_WARNING):
        train(train_settings(cfg), run)
    assert json.loads((run / "schema.json").read_text())["bit_depth"] == 12
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    assert NervusModule.load_from_checkpoint(ckpt, map_location="cpu").schema.bit_depth == 12

    # Predicting a CSV of dark images only: the stored 12 bits, never a new guess (10 bits).
    external = pd.DataFrame(rows[:12:2]).drop(columns="split")
    external.to_csv(root / "external.csv", index=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict(ckpt, root / "external.csv", tmp_path / "predicted")
    assert not [w for w in record if "bit" in str(w.message) or "older" in str(w.message)]
    assert json.loads((tmp_path / "predicted" / "schema.json").read_text())["bit_depth"] == 12
    probabilities = pd.read_csv(tmp_path / "predicted" / "predictions.csv").filter(like="prob_")
    assert probabilities.shape == (6, 2) and np.isfinite(probabilities.to_numpy()).all()
