"""``python -m nervus_lightning.preview``: the network's inputs as PNGs, via the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_command
from PIL import Image, PngImagePlugin

from nervus_lightning.data.images import read_image
from nervus_lightning.data.preview import to_png_array
from nervus_lightning.data.transforms import build_eval_transform

pydicom = pytest.importorskip("pydicom")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SIZE = 32


def _run(args, cwd):
    return run_command("nervus_lightning.preview", args, cwd, timeout=300)


def _csv(root: Path) -> Path:
    """PNG and DICOM rows (bundled pydicom files: CT with rescale, MR with its own window)."""
    (root / "img").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 4095, 48).round().astype(np.uint16), (40, 1))
    sbit = PngImagePlugin.PngInfo()
    sbit.add(b"sBIT", bytes([12]))  # declares 12 significant bits: data.bit_depth=auto reads it
    Image.fromarray(ramp).save(root / "img" / "ramp.png", pnginfo=sbit)
    Image.fromarray((ramp // 16).astype(np.uint8)).save(root / "img" / "ramp8.png")
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "img" / "ct.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", root / "img" / "mr.dcm")
    rows = [
        ("ct/1", "img/ct.dcm", "a", "train"),
        ("mr", "img/mr.dcm", "b", "train"),
        ("ramp", "img/ramp.png", "a", "train"),
        ("ramp8", "img/ramp8.png", "b", "train"),
        ("v1", "img/ct.dcm", "a", "val"),
        ("v2", "img/mr.dcm", "b", "val"),
    ]
    frame = pd.DataFrame(rows, columns=["uniqID", "imgpath", "label_y", "split"])
    csv = root / "data.csv"
    frame.to_csv(csv, index=False)
    return csv


def _expected(path: Path, **dicom) -> np.ndarray:
    image = read_image(path, 1, **dicom)
    return to_png_array(build_eval_transform(SIZE)(image))


def test_preview_command_writes_inputs_and_sheet(tmp_path):
    csv = _csv(tmp_path)
    args = [f"data.csv={csv}", f"data.image_size={SIZE}", "data.window=[-600,1500]"]
    out = _run([*args, "n=3", "augmentation=xray", "out=lung", "hydra.run.dir=h"], tmp_path)
    assert out.returncode == 0, out.stderr
    lung = tmp_path / "lung"
    assert sorted(p.name for p in lung.iterdir()) == ["ct_1.png", "mr.png", "ramp.png", "sheet.png"]
    # Exactly the network's input: LUTs, window, bit depth, resize; 0 -> black, 1 -> white.
    window = {"window": (-600.0, 1500.0)}
    for name, source, options in (
        ("ct_1.png", "ct.dcm", window),
        ("mr.png", "mr.dcm", window),
        ("ramp.png", "ramp.png", {"bit_depth": 12}),
    ):
        written = np.asarray(Image.open(lung / name))
        assert written.shape == (SIZE, SIZE) and written.dtype == np.uint8
        np.testing.assert_array_equal(written, _expected(tmp_path / "img" / source, **options))
    sheet = Image.open(lung / "sheet.png")
    # One row of three tiles (32 px inputs enlarged 4x), and the augmented row under it.
    assert sheet.width == 3 * (128 + 4) + 4 and sheet.height == 2 * (128 + 14 + 4) + 4


def test_write_preview_without_augmentation(tmp_path):
    from nervus_lightning.data.datamodule import NervusDataModule
    from nervus_lightning.data.preview import auto_window_note, write_preview

    csv = _csv(tmp_path)
    datamodule = NervusDataModule(csv, image_size=SIZE)  # window=auto, frame=middle
    written = write_preview(datamodule, tmp_path / "plain", n=4)
    assert [p.name for p in written] == ["ct_1.png", "mr.png", "ramp.png", "ramp8.png", "sheet.png"]
    # No window in the CT file: the data set's CT window, from the training CT files.
    ct_window = tuple(datamodule.schema.auto_window["CT"])
    assert set(datamodule.schema.auto_window) == {"CT"}
    for name, source, options in (
        ("ct_1.png", "ct.dcm", {"window": ct_window}),
        ("mr.png", "mr.dcm", {}),  # the file's own window
        ("ramp.png", "ramp.png", {"bit_depth": 12}),
        ("ramp8.png", "ramp8.png", {}),
    ):
        written = np.asarray(Image.open(tmp_path / "plain" / name))
        np.testing.assert_array_equal(written, _expected(tmp_path / "img" / source, **options))
    assert np.asarray(Image.open(tmp_path / "plain" / "ramp.png")).max() >= 250  # 12 bits: white
    lung = NervusDataModule(csv, image_size=SIZE, window=[-600, 1500])
    write_preview(lung, tmp_path / "lung", n=1)
    assert not np.array_equal(
        np.asarray(Image.open(tmp_path / "lung" / "ct_1.png")),
        np.asarray(Image.open(tmp_path / "plain" / "ct_1.png")),
    )
    # A title line names the data set's window; the user's window needs none.
    assert Image.open(tmp_path / "plain" / "sheet.png").size == (4 * 132 + 4, 18 + 128 + 14 + 8)
    assert Image.open(tmp_path / "lung" / "sheet.png").size == (132 + 4, 128 + 14 + 8)
    assert auto_window_note(datamodule) == (
        "data.window=auto, DICOM files without their own window: CT: center "
        f"{ct_window[0]:g} width {ct_window[1]:g}"
    )
    assert auto_window_note(lung) is None


def test_preview_user_errors(tmp_path):
    from nervus_lightning.data.datamodule import NervusDataModule
    from nervus_lightning.data.preview import write_preview
    from nervus_lightning.data.schema import NervusInputError

    datamodule = NervusDataModule(_csv(tmp_path), image_size=SIZE)
    with pytest.raises(NervusInputError, match=r"split='test' has no rows; .* train, val"):
        write_preview(datamodule, tmp_path / "p", split="test")
    with pytest.raises(NervusInputError, match="n must be at least 1"):
        write_preview(datamodule, tmp_path / "p", n=0)
    written = write_preview(datamodule, tmp_path / "p", split="val", n=50)
    assert [p.name for p in written] == ["v1.png", "v2.png", "sheet.png"]


@pytest.mark.slow
def test_preview_errors_are_one_message(tmp_path):
    csv = _csv(tmp_path)
    out = _run([f"data.csv={csv}", "split=test", "hydra.run.dir=h"], tmp_path)
    assert out.returncode == 2 and "split='test' has no rows" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run([f"data.csv={csv}", "data.frame=last", "hydra.run.dir=h"], tmp_path)
    assert out.returncode == 2 and "data.frame must be one of" in out.stderr


def test_png_array_keeps_colour_and_folds_repeated_gray():
    gray = torch.linspace(0, 1, 16).reshape(1, 4, 4)
    assert to_png_array(gray.expand(3, -1, -1)).shape == (4, 4)
    colour = torch.stack([gray[0], 1 - gray[0], gray[0]])
    array = to_png_array(colour)
    assert array.shape == (4, 4, 3) and array[0, 0].tolist() == [0, 255, 0]
