"""Epoch time of nervus_lightning with the image cache against a plain loop over in-memory tensors.

Four ways to run one training epoch of the same ResNet18 (from scratch, Adam, cross-entropy,
the demo digits' training split resized to ``--image-size``, batch ``--batch-size``, one
process, ``--threads`` threads):

* ``floor``: forward + backward + optimiser step on one fixed batch, repeated as many times as
  an epoch has batches: no data loading at all, the physical floor of an epoch;
* ``plain tensors``: a hand-written loop over a shuffled ``DataLoader(TensorDataset)`` of the
  images decoded and resized beforehand (float32 tensors in memory), what a hand-tuned script
  does when the data fit in memory;
* ``nervus cache=memory``: ``Trainer.fit(NervusModule, NervusDataModule(cache="memory"))``
  (checkpoints, logger, progress bar and validation off): the cache is built once, before the
  timed epochs;
* ``nervus cache=none``: the same, reading and resizing every image every epoch.

Variants run ``--repeats`` times, interleaved in a rotated order (a shared machine slows them
alike); the median wall and CPU seconds per epoch and their ratios to ``plain tensors`` are
printed.

Usage::

    python benchmarks/cache_speed.py --images 512 --image-size 64 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import (  # noqa: E402  (the sibling script, importable once its folder is on the path)
    LABEL,
    SEED,
    EpochTimer,
    Variant,
    clock,
    elapsed,
    make_module,
    make_trainer,
    subset_csv,
)

from nervus_lightning.data.datamodule import NervusDataModule  # noqa: E402

Seconds = tuple[float, float]  # wall, CPU of this process


def make_datamodule(csv: Path, args: argparse.Namespace, cache: str, folder: Path):
    return NervusDataModule(
        csv,
        task="classification",
        labels=[LABEL],
        image_size=args.image_size,
        in_channels=1,
        batch_size=args.batch_size,
        num_workers=0,
        use_tabular=False,
        augmentation="none",
        cache=cache,
        cache_dir=folder / "cache",
    )


def _net_and_optimizer(dm: NervusDataModule, args: argparse.Namespace):
    net = make_module(dm, args, Variant("plain")).net
    net.train()
    return net, torch.optim.Adam(net.parameters(), lr=args.lr, fused=False)


def _step(net, optimizer, image: torch.Tensor, target: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss = F.cross_entropy(net(image=image)[0], target)
    loss.backward()
    optimizer.step()


def in_memory_tensors(dm: NervusDataModule) -> TensorDataset:
    """The training images decoded and resized once, as float32 tensors, with their targets."""
    ds = dm.dataset("train")
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([item["image"] for item in items])
    targets = torch.stack([item["target"][0] for item in items]).long()
    return TensorDataset(images, targets)


def plain_epoch(dm: NervusDataModule, args: argparse.Namespace, data: TensorDataset) -> Seconds:
    net, optimizer = _net_and_optimizer(dm, args)
    loader = DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    start = clock()
    for image, target in loader:
        _step(net, optimizer, image, target)
    return elapsed(start)


def floor_epoch(dm: NervusDataModule, args: argparse.Namespace, data: TensorDataset) -> Seconds:
    net, optimizer = _net_and_optimizer(dm, args)
    image, target = data.tensors[0][: args.batch_size], data.tensors[1][: args.batch_size]
    batches = -(-len(data) // args.batch_size)
    start = clock()
    for _ in range(batches):
        _step(net, optimizer, image, target)
    return elapsed(start)


def nervus_epoch(dm: NervusDataModule, args: argparse.Namespace) -> Seconds:
    dm.image_cache()  # built once (memory) before timing, as in a multi-epoch run
    module = make_module(dm, args, Variant("nervus"))
    timer = EpochTimer()
    L.seed_everything(SEED, verbose=False)
    make_trainer(Variant("nervus"), 1, [timer]).fit(module, datamodule=dm)
    return timer.seconds[0]


def benchmark(csv: Path, args: argparse.Namespace, folder: Path) -> dict[str, list[Seconds]]:
    cached = make_datamodule(csv, args, "memory", folder)
    uncached = make_datamodule(csv, args, "none", folder)
    data = in_memory_tensors(uncached)
    runs: dict[str, Callable[[], Seconds]] = {
        "floor (forward+backward only)": lambda: floor_epoch(uncached, args, data),
        "plain tensors": lambda: plain_epoch(uncached, args, data),
        "nervus cache=memory": lambda: nervus_epoch(cached, args),
        "nervus cache=none": lambda: nervus_epoch(uncached, args),
    }
    names = list(runs)
    for name in names:  # warm-up: thread pools, allocator, kernel choice
        runs[name]()
    seconds: dict[str, list[Seconds]] = {name: [] for name in names}
    for rep in range(args.repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(runs[name]())
    return seconds


def format_table(seconds: dict[str, list[Seconds]]) -> str:
    """Median wall and CPU seconds per epoch, and their ratios to ``plain tensors`` (CPU seconds
    of this process are less disturbed by other processes on a shared machine)."""
    ref_wall = statistics.median(w for w, _ in seconds["plain tensors"])
    ref_cpu = statistics.median(c for _, c in seconds["plain tensors"])
    lines = [f"{'variant':32s} {'wall s':>8s} {'x plain':>8s} {'CPU s':>8s} {'x plain':>8s}"]
    for name, values in seconds.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        lines.append(
            f"{name:32s} {wall:8.3f} {wall / ref_wall:7.2f}x {cpu:8.3f} {cpu / ref_cpu:7.2f}x"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="training images (demo train)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lr", type=float, default=1e-3)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, list[Seconds]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        csv = subset_csv(args.images, folder)
        print(
            f"torch {torch.__version__}, lightning {L.__version__}, {args.threads} threads; "
            f"ResNet18 from scratch, {args.images} images {args.image_size}x{args.image_size}, "
            f"batch {args.batch_size}, fp32, {args.repeats} repeats"
        )
        seconds = benchmark(csv, args, folder)
        print(format_table(seconds))
    return seconds


if __name__ == "__main__":
    main()
