"""Weighted sampling: inverse class frequency on the training split only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import SequentialSampler

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.sampling import inverse_frequency_weights


def test_single_label_weights_balance_classes():
    codes = np.array([0] * 80 + [1] * 20)
    w = inverse_frequency_weights(codes)
    assert w[codes == 0].sum() == pytest.approx(w[codes == 1].sum())
    assert w.mean() == pytest.approx(1.0)


def test_several_labels_multiply_per_label_weights():
    codes = np.array([[0, 0], [0, 1], [0, 1], [1, 1]])
    w = inverse_frequency_weights(codes)
    first = np.array([4 / (2 * 3)] * 3 + [4 / (2 * 1)])
    second = np.array([4 / (2 * 1)] + [4 / (2 * 3)] * 3)
    np.testing.assert_allclose(w, first * second / (first * second).mean())


def test_independent_labels_are_each_balanced():
    rng = np.random.default_rng(0)
    a = (rng.random(20000) < 0.2).astype(int)
    b = rng.integers(0, 3, 20000) * (rng.random(20000) < 0.5)  # classes 0 (most), 1, 2
    w = inverse_frequency_weights(np.stack([a, b], axis=1))
    assert np.average(a, weights=w) == pytest.approx(0.5, abs=0.01)
    for c in range(3):
        assert np.average(b == c, weights=w) == pytest.approx(1 / 3, abs=0.01)


def test_weighted_loader_draws_classes_equally_and_eval_is_untouched(dataset):
    csv = dataset(n=200, images=False)
    df = pd.read_csv(csv)
    train = df.index[df.split == "train"]
    df.loc[train, "label_cls"] = np.where(np.arange(len(train)) % 10 < 8, "no", "yes")
    df.to_csv(csv, index=False)
    dm = NervusDataModule(csv, task="classification", sampler="weighted", batch_size=50)
    loader = dm.train_dataloader()
    assert loader.sampler.weights is not None  # an EpochSampler drawing by weight
    drawn = []
    for epoch in range(30):
        loader.sampler.set_epoch(epoch)
        drawn += [b["target"][:, 0] for b in loader]
    drawn = torch.cat(drawn).float()
    assert drawn.mean().item() == pytest.approx(0.5, abs=0.03)  # 20 % "yes" in the data
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    assert isinstance(dm.test_dataloader().sampler, SequentialSampler)
