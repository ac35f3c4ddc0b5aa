"""A 3D training epoch: nervus_lightning against a hand-written loop on in-memory tensors.

    python benchmarks/volume_speed.py                       # 3D ResNet18, 32 volumes of 64^3
    python benchmarks/volume_speed.py --extractor small_cnn_3d --size 32 --volumes 64

``--volumes`` synthetic NIfTI volumes of ``--size``^3 voxels (a bright blob in the upper or lower
half, the label) are written once and read through the library (``data.volume_size``, memory
cache, ``augmentation=none``), images only. Two loops train the same network (the library's
``build_net`` with the chosen 3D extractor, one softmax head, Adam, cross-entropy), batch
``--batch-size``, ``--threads`` threads, in one process:

* ``plain tensors``: every training volume as one float32 tensor in memory, sliced by a random
  permutation: ``zero_grad; forward; loss; backward; step``, the fastest a hand-written loop gets;
* ``nervus``: ``lightning.Trainer.fit(NervusModule, NervusDataModule)`` reading the volumes from
  the data module's cache (validation, checkpoints, logger and progress bar off, as
  ``train_speed.py`` does).

Each is warmed up once, then run ``--repeats`` times, interleaved; the median seconds per epoch
and their ratio are printed. Target (issue 21): nervus at most 1.10x the plain loop on
tensors, with the cache.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from train_speed import Variant, make_trainer

from nervus_lightning.config import config_dir
from nervus_lightning.console import quiet_lightning
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.module import NervusModule

SEED = 0
LABEL = "label_blob"
EXTRACTORS = ("resnet18_3d", "small_cnn_3d", "densenet121_3d")


def extractor_config(name: str) -> dict:
    """``model/extractor=<name>``'s options, as the command line composes them."""
    return OmegaConf.to_container(
        OmegaConf.load(Path(config_dir()) / "model/extractor" / f"{name}.yaml")
    )


def write_volumes(n: int, size: int, folder: Path) -> Path:
    """``n`` training volumes plus 8 validation and 8 test ones, and their CSV."""
    import nibabel as nib

    rng = np.random.default_rng(SEED)
    rows = []
    total = n + 16
    for i in range(total):
        upper = i % 2
        values = rng.normal(300, 60, (size, size, size))
        half = size // 2
        lo = half + size // 8 if upper else size // 8
        values[half - 2 : half + 2, half - 2 : half + 2, lo : lo + size // 8] += 500
        path = folder / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(values.astype(np.int16), np.eye(4)), path)
        split = "train" if i < n else ("val" if i < n + 8 else "test")
        rows.append((f"c{i}", path.name, "yes" if upper else "no", split))
    csv = folder / "volumes.csv"
    pd.DataFrame(rows, columns=["uniqID", "imgpath", LABEL, "split"]).to_csv(csv, index=False)
    return csv


def make_datamodule(csv: Path, args: argparse.Namespace) -> NervusDataModule:
    return NervusDataModule(
        csv,
        task="classification",
        labels=[LABEL],
        batch_size=args.batch_size,
        use_tabular=False,
        cache="memory",
        volume_size=[args.size] * 3,
        window=[500, 1000],
    )


def make_module(dm: NervusDataModule, args: argparse.Namespace) -> NervusModule:
    L.seed_everything(SEED, verbose=False)
    return NervusModule(
        dm.schema,
        extractor=extractor_config(args.extractor),
        tabular=None,
        mixer=None,
        task="classification",
        optimizer={"name": "adam", "lr": 1e-3, "fused": False},
        in_channels=1,
        evaluation={"positive_class": {LABEL: "yes"}},
    )


def plain_epoch(dm: NervusDataModule, args: argparse.Namespace) -> float:
    """Seconds of one epoch of the hand-written loop over in-memory tensors."""
    net = make_module(dm, args).net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=False)
    dataset = dm.dataset("train", train=True)
    everything = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    x, y = everything["image"], everything["target"][:, 0].long()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    start = time.perf_counter()
    for rows in order.split(args.batch_size):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(image=x[rows])[0], y[rows])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def nervus_epoch(dm: NervusDataModule, args: argparse.Namespace) -> float:
    module = make_module(dm, args)
    timer = EpochTimer()
    with quiet_lightning():
        trainer = make_trainer(Variant("nervus"), epochs=1, callbacks=[timer])
        L.seed_everything(SEED, verbose=False)
        trainer.fit(module, datamodule=dm)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractor", choices=sorted(EXTRACTORS), default="resnet18_3d")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--volumes", type=int, default=32, help="training volumes")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dm = make_datamodule(write_volumes(args.volumes, args.size, Path(tmp)), args)
        dm.setup("fit")
        runs = {"plain tensors": plain_epoch, "nervus": nervus_epoch}
        for run in runs.values():  # warm-up (and the cache filled)
            run(dm, args)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds[name].append(run(dm, args))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    steps = -(-args.volumes // args.batch_size)
    print(
        f"\n{args.extractor}, {args.volumes} volumes of {args.size}^3, batch {args.batch_size}, "
        f"{steps} steps, {args.threads} threads, torch {torch.__version__}, median of "
        f"{args.repeats}\n"
    )
    print("| loop | s / epoch | s / step | x plain tensors |")
    print("|---|---|---|---|")
    for name, value in median.items():
        ratio = value / median["plain tensors"]
        print(f"| {name} | {value:.2f} | {value / steps:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
