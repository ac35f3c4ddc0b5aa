"""Batches without images are sliced from the tensors in one go (NervusDataset.__getitems__):
the same keys, dtypes and values as one dictionary per case collated by torch."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset
from torch.utils.data import DataLoader

from nervus_lightning.data.datamodule import NervusDataModule


@pytest.mark.parametrize("task", ["classification", "regression", "survival"])
def test_batched_fetch_equals_per_case_collation(tmp_path, task):
    csv = make_dataset(tmp_path, task=task, n=60, images=False)
    dm = NervusDataModule(csv, task=task, batch_size=8, use_images=False)
    dm.setup("fit")
    loader = dm.eval_dataloader(None)
    assert loader.dataset.batched_fetch
    per_case = DataLoader(dm.dataset(None), batch_size=8)  # torch's own path
    assert not per_case.dataset.batched_fetch
    batches = list(loader)
    assert len(batches) == len(per_case)
    for ours, theirs in zip(batches, per_case, strict=True):
        assert list(ours) == list(theirs)
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype, key
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_batches_with_images_are_read_case_by_case(tmp_path):
    csv = make_dataset(tmp_path, n=24)
    dm = NervusDataModule(csv, batch_size=8, image_size=16)
    dm.setup("fit")
    batch = next(iter(dm.eval_dataloader(None)))
    assert batch["image"].shape == (8, 1, 16, 16) and batch["tabular"].shape[0] == 8
