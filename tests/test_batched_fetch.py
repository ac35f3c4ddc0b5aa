"""Batches without images are sliced from the tensors in one go (NervusDataset.__getitems__):
the same keys, dtypes and values as one dictionary per case collated by torch."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset
from torch.utils.data import DataLoader

from nervus_lightning.data.datamodule import NervusDataModule


def _same_batches(ours_loader, theirs_loader):
    ours_batches, theirs_batches = list(ours_loader), list(theirs_loader)
    assert len(ours_batches) == len(theirs_batches)
    for ours, theirs in zip(ours_batches, theirs_batches, strict=True):
        assert sorted(ours) == sorted(theirs)
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype, key
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


@pytest.mark.parametrize("task", ["classification", "regression", "survival"])
def test_batched_fetch_equals_per_case_collation(tmp_path, task):
    csv = make_dataset(tmp_path, task=task, n=60, images=False)
    dm = NervusDataModule(csv, task=task, batch_size=8, use_images=False)
    dm.setup("fit")
    loader = dm.eval_dataloader(None)
    assert loader.dataset.batched_fetch
    per_case = DataLoader(dm.dataset(None), batch_size=8)  # torch's own path
    assert not per_case.dataset.batched_fetch
    _same_batches(loader, per_case)


@pytest.mark.parametrize(("cache", "image_size"), [("memory", 16), ("disk", 16), ("memory", 12)])
def test_cached_image_batches_equal_per_case_collation(tmp_path, cache, image_size):
    """One cached image column, no random augmentation: the batch is read and transformed in
    one go, to the bit the images that each case's own transform gives."""
    csv = make_dataset(tmp_path, n=24)
    dm = NervusDataModule(
        csv, batch_size=8, image_size=image_size, cache=cache, cache_dir=tmp_path / "cache"
    )
    dm.setup("fit")
    loader = dm.eval_dataloader(None)
    dataset = loader.dataset
    assert dataset.batched_fetch and dataset.batchable_transform and dataset.cache
    assert isinstance(dataset.__getitems__([0, 1, 2]), dict)  # the batched path
    _same_batches(loader, DataLoader(dm.dataset(None), batch_size=8))
    # Training without augmentation reads its batches in one go too.
    assert dm.train_dataloader().dataset.batchable_transform


def test_random_augmentation_and_uncached_images_stay_case_by_case(tmp_path):
    csv = make_dataset(tmp_path, n=24)
    augmented = NervusDataModule(csv, batch_size=8, image_size=16, augmentation="xray")
    augmented.setup("fit")
    train = augmented.train_dataloader().dataset
    assert not train.batchable_transform
    assert isinstance(train.__getitems__([0, 1]), list)  # each case its own random draw
    uncached = NervusDataModule(csv, batch_size=8, image_size=16, cache="none")
    uncached.setup("fit")
    loader = uncached.eval_dataloader(None)
    assert isinstance(loader.dataset.__getitems__([0, 1]), list)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 1, 16, 16) and batch["tabular"].shape[0] == 8
