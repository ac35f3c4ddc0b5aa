"""``augmentation=volume``: the 3D training augmentation (affine, intensity jitter, flips on
request) checked against scipy and hand-computed positions, its randomness against torch's
seeding, and its wiring into the data module and the command line."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from conftest import FAST, compose_config, run_command
from scipy import ndimage

from nervus_lightning.data.cache import cached_image
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.preview import write_preview
from nervus_lightning.data.volume_augment import (
    FLIP_AXES,
    VolumeAugmentation,
    output_to_input,
    resample_volume,
    rotation,
)
from nervus_lightning.errors import TRAIN, VAL, NervusInputError

nib = pytest.importorskip("nibabel")

from test_volume_training import FAST_3D, SIZE, make_volume_csv  # noqa: E402

#: Every part off: the identity.
STILL = {
    "rotate_degrees": 0.0,
    "scale": None,
    "translate": 0.0,
    "intensity_scale": 0.0,
    "intensity_shift": 0.0,
}


def random_volume(shape=(1, 12, 16, 20), seed=0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)


def marker(shape=(17, 17, 17), at=(8, 4, 8)) -> torch.Tensor:
    """Zeros with a bright 3 x 3 x 3 cube centred on voxel ``at``."""
    volume = torch.zeros((1, *shape), dtype=torch.float64)
    d, h, w = at
    volume[0, d - 1 : d + 2, h - 1 : h + 2, w - 1 : w + 2] = 1.0
    return volume


def centre_of_mass(volume: torch.Tensor) -> np.ndarray:
    return np.array(ndimage.center_of_mass(volume[0].numpy()))


# -- the transform --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_preset_keeps_shape_dtype_and_the_unit_range(dtype):
    augment = VolumeAugmentation(gamma=[0.8, 1.25], flip_axes=["left"])
    volume = random_volume(dtype=dtype)
    torch.manual_seed(0)
    for _ in range(5):
        out = augment(volume)
        assert out.shape == volume.shape and out.dtype == dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, volume)


def test_zero_strength_settings_are_the_identity():
    volume = random_volume()
    out = VolumeAugmentation(**STILL)(volume)
    assert float((out - volume).abs().max()) <= 1e-6
    # The resampling itself, with an identity map (and a draw of no rotation and no shift).
    identity = output_to_input(torch.eye(3, dtype=torch.float64), [0, 0, 0], volume.shape[1:])
    assert torch.allclose(identity, torch.eye(4, dtype=torch.float64))
    for padding in ("border", "zeros"):
        out = resample_volume(volume, identity, padding)
        assert out.dtype == volume.dtype
        assert float((out - volume).abs().max()) <= 1e-6
    drawn = VolumeAugmentation(scale=[1.0, 1.0]).draw_affine([0.5] * 7, volume.shape[1:])
    assert torch.allclose(drawn, torch.eye(4, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(("padding", "mode"), [("border", "nearest"), ("zeros", "grid-constant")])
def test_resampling_matches_scipy_affine_transform(padding, mode):
    # A non-cubic volume, anisotropic voxels, a rotation about every axis, a zoom and a shift.
    volume = random_volume(dtype=torch.float64)
    spacing = (2.0, 1.0, 0.8)
    linear = rotation([0.1, -0.2, 0.15]) * 1.07
    index_map = output_to_input(linear, [1.5, -2.0, 0.7], volume.shape[1:], spacing)
    ours = resample_volume(volume, index_map, padding)[0].numpy()
    reference = ndimage.affine_transform(
        volume[0].numpy(),
        index_map[:3, :3].numpy(),
        offset=index_map[:3, 3].numpy(),
        order=1,
        mode=mode,
        cval=0.0,
    )
    assert np.abs(ours - reference).max() < 1e-6
    # float32 volumes (what training passes) agree to float32 precision.
    single = resample_volume(volume.float(), index_map, padding)[0].numpy()
    assert np.abs(single - reference).max() < 1e-4


def test_a_known_rotation_zoom_and_shift_move_a_marker_where_expected():
    # Voxels: +90 degrees about d turns h towards w: 4 voxels before the centre along h
    # (8, 4, 8) go to 4 voxels before it along w (8, 8, 4), then 3 voxels along w: (8, 8, 7).
    augment = VolumeAugmentation(rotate_degrees=90.0, scale=None, translate=3 / 17)
    volume = marker()
    # Draws: angles about d, h, w (1 = +rotate_degrees), the zoom, then shifts along d, h, w.
    turned = resample_volume(
        volume, augment.draw_affine([1, 0.5, 0.5, 0, 0.5, 0.5, 1], [17] * 3), "zeros"
    )
    assert np.allclose(centre_of_mass(turned), [8, 8, 7], atol=0.05)
    # A zoom of 1.5 about the centre: 4 voxels before it along h become 6.
    zoomed = VolumeAugmentation(rotate_degrees=0.0, scale=[1.5, 1.5], translate=0.0)
    out = resample_volume(volume, zoomed.draw_affine([0.5] * 7, [17] * 3), "zeros")
    assert np.allclose(centre_of_mass(out), [8, 2, 8], atol=0.05)
    # Millimetres: d voxels of 2 mm. +90 degrees about w turns d towards h, so h towards -d:
    # 4 mm after the centre along h (8, 12, 8) -> 4 mm before it along d = 2 voxels: (6, 8, 8).
    mm = VolumeAugmentation(rotate_degrees=90.0, scale=None, translate=0.0, spacing=(2, 1, 1))
    volume = marker(at=(8, 12, 8))
    out = resample_volume(
        volume, mm.draw_affine([0.5, 0.5, 1, 0, 0.5, 0.5, 0.5], [17] * 3), "zeros"
    )
    assert np.allclose(centre_of_mass(out), [6, 8, 8], atol=0.05)
    # A few degrees (the preset's scale) turn the marker about the centre, not about a corner:
    # +5 degrees about d, the marker 4 voxels after the centre along h.
    small = VolumeAugmentation(rotate_degrees=5.0, scale=None, translate=0.0)
    out = resample_volume(
        volume, small.draw_affine([1, 0.5, 0.5, 0, 0.5, 0.5, 0.5], [17] * 3), "zeros"
    )
    angle = math.radians(5.0)
    expected = [8, 8 + 4 * math.cos(angle), 8 + 4 * math.sin(angle)]
    assert np.allclose(centre_of_mass(out), expected, atol=0.05)


def test_flips_are_off_by_default_and_reverse_the_named_axis_only():
    assert VolumeAugmentation().flip_axes == ()
    assert compose_config(["augmentation=volume"]).augmentation.flip_axes == []
    volume = random_volume()
    torch.manual_seed(0)
    assert all(torch.equal(VolumeAugmentation(**STILL)(volume), volume) for _ in range(20))
    for name, dim in [("superior", 1), ("posterior", 2), ("left", 3)]:
        always = VolumeAugmentation(**STILL, flip_axes=[name], flip_probability=1.0)
        assert torch.equal(always(volume), torch.flip(volume, [dim]))
    assert FLIP_AXES == {"superior": 1, "posterior": 2, "left": 3}
    both = VolumeAugmentation(**STILL, flip_axes=["left", "superior", "left"], flip_probability=1)
    assert torch.equal(both(volume), torch.flip(volume, [1, 3]))
    # Half the time each: both outcomes happen.
    coin = VolumeAugmentation(**STILL, flip_axes=["left"])
    flipped = [torch.equal(coin(volume), torch.flip(volume, [3])) for _ in range(40)]
    assert 5 < sum(flipped) < 35
    with pytest.raises(
        NervusInputError, match=r"flip_axes='right'.*\['superior', 'posterior', 'left'\]"
    ):
        VolumeAugmentation(flip_axes=["right"])
    with pytest.raises(NervusInputError, match="list of axis names"):
        VolumeAugmentation(flip_axes="left")


def test_intensity_jitter_stays_within_its_bounds_and_is_one_draw_per_volume():
    volume = random_volume(dtype=torch.float64)
    jitter = VolumeAugmentation(**{**STILL, "intensity_scale": 0.2, "intensity_shift": 0.1})
    torch.manual_seed(1)
    factors = []
    for _ in range(30):
        out = jitter(volume)
        low = (volume * 0.8 - 0.1).clamp(0, 1)
        high = (volume * 1.2 + 0.1).clamp(0, 1)
        assert bool(((out >= low - 1e-12) & (out <= high + 1e-12)).all())
        # One factor and one offset for the whole volume: a line through the unclipped voxels.
        inside = (out > 0) & (out < 1)
        factor, offset = np.polyfit(volume[inside].numpy(), out[inside].numpy(), 1)
        assert np.abs(volume[inside].numpy() * factor + offset - out[inside].numpy()).max() < 1e-9
        assert 0.8 - 1e-9 <= factor <= 1.2 + 1e-9 and -0.1 - 1e-9 <= offset <= 0.1 + 1e-9
        factors.append(factor)
    assert np.ptp(factors) > 0.1  # the draws spread over the range
    gamma = VolumeAugmentation(**STILL, gamma=[0.5, 2.0])
    for _ in range(10):
        out = gamma(volume)
        assert bool(((out >= volume**2 - 1e-12) & (out <= volume**0.5 + 1e-12)).all())


def test_bad_options_are_refused_with_the_option_named():
    from nervus_lightning.data.volume_augment import build_volume_train_transform

    with pytest.raises(NervusInputError, match="Did you mean 'augmentation.rotate_degrees'"):
        build_volume_train_transform("volume", {"rotate_degree": 5})
    with pytest.raises(NervusInputError, match=r"augmentation.scale=\[1.1, 0.9\]"):
        VolumeAugmentation(scale=[1.1, 0.9])
    with pytest.raises(NervusInputError, match="augmentation.translate=2"):
        VolumeAugmentation(translate=2)
    with pytest.raises(NervusInputError, match="augmentation.padding='reflect'"):
        VolumeAugmentation(padding="reflect")
    assert build_volume_train_transform("none", {"rotate_degrees": 5}) is None


# -- in the data module ---------------------------------------------------------------------


def test_training_batches_draw_per_case_and_evaluation_is_never_augmented(tmp_path):
    csv = make_volume_csv(tmp_path, n=12)
    data = NervusDataModule(
        csv, volume_size=[SIZE] * 3, augmentation="volume", cache="memory", batch_size=4
    )
    assert isinstance(data.train_transform, VolumeAugmentation) and data.eval_transform is None
    train = data.dataset(TRAIN, train=True)
    train.batched_fetch = True
    assert train.cache is not None and not train.batchable_transform
    # A cached training batch goes case by case through the transform, each its own draw.
    torch.manual_seed(0)
    batch = [item["image"] for item in train.__getitems__([0, 1, 2])]
    torch.manual_seed(0)
    cache, rows = train.cache[0], train.rows
    expected = [data.train_transform(cached_image(cache, int(rows[i]))) for i in (0, 1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(batch, expected, strict=True))
    assert not torch.equal(batch[0], cached_image(cache, int(rows[0])))
    # Validation: the cached volumes in one go, unchanged.
    val = data.dataset(VAL)
    val.batched_fetch = True
    images = val.__getitems__([0, 1])["image"]
    assert torch.equal(images[0], cached_image(cache, int(val.rows[0])))
    # The preview shows an augmented row of mid-slices.
    written = write_preview(data, tmp_path / "preview", n=2, augmented=True)
    assert written[-1].name == "sheet.png"


def _epoch_batches(data: NervusDataModule, seed: int) -> list[torch.Tensor]:
    L.seed_everything(seed, workers=True, verbose=False)
    loader = data.train_dataloader()
    loader.sampler.set_epoch(0)
    return [batch["image"] for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_same_seed_gives_identical_augmented_batches(tmp_path, workers):
    csv = make_volume_csv(tmp_path, n=12)
    options = {"volume_size": [SIZE] * 3, "augmentation": "volume", "cache": "memory"}
    options |= {"batch_size": 3, "num_workers": workers}
    first = _epoch_batches(NervusDataModule(csv, **options), seed=7)
    second = _epoch_batches(NervusDataModule(csv, **options), seed=7)
    other = _epoch_batches(NervusDataModule(csv, **options), seed=8)
    assert len(first) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_presets_that_do_not_fit_the_images_are_refused(tmp_path, dataset):
    csv = make_volume_csv(tmp_path, n=8)
    for name in ("xray", "randaug", "trivialaugwide"):
        with pytest.raises(
            NervusInputError,
            match=rf"augmentation={name} is for 2D images.*none or augmentation=volume",
        ):
            NervusDataModule(csv, volume_size=[SIZE] * 3, augmentation=name)
    assert (
        NervusDataModule(csv, volume_size=[SIZE] * 3, augmentation="none").train_transform is None
    )
    with pytest.raises(NervusInputError, match=r"augmentation=volume is for 3D volumes.*xray"):
        NervusDataModule(dataset(), image_size=16, augmentation="volume")


# -- the command line -----------------------------------------------------------------------


def test_training_with_augmentation_volume_runs_and_a_2d_preset_exits_2(tmp_path):
    csv = make_volume_csv(tmp_path, n=16)
    args = [f"data.csv={csv}", *FAST_3D, "augmentation=volume", "augmentation.flip_axes=[left]"]
    out = run_command("nervus_lightning", [*args, "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "predictions.csv").is_file()
    bad = [f"data.csv={csv}", *FAST_3D, "augmentation=xray", "hydra.run.dir=bad"]
    out = run_command("nervus_lightning", bad, tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "augmentation=xray is for 2D images" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_augmentation_volume_with_2d_images_exits_2(tmp_path, dataset):
    out = run_command(
        "nervus_lightning",
        [f"data.csv={dataset()}", *FAST, "augmentation=volume", "hydra.run.dir=run"],
        tmp_path,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "augmentation=volume is for 3D volumes (data.volume_size" in out.stderr
