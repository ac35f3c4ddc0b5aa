"""Host overhead per training step: nervus_lightning against a hand-written loop where a step is
small enough for it to show (issue 20, target 1).

A tabular classifier (no image extractor, the default MLP ``[64, 64]`` with batch norm and
dropout, one softmax head, Adam), ``--rows`` training rows of ``--inputs`` standard normal
inputs and a binary label, batch ``--batch-size``, one process, ``--threads`` threads:

* ``plain``: ``for batch in DataLoader(dataset): zero_grad; forward; loss; backward; step`` over
  the very dataset object the data module builds (the same collate, the same tensors);
* ``plain tensors``: the same loop over in-memory tensors sliced by a random permutation, the
  fastest a hand-written loop gets;
* ``nervus``: ``lightning.Trainer.fit(NervusModule, NervusDataModule)``, validation,
  checkpoints, logger and progress bar off, as ``train_speed.py`` does.

Every variant is warmed up once and then run ``--repeats`` times, interleaved; the table gives
the median seconds per epoch and the overhead per step against each plain loop,
``(nervus - plain) / steps``. ``--profile`` writes the top of a cProfile of one nervus epoch
(cumulative time), to see where the overhead goes.

    python benchmarks/step_overhead.py                     # 60,000 rows, batch 256
    python benchmarks/step_overhead.py --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from train_speed import Variant, make_trainer

from nervus_lightning.console import quiet_lightning
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.module import NervusModule

SEED = 0
LABEL = "label_y"


def write_csv(rows: int, inputs: int, folder: Path) -> Path:
    """``rows`` training rows plus 1,000 validation and 1,000 test rows (a linear signal)."""
    rng = np.random.default_rng(SEED)
    n = rows + 2000
    x = rng.standard_normal((n, inputs))
    logit = x[:, : min(3, inputs)].sum(1)
    frame = pd.DataFrame(x, columns=[f"input_{k}" for k in range(inputs)])
    frame.insert(0, "uniqID", [f"r{i}" for i in range(n)])
    frame[LABEL] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame["split"] = ["train"] * rows + ["val"] * 1000 + ["test"] * 1000
    path = folder / "tabular.csv"
    frame.to_csv(path, index=False)
    return path


def make_datamodule(csv: Path, batch_size: int) -> NervusDataModule:
    return NervusDataModule(
        csv, task="classification", labels=[LABEL], batch_size=batch_size, use_images=False
    )


def make_module(dm: NervusDataModule) -> NervusModule:
    L.seed_everything(SEED, verbose=False)
    return NervusModule(
        dm.schema,
        extractor=None,
        # The default MLP; no linear term, which the plain loops do not have either.
        tabular={"name": "mlp", "linear": False},
        mixer=None,
        task="classification",
        evaluation={"positive_class": {LABEL: "yes"}},
    )


def plain_epoch(dm: NervusDataModule, tensors: bool) -> tuple[float, int]:
    """Seconds of one epoch of a hand-written loop, and its steps."""
    module = make_module(dm)
    net = module.net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    dataset = dm.dataset("train", train=True)
    batch_size = dm.batch_size
    if tensors:
        everything = next(iter(DataLoader(dataset, batch_size=len(dataset))))
        x, y = everything["tabular"], everything["target"][:, 0].long()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
        batches = ((x[i], y[i]) for i in order.split(batch_size))
    else:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(SEED),
        )
        batches = ((b["tabular"], b["target"][:, 0].long()) for b in loader)
    start, steps = time.perf_counter(), 0
    for inputs, target in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(net(tabular=inputs)[0], target)
        loss.backward()
        optimizer.step()
        steps += 1
    return time.perf_counter() - start, steps


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.steps = trainer.num_training_batches


def nervus_epoch(dm: NervusDataModule, profile: cProfile.Profile | None = None) -> float:
    module = make_module(dm)
    timer = EpochTimer()
    with quiet_lightning():  # Lightning's start-up lines and advertisement, once per run
        # train_speed.py's bare trainer: no validation, checkpoints, logger or progress bar.
        trainer = make_trainer(Variant("nervus"), epochs=1, callbacks=[timer])
        L.seed_everything(SEED, verbose=False)
        if profile is not None:
            profile.enable()
        trainer.fit(module, datamodule=dm)
        if profile is not None:
            profile.disable()
    return timer.seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dm = make_datamodule(write_csv(args.rows, args.inputs, Path(tmp)), args.batch_size)
        dm.setup("fit")
        runs = {
            "plain": lambda: plain_epoch(dm, tensors=False)[0],
            "plain tensors": lambda: plain_epoch(dm, tensors=True)[0],
            "nervus": lambda: nervus_epoch(dm),
        }
        for run in runs.values():  # warm-up
            run()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds[name].append(run())
        steps = plain_epoch(dm, tensors=False)[1]
        median = {name: statistics.median(values) for name, values in seconds.items()}
        print(
            f"\n{args.rows:,} rows, batch {args.batch_size}, {steps} steps, "
            f"{args.threads} threads, median of {args.repeats}\n"
        )
        print("| loop | s / epoch | ms / step | nervus overhead, ms / step | nervus × |")
        print("|---|---|---|---|---|")
        for name, value in median.items():
            overhead = (median["nervus"] - value) / steps * 1000
            print(
                f"| {name} | {value:.3f} | {value / steps * 1000:.2f} | "
                f"{overhead:.2f} | {median['nervus'] / value:.2f} |"
            )
        if args.profile:
            profile = cProfile.Profile()
            nervus_epoch(dm, profile)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(45)
            print(out.getvalue())


if __name__ == "__main__":
    main()
