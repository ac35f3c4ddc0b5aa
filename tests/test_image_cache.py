"""data.cache: memory and disk caches give the images of no cache, augmentation still differs per
epoch, a changed file is read again, the disk array is reused, and typos stop before training."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, make_dataset, write_png

import nervus_lightning.data.cache as cache_module
import nervus_lightning.data.dataset as dataset_module
from nervus_lightning.cli.train import train_settings
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import TRAIN, NervusInputError
from nervus_lightning.workflows.train import build_datamodule


def _module(csv, tmp_path, cache, **kwargs) -> NervusDataModule:
    return NervusDataModule(csv, image_size=16, cache=cache, cache_dir=tmp_path / "cache", **kwargs)


def _images(dm: NervusDataModule, split=None, train=False) -> torch.Tensor:
    ds = dm.dataset(split, train=train)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


@pytest.fixture
def count_reads(monkeypatch):
    """Counts read_image calls, by the cache and by the uncached dataset."""
    calls = []
    original = cache_module.read_image

    def counted(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "read_image", counted)
    monkeypatch.setattr(dataset_module, "read_image", counted)
    return calls


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_eight_bit_cache_is_exact(tmp_path, mode):
    csv = make_dataset(tmp_path, n=16, size=16)
    plain = _images(_module(csv, tmp_path, "none"))
    cached_dm = _module(csv, tmp_path, mode)
    cached = _images(cached_dm)
    assert cached_dm.image_cache()[0].dtype == np.uint8
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_sixteen_bit_cache_within_a_uint16_step(tmp_path, mode):
    # 20 px files resized to 16: the cache holds interpolated values rounded to 1/65535.
    csv = make_dataset(tmp_path, n=16, size=20, bit_depth=16)
    plain = _images(_module(csv, tmp_path, "none", bit_depth=16))
    dm = _module(csv, tmp_path, mode, bit_depth=16)
    cached = _images(dm)
    assert dm.image_cache()[0].dtype == np.uint16
    error = (plain - cached).abs().max().item()
    assert 0 < error <= 0.5 / 65535 + 1e-7


def test_resized_eight_bit_images_are_stored_to_half_a_gray_level(tmp_path):
    csv = make_dataset(tmp_path, n=8, size=20)
    plain = _images(_module(csv, tmp_path, "none"))
    cached = _images(_module(csv, tmp_path, "memory"))
    assert (plain - cached).abs().max().item() <= 0.5 / 255 + 1e-7


def test_augmentation_still_differs_per_epoch(tmp_path, count_reads):
    csv = make_dataset(tmp_path, n=16, size=16)
    dm = _module(csv, tmp_path, "memory", augmentation="randaug")
    ds = dm.dataset(TRAIN, train=True)
    n_files = len(count_reads)
    torch.manual_seed(0)
    first = torch.stack([ds[i]["image"] for i in range(len(ds))])
    second = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert not torch.equal(first, second)
    assert len(count_reads) == n_files == 16  # every file once, none re-read by the epochs


def test_xray_training_split_starts_from_a_larger_cache(tmp_path, count_reads):
    # xray crops first: its training split starts from arrays of the training images only, at
    # 1.25 x image_size (every crop is then resized down), read once; val uses the usual cache.
    csv = make_dataset(tmp_path, n=24, size=40)
    dm = _module(csv, tmp_path, "memory", augmentation="xray")
    train = dm.dataset(TRAIN, train=True)
    n_train = len(train)
    assert [a.shape[-1] for a in train.cache] == [20]  # ceil(16 * 1.25)
    assert len(count_reads) == n_train  # only the training split's files
    torch.manual_seed(0)
    first = torch.stack([train[i]["image"] for i in range(n_train)])
    second = torch.stack([train[i]["image"] for i in range(n_train)])
    assert first.shape[-2:] == (16, 16) and not torch.equal(first, second)
    assert len(count_reads) == n_train  # the epochs read no file
    assert dm.dataset("val").cache[0].shape[-1] == 16
    # The same kind of training images as from the files (crop offsets are drawn over another
    # pixel range, so single images differ): over 4 epochs, the intensity mean and spread agree
    # to well within their epoch-to-epoch variation (about 0.01 and 0.02 here).
    files = NervusDataModule(csv, image_size=16, cache="none", augmentation="xray")
    uncached = files.dataset(TRAIN, train=True)
    torch.manual_seed(1)
    cached = torch.stack([train[i]["image"] for _ in range(4) for i in range(n_train)])
    direct = torch.stack([uncached[i]["image"] for _ in range(4) for i in range(n_train)])
    assert abs(cached.mean().item() - direct.mean().item()) < 0.02
    assert abs(cached.std().item() - direct.std().item()) < 0.03


def test_multiview_cache_per_view(tmp_path):
    csv = make_dataset(tmp_path, n=12, size=16)
    frame = pd.read_csv(csv)
    for i in range(len(frame)):
        rng = np.random.default_rng(i)
        write_png(tmp_path / f"lat/{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    frame = frame.rename(columns={"imgpath": "imgpath_frontal"})
    frame["imgpath_lateral"] = [f"lat/{i}.png" for i in range(len(frame))]
    frame.to_csv(csv, index=False)
    plain = _images(_module(csv, tmp_path, "none"))
    dm = _module(csv, tmp_path, "disk")
    cached = _images(dm)
    assert cached.shape == (12, 2, 1, 16, 16) and len(dm.image_cache()) == 2
    assert torch.equal(plain, cached)


def test_disk_cache_reused_and_changed_file_read_again(tmp_path, count_reads):
    csv = make_dataset(tmp_path, n=16, size=16)
    first = _module(csv, tmp_path, "disk")
    before = _images(first)
    assert len(count_reads) == 16
    # A second data module (another DDP rank or sweep job) maps the same array: no decoding.
    second = _module(csv, tmp_path, "disk")
    assert torch.equal(_images(second), before)
    assert len(count_reads) == 16
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    # A changed file (new size and mtime) gives a new array holding its new pixels.
    changed = tmp_path / "img/case003.png"
    write_png(changed, np.full((16, 16), 7, dtype=np.uint8))
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = _module(csv, tmp_path, "disk")
    after = _images(third)
    assert str(changed) in count_reads[16:]
    assert torch.allclose(after[3], torch.full((1, 16, 16), 7 / 255))
    assert torch.equal(after[:3], before[:3]) and torch.equal(after[4:], before[4:])


def test_auto_follows_the_budget(tmp_path):
    csv = make_dataset(tmp_path, n=8, size=16)
    dm = _module(csv, tmp_path, "auto", cache_max_gb=1.0)
    dm.image_cache()
    assert dm.resolved_cache_mode == "memory"
    tiny = _module(csv, tmp_path, "auto", cache_max_gb=1e-9)
    tiny.image_cache()
    assert tiny.resolved_cache_mode == "disk"
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_training_command_defaults_to_auto(tmp_path):
    csv = make_dataset(tmp_path, n=16, size=16)
    cfg = compose_config(["data=csv", f"data.csv={csv}", "data.image_size=16"])
    dm = build_datamodule(train_settings(cfg))
    assert dm.cache_mode == "auto"
    assert NervusDataModule(csv, image_size=16).cache_mode == "none"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.cache=memroy", r"data.cache='memroy' is not one of .*Did you mean 'memory'"),
        ("data.cache_max_gb=-1", r"data.cache_max_gb=-1 must be a positive number"),
    ],
)
def test_option_typos_rejected_before_training(tmp_path, override, message):
    csv = make_dataset(tmp_path, n=16, size=16)
    cfg = compose_config(["data=csv", f"data.csv={csv}", "data.image_size=16", override])
    with pytest.raises(NervusInputError, match=message):
        build_datamodule(train_settings(cfg))


def test_gpu_benchmark_section_skipped_without_cuda(monkeypatch, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"
    spec = importlib.util.spec_from_file_location("train_speed_gpu_check", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_speed_gpu_check", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert module.main(["--gpu"]) == []
    assert "GPU section is skipped" in capsys.readouterr().out


def test_concurrent_builders_decode_once(tmp_path, count_reads):
    # Two DDP ranks (here threads, each with its own lock-file handle) asking for the same array:
    # one builds it under the lock, the other waits and maps the finished file.
    from concurrent.futures import ThreadPoolExecutor

    from nervus_lightning.data.cache import ReadSettings, open_disk_array

    make_dataset(tmp_path, n=12, size=16)
    paths = [str(tmp_path / f"img/case{i:03d}.png") for i in range(12)]
    settings = ReadSettings(16, 1, 8, "auto", "middle")
    with ThreadPoolExecutor(2) as pool:
        arrays = list(pool.map(lambda _: open_disk_array(paths, settings, tmp_path / "c"), [0, 1]))
    assert len(count_reads) == 12
    assert np.array_equal(arrays[0], arrays[1])
    assert [p.suffix for p in (tmp_path / "c").iterdir() if p.suffix == ".npy"] == [".npy"]
