"""Tests for nervus_lightning.data.transforms: presets, float precision, high-precision Equalize."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from nervus_lightning.data.transforms import (
    TRAIN_TRANSFORMS,
    HighPrecisionRandAugment,
    HighPrecisionTrivialAugmentWide,
    build_eval_transform,
    build_train_transform,
    equalize_float,
)

SIZE = 48


def _sixteen_bit_image(channels: int, height: int = 90, width: int = 70, seed: int = 0):
    """A smooth 16-bit gradient with noise, as float in [0, 1]: many distinct levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    values = 20000 + 300 * xx + 100 * yy + rng.integers(0, 2000, (height, width))
    gray = torch.from_numpy((np.clip(values, 0, 65535) / 65535.0).astype(np.float32))
    return gray.expand(channels, -1, -1).clone()


def test_registry_names():
    assert set(TRAIN_TRANSFORMS) == {"none", "xray", "randaug", "trivialaugwide"}


@pytest.mark.parametrize("name", sorted(TRAIN_TRANSFORMS))
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_give_square_float_unit_range(name, channels):
    torch.manual_seed(0)
    transform = build_train_transform(name, SIZE)
    transform = pickle.loads(pickle.dumps(transform))  # DataLoader workers may pickle it
    image = _sixteen_bit_image(channels)
    distinct = []
    for _ in range(20):
        out = transform(image.clone())
        assert out.shape == (channels, SIZE, SIZE)
        assert out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        distinct.append(len(torch.unique(out[0])))
    # 8-bit data could hold at most 256 levels. Posterize reduces levels on purpose, so only the
    # typical draw is required to keep the 16-bit precision.
    assert np.median(distinct) > 256


def test_eval_transform_matches_pillow_resize_and_keeps_precision():
    image = _sixteen_bit_image(1)
    out = build_eval_transform(SIZE)(image)
    expected = Image.fromarray(image[0].numpy(), mode="F").resize((SIZE, SIZE), Image.BILINEAR)
    np.testing.assert_allclose(out[0].numpy(), np.asarray(expected), rtol=0, atol=1e-5)
    assert len(torch.unique(out)) > 256


def test_integer_tensors_are_scaled_to_unit_range():
    sixteen = torch.full((1, 10, 10), 65535, dtype=torch.uint16)
    assert build_eval_transform(8)(sixteen).max().item() == pytest.approx(1.0)
    eight = torch.full((3, 10, 10), 255, dtype=torch.uint8)
    assert build_eval_transform(8)(eight).dtype == torch.float32


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as caught:
        build_train_transform("autoaugment", SIZE)
    message = str(caught.value)
    assert "autoaugment" in message
    for name in TRAIN_TRANSFORMS:
        assert name in message


def test_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        build_train_transform("xray", 0)


def test_xray_preset_has_no_flip():
    transform = build_train_transform("xray", SIZE)
    kinds = {type(t) for t in transform.transforms}
    assert not kinds & {v2.RandomHorizontalFlip, v2.RandomVerticalFlip}


@pytest.mark.parametrize("cls", [HighPrecisionRandAugment, HighPrecisionTrivialAugmentWide])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_auto_augment_op_works_on_float(cls, channels):
    augment = cls(interpolation=v2.InterpolationMode.BILINEAR)
    image = _sixteen_bit_image(channels, 64, 64)
    for op, (magnitudes, _signed) in augment._AUGMENTATION_SPACE.items():
        bins = magnitudes(31, 64, 64)
        magnitude = float(bins[-1]) if bins is not None else 0.0
        out = augment._apply_image_or_video_transform(
            image.clone(), op, magnitude, augment.interpolation, augment._fill
        )
        assert out.shape == image.shape and out.dtype == torch.float32, op
        if op != "Posterize":  # the one operation meant to reduce the levels
            assert len(torch.unique(out[0])) > 256, op


def test_equalize_float_matches_pillow_on_8bit_data():
    # Pillow's integer step is exact when (pixels - pixels in the top bin) is a multiple of 255;
    # then the two agree to rounding: at most half a grey level.
    rng = np.random.default_rng(3)
    pixels = np.concatenate([rng.integers(0, 200, 255 * 19), np.full(255, 255)])
    array = rng.permutation(pixels).astype(np.uint8).reshape(51, 100)
    expected = np.asarray(ImageOps.equalize(Image.fromarray(array)), dtype=np.float64) / 255
    ours = equalize_float(torch.from_numpy(array / 255.0).float()[None], bins=256)
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=0, atol=0.5 / 255 + 1e-6)


def test_equalize_float_flattens_the_histogram_of_16bit_data():
    rng = np.random.default_rng(4)
    skewed = torch.from_numpy((rng.random((1, 128, 128)) ** 2).astype(np.float32))
    out = equalize_float(skewed)
    assert len(torch.unique(out)) > 256
    counts, _ = np.histogram(out.numpy(), bins=10, range=(0, 1))
    assert counts.min() > 0.9 * out.numel() / 10  # nearly uniform after equalization
    constant = torch.full((1, 8, 8), 0.3)
    assert torch.equal(equalize_float(constant), constant)
