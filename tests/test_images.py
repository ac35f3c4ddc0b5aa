"""Tests for nervus_lightning.data.images: decoding, bit-depth scaling, channels, file checks."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, PngImagePlugin

from nervus_lightning.data.images import ImageReadError, check_image_files, read_image


def _ramp(height: int, width: int, high: int, dtype) -> np.ndarray:
    """Values 0..high spread over the image, ``high`` included."""
    values = np.linspace(0, high, height * width).round().astype(dtype)
    return values.reshape(height, width)


def _save_png(path, array: np.ndarray, sbit: int | None = None):
    info = None
    if sbit is not None:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(array).save(path, pnginfo=info)
    return path


def test_8bit_png_is_divided_by_255(tmp_path):
    array = _ramp(20, 30, 255, np.uint8)
    image = read_image(_save_png(tmp_path / "a.png", array), in_channels=1)
    assert image.dtype == torch.float32
    assert image.shape == (1, 20, 30)
    np.testing.assert_allclose(image[0].numpy(), array / 255.0, rtol=0, atol=1e-7)


def test_16bit_png_full_range_is_divided_by_65535(tmp_path):
    array = _ramp(16, 16, 65535, np.uint16)
    path = _save_png(tmp_path / "a.png", array)
    assert Image.open(path).mode == "I;16"
    image = read_image(path, in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), array / 65535.0, rtol=0, atol=1e-7)
    assert len(torch.unique(image)) == 256  # 16 x 16 distinct values kept


def test_12bit_values_in_16bit_png_are_divided_by_4095(tmp_path):
    array = _ramp(64, 64, 4095, np.uint16)
    image = read_image(_save_png(tmp_path / "a.png", array), in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), array / 4095.0, rtol=0, atol=1e-7)
    assert image.max().item() == pytest.approx(1.0)


@pytest.mark.parametrize(("high", "expected_scale"), [(200, 255), (1000, 1023), (9000, 16383)])
def test_smallest_candidate_depth_holding_the_maximum(tmp_path, high, expected_scale):
    array = _ramp(8, 8, high, np.uint16)
    image = read_image(_save_png(tmp_path / "a.png", array), in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), array / expected_scale, rtol=0, atol=1e-7)


def test_png_sbit_chunk_declares_the_depth(tmp_path):
    # A dark 12-bit image (max 1000) would be taken for 10-bit; sBIT=12 says otherwise.
    dark = _ramp(8, 8, 1000, np.uint16)
    image = read_image(_save_png(tmp_path / "dark.png", dark, sbit=12), in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), dark / 4095.0, rtol=0, atol=1e-7)
    # A writer that followed the PNG standard scaled the values up to 16 bits: use 16 bits.
    scaled = _ramp(8, 8, 65535, np.uint16)
    image = read_image(_save_png(tmp_path / "scaled.png", scaled, sbit=12), in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), scaled / 65535.0, rtol=0, atol=1e-7)


def test_bit_depth_argument_overrides_and_is_checked(tmp_path):
    path = _save_png(tmp_path / "a.png", _ramp(8, 8, 4095, np.uint16))
    image = read_image(path, in_channels=1, bit_depth=16)
    assert image.max().item() == pytest.approx(4095 / 65535)
    with pytest.raises(ImageReadError, match="bit_depth=10"):
        read_image(path, in_channels=1, bit_depth=10)
    # 8-bit files are always divided by 255, whatever bit_depth says.
    eight = _save_png(tmp_path / "b.png", _ramp(8, 8, 255, np.uint8))
    assert read_image(eight, in_channels=1, bit_depth=12).max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("byte_order", ["<u2", ">u2"])
def test_16bit_tiff(tmp_path, byte_order):
    array = _ramp(24, 20, 65535, np.uint16)
    path = tmp_path / "a.tif"
    Image.fromarray(array.astype(byte_order)).save(path)
    assert Image.open(path).mode in ("I;16", "I;16B")
    image = read_image(path, in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), array / 65535.0, rtol=0, atol=1e-7)


def test_float_tiff_in_unit_range_is_kept(tmp_path):
    array = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    path = tmp_path / "a.tif"
    Image.fromarray(array).save(path)
    np.testing.assert_array_equal(read_image(path, in_channels=1)[0].numpy(), array)


def test_jpeg_matches_pillow_decoding(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.jpg"
    Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)).save(path, quality=90)
    decoded = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    image = read_image(path, in_channels=1)
    np.testing.assert_allclose(image[0].numpy(), decoded, rtol=0, atol=1e-7)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    picture = Image.fromarray(_ramp(4, 6, 240, np.uint8))
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    picture.save(path, exif=exif, quality=100)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.float32) / 255
    image = read_image(path, in_channels=1)
    assert image.shape == (1, 6, 4)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-7)


def test_rgb_to_one_channel_uses_pillow_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    image = read_image(path, in_channels=1)
    assert image.shape == (1, 12, 14)
    pillow_gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    # Pillow rounds to integers; the float result differs by at most half a grey level.
    np.testing.assert_allclose(image[0].numpy(), pillow_gray, rtol=0, atol=0.5 / 255 + 1e-6)
    three = read_image(path, in_channels=3)
    np.testing.assert_allclose(three.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)


def test_rgba_drops_alpha_and_palette_is_expanded(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png", 3)[0].numpy(), 1.0)
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")) / 255.0
    np.testing.assert_allclose(
        read_image(tmp_path / "p.png", 3).permute(1, 2, 0).numpy(), expected, atol=1e-7
    )


def test_one_channel_to_three_repeats(tmp_path):
    array = _ramp(6, 5, 4095, np.uint16)
    image = read_image(_save_png(tmp_path / "a.png", array), in_channels=3)
    assert image.shape == (3, 6, 5)
    for channel in image:
        np.testing.assert_allclose(channel.numpy(), array / 4095.0, atol=1e-7)


def test_bad_in_channels(tmp_path):
    path = _save_png(tmp_path / "a.png", _ramp(4, 4, 255, np.uint8))
    with pytest.raises(ValueError, match="in_channels"):
        read_image(path, in_channels=2)


def test_missing_file_message_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "x.png"
    with pytest.raises(ImageReadError) as caught:
        read_image(path, in_channels=1)
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError, match="garbage.png.*exclude"):
        read_image(garbage, in_channels=1)

    good = _save_png(
        tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    )
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="truncated.png.*damaged"):
        read_image(truncated, in_channels=1)


def test_image_read_error_pickles():
    error = pickle.loads(pickle.dumps(ImageReadError("a/b.png", "file not found")))
    assert (error.path, error.reason) == ("a/b.png", "file not found")
    assert str(error) == "cannot read image 'a/b.png': file not found"


def test_check_image_files_finds_every_bad_file_in_order(tmp_path):
    good = []
    for i in range(5):
        good.append(_save_png(tmp_path / f"ok{i}.png", _ramp(8, 8, 255, np.uint8)))
    tiff = tmp_path / "ok.tif"
    Image.fromarray(_ramp(8, 8, 65535, np.uint16)).save(tiff)
    jpeg = tmp_path / "ok.jpg"
    Image.fromarray(_ramp(8, 8, 255, np.uint8)).save(jpeg)
    missing = tmp_path / "missing.png"
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.png"
    folder.mkdir()

    paths = [good[0], missing, good[1], tiff, garbage, jpeg, empty, good[2], folder, good[3]]
    bad = check_image_files([str(p) for p in paths], max_workers=4)
    assert [p for p, _ in bad] == [str(missing), str(garbage), str(empty), str(folder)]
    reasons = dict(bad)
    assert "not found" in reasons[str(missing)]
    assert "folder" in reasons[str(folder)]
    assert check_image_files([str(p) for p in good]) == []


def test_check_image_files_is_fast(tmp_path):
    payload = _save_png(tmp_path / "src.png", _ramp(64, 64, 255, np.uint8)).read_bytes()
    paths = []
    for i in range(2000):
        path = tmp_path / f"{i}.png"
        path.write_bytes(payload)
        paths.append(str(path))
    start = time.perf_counter()
    assert check_image_files(paths) == []
    assert time.perf_counter() - start < 10.0  # about 0.5 s on a laptop; generous for CI


def test_dicom_ct_rescaled_by_bits_stored():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("CT_small.dcm")  # bundled with pydicom
    ds = pydicom.dcmread(path)
    hounsfield = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    # Signed 16-bit stored values span [-32768, 32767]; slope 1, intercept -1024.
    low = -32768 * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hounsfield - low) / 65535.0
    image = read_image(path, in_channels=1)
    assert image.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_allclose(image[0].numpy(), expected, rtol=0, atol=1e-6)
    assert check_image_files([path]) == []


def test_dicom_monochrome1_is_inverted_and_found_without_suffix(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    source = get_testdata_file("MR_small.dcm")
    mono2 = read_image(source, in_channels=1)
    ds = pydicom.dcmread(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "inverted"  # no suffix: found by the DICM preamble
    ds.save_as(inverted)
    mono1 = read_image(inverted, in_channels=3)
    assert mono1.shape == (3, ds.Rows, ds.Columns)
    np.testing.assert_allclose(mono1[0].numpy(), 1.0 - mono2[0].numpy(), atol=1e-6)
    assert check_image_files([str(inverted)]) == []
