"""DICOM as scanners write it: LUT chain, windows, frames and compressed transfer syntaxes.

Every file is a real one bundled inside the pydicom package (never downloaded), and every
expected image comes from pydicom's own ``apply_modality_lut`` / ``apply_voi_lut``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder  # noqa: E402

from nervus_lightning.data.datamodule import NervusDataModule  # noqa: E402
from nervus_lightning.data.dicom import parse_frame, parse_window  # noqa: E402
from nervus_lightning.data.images import ImageReadError, check_image_files, read_image  # noqa: E402
from nervus_lightning.data.schema import DataSchema, NervusInputError  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def bundled(name: str) -> Path:
    """A test file shipped inside the pydicom package (get_testdata_file may download)."""
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def _stored_range(ds) -> tuple[float, float]:
    """Modality-LUT output range from the header, written out for the files used here."""
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        low, high = 0.0, 2.0**bits - 1
    slope = float(ds.get("RescaleSlope", 1))
    intercept = float(ds.get("RescaleIntercept", 0))
    return low * slope + intercept, high * slope + intercept


def _window_output_range(ds) -> tuple[float, float]:
    """The values pydicom's own windowing gives far below and far above the window."""
    center, width = float(np.ravel(ds.WindowCenter)[0]), float(np.ravel(ds.WindowWidth)[0])
    far = np.array([center - 1e6 * width, center + 1e6 * width])
    low, high = apply_voi_lut(far, ds)
    return float(low), float(high)


def _pydicom_display(ds, pixels: np.ndarray) -> np.ndarray:
    """pydicom's modality LUT then VOI LUT, scaled to [0, 1] by the window's output range."""
    values = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds:
        low, high = _window_output_range(ds)
        shown = apply_voi_lut(values, ds)
    else:
        low, high = sorted(_stored_range(ds))
        shown = values
    return np.clip((np.asarray(shown, np.float64) - low) / (high - low), 0.0, 1.0)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # rescale slope/intercept, no window: full range
        "MR_small.dcm",  # window center/width
        "MR_small_RLE.dcm",  # RLE lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "693_J2KI.dcm",  # JPEG 2000, CT with rescale and window
        "JPGExtended.dcm",  # JPEG extended 12-bit
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, RGB
    ],
)
def test_lut_chain_matches_pydicom(name):
    path = bundled(name)
    ds = pydicom.dcmread(path)
    image = read_image(path, in_channels=3 if ds.SamplesPerPixel == 3 else 1)
    if ds.SamplesPerPixel == 3:
        expected = ds.pixel_array.astype(np.float64) / (2.0**ds.BitsStored - 1)
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    else:
        expected = _pydicom_display(ds, ds.pixel_array)
        assert image.shape == (1, ds.Rows, ds.Columns)
        np.testing.assert_allclose(image[0].numpy(), expected, rtol=0, atol=1e-6)
    assert check_image_files([path]) == []


def test_compressed_copies_read_like_the_uncompressed_original():
    original = read_image(bundled("MR_small.dcm"), 1)
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(read_image(bundled(name), 1).numpy(), original.numpy())


def test_user_window_replaces_the_files_own():
    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path, 1, window=(-600.0, 1500.0))[0].numpy()
    ds.WindowCenter, ds.WindowWidth = -600, 1500  # a CT lung window, through pydicom
    np.testing.assert_allclose(image, _pydicom_display(ds, ds.pixel_array), atol=1e-6)
    hounsfield = apply_modality_lut(ds.pixel_array, ds)
    assert (image[hounsfield <= -1350] == 0).all() and (image[hounsfield > 150] == 1).all()
    assert 0 < image.mean() < 1


def test_window_none_is_the_full_range_and_auto_uses_the_files_window():
    path = bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    low, high = _stored_range(ds)
    full = (apply_modality_lut(ds.pixel_array, ds) - low) / (high - low)
    np.testing.assert_allclose(read_image(path, 1, window="none")[0].numpy(), full, atol=1e-6)
    windowed = read_image(path, 1, window="auto")[0].numpy()
    assert windowed.max() == 1.0 and full.max() < 0.6  # the file's window spreads the tissue


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    # No MONOCHROME1 file ships with pydicom: a bundled MR file relabelled.
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1"  # no suffix: found by the DICM preamble
    ds.save_as(inverted)
    image = read_image(inverted, 1)[0].numpy()
    np.testing.assert_allclose(image, 1.0 - _pydicom_display(ds, ds.pixel_array), atol=1e-6)


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm"])
def test_frames_of_a_multi_frame_file(name):
    path = bundled(name)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    assert frames.shape[0] == int(ds.NumberOfFrames) == 15
    low, high = _stored_range(ds)

    def scaled(values):
        return (apply_modality_lut(values, ds).astype(np.float64) - low) / (high - low)

    for frame, expected in (
        ("first", scaled(frames[0])),
        ("middle", scaled(frames[7])),
        ("mean", scaled(frames).mean(axis=0)),
    ):
        image = read_image(path, 1, frame=frame)[0].numpy()
        np.testing.assert_allclose(image, expected, rtol=1e-6, atol=1e-9, err_msg=frame)


def test_middle_frame_of_a_multi_frame_colour_jpeg():
    path = bundled("examples_ybr_color.dcm")  # 30 frames, JPEG baseline, YBR -> RGB
    ds = pydicom.dcmread(path)
    image = read_image(path, 3, frame="middle").permute(1, 2, 0).numpy()
    np.testing.assert_allclose(image, ds.pixel_array[15] / 255.0, atol=1e-6)


def test_bad_window_and_frame_settings_are_user_errors():
    assert parse_window([-600, 1500]) == (-600.0, 1500.0)
    assert parse_window("AUTO") == "auto" and parse_frame("Mean") == "mean"
    for bad in ("lung", [40], [40, 0], ["a", "b"]):
        with pytest.raises(NervusInputError, match="data.window"):
            parse_window(bad)
    with pytest.raises(NervusInputError, match="data.frame must be one of middle, first, mean"):
        parse_frame("last")


def test_missing_decoder_is_named_before_decoding(monkeypatch):
    j2k, plain = bundled("JPEG2000.dcm"), bundled("CT_small.dcm")
    decoder = get_decoder(pydicom.dcmread(j2k, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})  # as if no JPEG 2000 plug-in were installed
    assert not decoder.is_available
    problems = check_image_files([plain, j2k])
    assert [p for p, _ in problems] == [str(j2k)]
    reason = problems[0][1]
    assert "JPEG 2000" in reason and 'pip install "nervus-lightning[dicom]"' in reason
    with pytest.raises(ImageReadError, match=r"nervus-lightning\[dicom\]") as err:
        read_image(j2k, 1)
    assert str(j2k) in str(err.value)


def _dicom_csv(root: Path) -> Path:
    rows = []
    for i in range(6):
        rel = f"img/{i}.dcm"
        (root / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(bundled("CT_small.dcm"), root / rel)
        split = "val" if i >= 4 else "train"
        rows.append({"uniqID": f"c{i}", "imgpath": rel, "label_y": "ab"[i % 2], "split": split})
    csv = root / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_window_and_frame_travel_in_the_schema(tmp_path):
    csv = _dicom_csv(tmp_path)
    trained = NervusDataModule(csv, image_size=8, window=[-600, 1500], frame="first")
    assert (trained.schema.window, trained.schema.frame) == ([-600.0, 1500.0], "first")
    schema = DataSchema.from_dict(json.loads(json.dumps(trained.schema.to_dict())))
    predicting = NervusDataModule(csv, schema=schema, image_size=8)
    dataset = predicting.dataset(None)
    dataset.transform = None
    expected = read_image(tmp_path / "img/0.dcm", 1, window=(-600.0, 1500.0))
    np.testing.assert_array_equal(dataset[0]["image"].numpy(), expected.numpy())
    with pytest.raises(NervusInputError, match=r"data.window=none differs .*\[-600.0, 1500.0\]"):
        NervusDataModule(csv, schema=schema, image_size=8, window="none")
    default = NervusDataModule(csv, image_size=8)
    assert (default.schema.window, default.schema.frame) == ("auto", "middle")


def test_schema_without_dicom_settings_reads_as_older_versions_did(tmp_path):
    csv = _dicom_csv(tmp_path)
    old = NervusDataModule(csv, image_size=8).schema.to_dict()
    del old["window"], old["frame"]
    predicting = NervusDataModule(csv, schema=old, image_size=8)
    assert (predicting.schema.window, predicting.schema.frame) == ("none", "first")


def test_dicom_files_leave_the_bit_depth_of_other_images_alone(tmp_path):
    from PIL import Image

    from nervus_lightning.data.images import choose_bit_depth

    ramp = np.linspace(0, 4095, 64).round().astype(np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    ct = bundled("CT_small.dcm")  # BitsStored 16, scaled by its own header
    assert choose_bit_depth([tmp_path / "ramp.png", ct]).bits == 12
    assert choose_bit_depth([ct]).bits == 16


def test_enhanced_multi_frame_reads_rescale_and_window_from_functional_groups(tmp_path):
    # No enhanced multi-frame file ships with pydicom: a bundled 15-frame file given functional
    # groups (PS3.3 C.7.6.16): a shared rescale and a window per frame.
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(bundled("rtdose.dcm"))
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 2, -100
    shared = Dataset()
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for i in range(int(ds.NumberOfFrames)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 2_000_000 + 10_000 * i, 1_000_000
        group = Dataset()
        group.FrameVOILUTSequence = [voi]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)

    pixels = ds.pixel_array
    flat = pydicom.dcmread(bundled("rtdose.dcm"))  # the same values, where pydicom reads them
    flat.RescaleSlope, flat.RescaleIntercept = 2, -100
    flat.WindowCenter, flat.WindowWidth = 2_000_000 + 10_000 * 7, 1_000_000
    image = read_image(path, 1, frame="middle")[0].numpy()
    np.testing.assert_allclose(image, _pydicom_display(flat, pixels[7]), atol=1e-6)
    assert 0.05 < image.mean() < 0.95  # the window shows the dose, not a black image

    mean = read_image(path, 1, frame="mean")[0].numpy()
    average = apply_modality_lut(pixels, flat).mean(axis=0)
    low, high = _window_output_range(flat)
    expected = (apply_voi_lut(average, flat) - low) / (high - low)
    np.testing.assert_allclose(mean, expected, atol=1e-6)


def _one_file_csv(root: Path, source: Path, name: str = "bad.dcm") -> Path:
    """CT_small.dcm on CSV lines 2-5 and ``source`` on line 6 (a training case)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(4):
        shutil.copy(bundled("CT_small.dcm"), root / "img" / f"{i}.dcm")
        rows.append((f"c{i}", f"img/{i}.dcm", "ab"[i % 2], "val" if i == 3 else "train"))
    shutil.copy(source, root / "img" / name)
    rows.append(("odd", f"img/{name}", "a", "train"))
    csv = root / "data.csv"
    pd.DataFrame(rows, columns=["uniqID", "imgpath", "label_y", "split"]).to_csv(csv, index=False)
    return csv


def test_truncated_pixel_data_is_found_before_training(tmp_path):
    whole = bundled("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:-1000])  # a copy that stopped early: the header is intact
    csv = _one_file_csv(tmp_path / "set", cut)
    with pytest.raises(NervusInputError) as err:
        NervusDataModule(csv, image_size=8)
    message = str(err.value)
    assert f"CSV line 6: {tmp_path / 'set' / 'img' / 'bad.dcm'}: its pixel data are" in message
    # 1000 bytes cut: 138 after the pixel data, 862 of them.
    assert "truncated: 31906 bytes where the header (128 x 128 pixels" in message
    assert "asks for 32768" in message
    assert check_image_files([bundled("CT_small.dcm")]) == []


def test_truncated_compressed_pixel_data_is_found_before_training(tmp_path):
    rle = bundled("MR_small_RLE.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(rle.read_bytes()[:-3000])  # inside the one RLE fragment
    missing_frame = tmp_path / "frames.dcm"
    ds = pydicom.dcmread(rle)
    ds.NumberOfFrames = 2  # the header asks for two frames; the data hold one fragment
    ds.save_as(missing_frame)
    no_pixels = tmp_path / "header_only.dcm"  # cut where the pixel data element starts
    no_pixels.write_bytes(bundled("CT_small.dcm").read_bytes()[:6288])
    with pytest.warns(UserWarning, match="End of file"):  # pydicom's own note on the cut file
        problems = dict(check_image_files([rle, cut, missing_frame, no_pixels]))
    assert set(problems) == {str(cut), str(missing_frame), str(no_pixels)}
    assert "holds no pixel data: it is probably truncated" in problems[str(no_pixels)]
    assert "no DICOM data elements: it is truncated" in problems[str(cut)]
    assert "1 fragment(s) for 2 frame(s)" in problems[str(missing_frame)]


def test_one_bit_segmentation_is_refused_as_not_an_image(tmp_path):
    seg = bundled("liver_1frame.dcm")  # a DICOM Segmentation: BitsAllocated 1
    csv = _one_file_csv(tmp_path, seg)
    with pytest.raises(NervusInputError) as err:
        NervusDataModule(csv, image_size=8)
    assert f"CSV line 6: {tmp_path / 'img' / 'bad.dcm'}: it has one bit per pixel" in str(err.value)
    assert "a DICOM Segmentation, not an image" in str(err.value)
    with pytest.raises(ImageReadError, match="point imgpath at the image it was drawn on"):
        read_image(seg, 1)


def test_palette_color_is_read_through_its_lookup_table():
    from pydicom.pixels import apply_color_lut

    path = bundled("examples_palette.dcm")  # PALETTE COLOR ultrasound, 16-bit palette entries
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    assert check_image_files([path]) == []
    image = read_image(path, 3)
    assert image.shape == (3, ds.Rows, ds.Columns)
    expected = apply_color_lut(ds.pixel_array, ds) / (2.0**16 - 1)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    gray = read_image(path, 1)[0].numpy()  # colour to gray by the luma weights, as for RGB
    np.testing.assert_allclose(gray, expected @ np.array([0.299, 0.587, 0.114]), atol=1e-5)


def _windowless_csv(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Training: CT_small (no window) and an MR without its window, each under its own scaling;
    the MR with its window; validation the same. Returns the CSV and the pooled CT and MR values
    of the training files without a window."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    ct = pydicom.dcmread(bundled("CT_small.dcm"))
    mr = pydicom.dcmread(bundled("MR_small.dcm"))
    shutil.copy(bundled("CT_small.dcm"), root / "img" / "ct.dcm")
    shutil.copy(bundled("MR_small.dcm"), root / "img" / "mr_window.dcm")
    darker = pydicom.dcmread(bundled("CT_small.dcm"))
    darker.RescaleIntercept = -1124  # a second CT, 100 HU lower
    darker.save_as(root / "img" / "ct2.dcm")
    bare = pydicom.dcmread(bundled("MR_small.dcm"))
    del bare.WindowCenter, bare.WindowWidth
    bare.save_as(root / "img" / "mr.dcm")
    rows = [
        ("ct", "img/ct.dcm", "a", "train"),
        ("ct2", "img/ct2.dcm", "b", "train"),
        ("mr", "img/mr.dcm", "a", "train"),
        ("mrw", "img/mr_window.dcm", "b", "train"),
        ("v1", "img/ct.dcm", "a", "val"),
        ("v2", "img/mr.dcm", "b", "val"),
    ]
    csv = root / "data.csv"
    pd.DataFrame(rows, columns=["uniqID", "imgpath", "label_y", "split"]).to_csv(csv, index=False)
    hounsfield = apply_modality_lut(ct.pixel_array, ct).astype(np.float64).ravel()
    ct_values = np.concatenate([hounsfield, hounsfield - 100])
    mr_values = apply_modality_lut(mr.pixel_array, mr).astype(np.float64).ravel()
    return csv, ct_values, mr_values


def test_auto_window_is_chosen_once_from_the_training_files_without_one(tmp_path, caplog):
    import logging

    csv, ct_values, mr_values = _windowless_csv(tmp_path)
    with caplog.at_level(logging.INFO, logger="nervus_lightning.data.datamodule"):
        trained = NervusDataModule(csv, image_size=8)
    assert trained.schema.window == "auto"
    windows = trained.schema.auto_window
    for modality, values in (("CT", ct_values), ("MR", mr_values)):
        low, high = np.percentile(values, [0.5, 99.5])
        assert windows[modality] == pytest.approx([(low + high) / 2, high - low])
    logged = [r.getMessage() for r in caplog.records if "data.window=auto" in r.getMessage()]
    assert len(logged) == 1 and "2 CT file(s) -> center" in logged[0]

    dataset = trained.dataset(None, cached=False)
    dataset.transform = None
    image = {uid: dataset[i]["image"][0].numpy() for i, uid in enumerate(trained.frame.uniqID)}
    ct_window = tuple(windows["CT"])
    np.testing.assert_array_equal(
        image["ct"], read_image(tmp_path / "img/ct.dcm", 1, window=ct_window)[0].numpy()
    )
    # The anatomy spans the display range (full range: a flat grey band of a few hundredths).
    assert np.percentile(image["ct"], 99) - np.percentile(image["ct"], 1) > 0.8
    full = read_image(tmp_path / "img/ct.dcm", 1, window="none")[0].numpy()
    assert np.percentile(full, 99) - np.percentile(full, 1) < 0.1
    # One window for the data set: the darker CT is darker, not stretched to its own range.
    assert image["ct2"].mean() < image["ct"].mean() - 0.02
    # A file with its own window keeps it.
    np.testing.assert_array_equal(
        image["mrw"], read_image(tmp_path / "img/mr_window.dcm", 1)[0].numpy()
    )

    # Prediction reads the stored windows, not the new CSV's files.
    schema = DataSchema.from_dict(json.loads(json.dumps(trained.schema.to_dict())))
    other = tmp_path / "other.csv"
    pd.DataFrame(
        [("p", str(tmp_path / "img/mr.dcm"), "a", "test")],
        columns=["uniqID", "imgpath", "label_y", "split"],
    ).to_csv(other, index=False)
    predicting = NervusDataModule(other, schema=schema, image_size=8)
    assert predicting.schema.auto_window == windows
    item = predicting.dataset(None, cached=False)
    item.transform = None
    expected = read_image(tmp_path / "img/mr.dcm", 1, window=tuple(windows["MR"]))
    np.testing.assert_array_equal(item[0]["image"].numpy(), expected.numpy())
    NervusDataModule(other, schema=schema, image_size=8, window="auto")  # the same setting

    # A model trained before the stored window: full range, as it was trained.
    old = trained.schema.to_dict()
    del old["auto_window"]
    legacy = NervusDataModule(other, schema=old, image_size=8).dataset(None, cached=False)
    legacy.transform = None
    full_mr = read_image(tmp_path / "img/mr.dcm", 1, window="auto")
    np.testing.assert_array_equal(legacy[0]["image"].numpy(), full_mr.numpy())
    # Explicit windows and none are unchanged: no data set window.
    assert NervusDataModule(csv, image_size=8, window="none").schema.auto_window is None
    lung = NervusDataModule(csv, image_size=8, window=[-600, 1500]).schema
    assert lung.auto_window is None


def test_auto_window_subsamples_with_a_fixed_seed_and_skips_windowed_files(tmp_path):
    from nervus_lightning.data.dicom import AutoWindow, choose_auto_window

    csv, _, _ = _windowless_csv(tmp_path)
    img = tmp_path / "img"
    first = choose_auto_window([img / "ct.dcm", img / "ct2.dcm"], max_files=1)
    again = choose_auto_window([img / "ct.dcm", img / "ct2.dcm"], max_files=1)
    assert first.window == again.window and first.files == {"CT": (2, 1)}
    assert choose_auto_window([img / "mr_window.dcm"]).window is None
    window = AutoWindow.from_json({"CT": [40, 400]})
    # A modality the data set's window does not name: full range, as plain auto.
    np.testing.assert_array_equal(
        read_image(img / "mr.dcm", 1, window=window).numpy(),
        read_image(img / "mr.dcm", 1, window="auto").numpy(),
    )


def test_the_data_sets_window_is_part_of_the_image_cache_key():
    from nervus_lightning.data.cache import ReadSettings
    from nervus_lightning.data.dicom import AutoWindow

    keys = [
        json.dumps(ReadSettings(8, 1, 16, window, "middle").key_fields())
        for window in ("auto", AutoWindow.from_json({"CT": [40, 400]}), (40.0, 400.0))
    ]
    assert len(set(keys)) == 3
    assert '"window": {"auto": {"CT": [40.0, 400.0]}}' in keys[1]


def test_train_then_predict_reads_windowless_files_with_the_stored_window(tmp_path):
    from conftest import FAST, compose_config

    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.module import NervusModule
    from nervus_lightning.workflows.predict import predict
    from nervus_lightning.workflows.train import train

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(8):  # CT_small under eight intercepts: the class is the brightness
        ds = pydicom.dcmread(bundled("CT_small.dcm"))
        ds.RescaleIntercept = -1024 + (150 if i % 2 else -150) + 10 * i
        ds.save_as(root / "img" / f"{i}.dcm")
        split = "train" if i < 4 else "val"
        rows.append((f"c{i}", f"img/{i}.dcm", "ab"[i % 2], split))
    columns = ["uniqID", "imgpath", "label_y", "split"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "data.csv", index=False)
    run = tmp_path / "run"
    cfg = compose_config(
        [f"data.csv={root / 'data.csv'}", *FAST, "+evaluation.positive_class={label_y:b}"]
    )
    train(train_settings(cfg), run)
    stored = json.loads((run / "schema.json").read_text())["auto_window"]
    assert set(stored) == {"CT"} and stored["CT"][1] > 1000
    ckpt = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    assert NervusModule.load_from_checkpoint(ckpt, map_location="cpu").schema.auto_window == stored

    # One dark file alone: the stored window, never one chosen from the new CSV.
    pd.DataFrame([rows[6][:3]], columns=columns[:3]).to_csv(root / "one.csv", index=False)
    predict(ckpt, root / "one.csv", tmp_path / "predicted")
    assert json.loads((tmp_path / "predicted" / "schema.json").read_text())["auto_window"] == stored
    trained = pd.read_csv(run / "predictions.csv").set_index("uniqID").filter(like="prob_")
    predicted = pd.read_csv(tmp_path / "predicted" / "predictions.csv").set_index("uniqID")
    np.testing.assert_allclose(
        predicted.filter(like="prob_").loc["c6"].to_numpy(),
        trained.loc["c6"].to_numpy(),
        atol=1e-5,
    )
