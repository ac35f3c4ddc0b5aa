"""Time one training epoch of nervus_lightning against a hand-written PyTorch loop.

Both sides train the same ``NervusNet`` (ResNet18 from scratch, one softmax head) on the same
data set object's images (the demo digits' training split, resized), with the same batch size,
optimiser (Adam), loss (cross-entropy), seed and number of threads, in one process:

* ``plain``: ``for batch in DataLoader(dataset): zero_grad; forward; loss; backward; step``, over
  a ``DataLoader`` of the very dataset the data module builds, so decoding and transforms cost
  the same on both sides and only the training loop differs;
* ``nervus``: ``lightning.Trainer.fit(NervusModule, NervusDataModule)``, checkpoints, logger,
  progress bar and validation off.

Each variant (fp32, bf16 autocast, bf16 with channels-last tensors) is warmed up once, then the
variants are run ``--repeats`` times, interleaved and in a rotated order so that a noisy shared
machine slows all of them alike; the median seconds per epoch is reported with its ratio to the
plain fp32 loop. An epoch is timed from the creation of the batch iterator to the last optimiser
step (plain), or from ``on_train_epoch_start`` to ``on_train_epoch_end`` (Lightning).

``--accuracy`` also trains nervus in fp32 and in bf16-mixed for a few epochs from the same seed
and prints the test-split accuracy and AUROC of ``label_parity`` of each (scikit-learn on the
predicted probabilities), to show whether bf16 keeps the accuracy.

Usage::

    python benchmarks/train_speed.py                      # ~1,000 images, 64 x 64, batch 32
    python benchmarks/train_speed.py --threads 2 --repeats 5 --accuracy
    python benchmarks/train_speed.py --gpu                # CUDA only: see gpu_speed.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, roc_auc_score
from torch.utils.data import DataLoader

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.demo import build_demo_dataset
from nervus_lightning.module import NervusModule
from nervus_lightning.workflows.train import cpu_has_native_bf16

LABEL = "label_parity"
SEED = 0


@dataclass(frozen=True)
class Variant:
    """One way to train: which loop, which precision, which memory format."""

    loop: str  # "plain" or "nervus"
    bf16: bool = False
    channels_last: bool = False
    fused_adam: bool = False

    @property
    def name(self) -> str:
        precision = "bf16" if self.bf16 else "fp32"
        extras = (" channels-last" if self.channels_last else "") + (
            " fused-Adam" if self.fused_adam else ""
        )
        return f"{self.loop} {precision}{extras}"

    @property
    def optimizer(self) -> dict:
        # torch's Adam runs a Python loop over the parameters on CPU unless asked for its fused
        # (vectorised, one kernel) implementation.
        # Explicit either way: NervusModule picks fused Adam by default when "fused" is absent.
        return {"name": "adam", "fused": self.fused_adam}


@dataclass
class Result:
    """Wall-clock and process CPU seconds per epoch of each timed run of one variant."""

    variant: Variant
    seconds: list[float]
    cpu_seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)


def clock() -> tuple[float, float]:
    """Wall-clock and process CPU time, in seconds."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def subset_csv(images: int, folder: Path) -> Path:
    """The demo CSV with only its first ``images`` training cases (other splits kept)."""
    demo = build_demo_dataset()
    frame = pd.read_csv(demo)
    frame["imgpath"] = [str((demo.parent / p).resolve()) for p in frame["imgpath"]]
    train = frame.index[frame["split"] == "train"]
    if images > len(train):
        raise SystemExit(f"--images {images}: the demo has only {len(train)} training images")
    frame = frame.drop(train[images:])
    path = folder / "bench.csv"
    frame.to_csv(path, index=False)
    return path


def make_datamodule(csv: Path, args: argparse.Namespace) -> NervusDataModule:
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
        sampler="none",
        # As a user's run (data.cache=auto): the images decoded once, into memory.
        cache="memory",
    )


def make_module(dm: NervusDataModule, args: argparse.Namespace, variant: Variant) -> NervusModule:
    L.seed_everything(SEED, verbose=False)
    return NervusModule(
        dm.schema,
        extractor="resnet18",
        tabular=None,
        mixer=None,
        task="classification",
        optimizer={**variant.optimizer, "lr": args.lr},
        in_channels=1,
        image_size=args.image_size,
        channels_last=variant.channels_last,
        evaluation={"positive_class": {LABEL: "odd"}},
    )


# -- the hand-written loop -------------------------------------------------------------------
def plain_train(
    dm: NervusDataModule,
    args: argparse.Namespace,
    variant: Variant,
    epochs: int,
    max_steps: int | None = None,
) -> list[tuple[float, float]]:
    """Train with a plain PyTorch loop; return (wall, CPU) seconds of each epoch."""
    net = make_module(dm, args, Variant("plain")).net
    net.train()
    if variant.channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, fused=variant.fused_adam or None)
    dataset = dm.dataset("train", train=True)
    drop_last = len(dataset) % args.batch_size == 1 and len(dataset) > args.batch_size
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=0,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(SEED),
    )
    seconds = []
    for _ in range(epochs):
        start = clock()
        for step, batch in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            image = batch["image"]
            if variant.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            target = batch["target"][:, 0].long()
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
                logits = net(image=image)[0]
                loss = F.cross_entropy(logits.float(), target)
            loss.backward()
            optimizer.step()
        seconds.append(elapsed(start))
    return seconds


# -- nervus_lightning ------------------------------------------------------------------------
class EpochTimer(L.Callback):
    """Seconds of each training epoch, hook to hook."""

    def __init__(self) -> None:
        self.seconds: list[tuple[float, float]] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = clock()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(elapsed(self._start))


def make_trainer(variant: Variant, epochs: int, callbacks: list, max_steps: int = -1) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        max_steps=max_steps,
        precision="bf16-mixed" if variant.bf16 else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def nervus_train(
    dm: NervusDataModule,
    args: argparse.Namespace,
    variant: Variant,
    epochs: int,
    max_steps: int | None = None,
) -> tuple[list[tuple[float, float]], NervusModule]:
    """Train with Lightning; return (wall, CPU) seconds of each epoch and the trained module."""
    module = make_module(dm, args, variant)
    timer = EpochTimer()
    trainer = make_trainer(variant, epochs, [timer], max_steps=max_steps or -1)
    L.seed_everything(SEED, verbose=False)
    trainer.fit(module, datamodule=dm)
    return timer.seconds, module


def run_variant(
    dm: NervusDataModule, args: argparse.Namespace, variant: Variant, max_steps: int | None = None
) -> list[float]:
    epochs = 1 if max_steps else args.epochs
    if variant.loop == "plain":
        return plain_train(dm, args, variant, epochs, max_steps)
    return nervus_train(dm, args, variant, epochs, max_steps)[0]


# -- the benchmark ---------------------------------------------------------------------------
def variants_to_run(args: argparse.Namespace) -> list[Variant]:
    precisions = [False, True] if args.bf16 else [False]
    layouts = [False, True] if args.channels_last else [False]
    fused = [False, True] if args.fused_adam else [False]
    out = []
    for bf16 in precisions:
        for channels_last in layouts if bf16 else [False]:
            for fused_adam in fused:
                for loop in ("plain", "nervus"):
                    out.append(Variant(loop, bf16, channels_last, fused_adam))
    return out


def benchmark(dm: NervusDataModule, args: argparse.Namespace) -> list[Result]:
    variants = variants_to_run(args)
    for variant in variants:  # thread pools, allocator, oneDNN kernel choice: not timed
        run_variant(dm, args, variant, max_steps=args.warmup)
    results = {v: Result(v, [], []) for v in variants}
    for rep in range(args.repeats):
        shift = rep % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            seconds = run_variant(dm, args, variant)
            results[variant].seconds.append(statistics.mean(w for w, _ in seconds))
            results[variant].cpu_seconds.append(statistics.mean(c for _, c in seconds))
            if torch.get_num_threads() != args.threads:
                raise RuntimeError(
                    f"{variant.name} changed the thread count to {torch.get_num_threads()}"
                )
    return list(results.values())


def format_table(results: Sequence[Result]) -> str:
    """Seconds per epoch and ratios to the plain fp32 loop: of the medians, of the fastest runs
    (least disturbed by other processes on a shared machine) and of the median CPU seconds."""
    base = next(r for r in results if r.variant == Variant("plain"))
    rows = [
        f"{'variant':<26} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7}  "
        f"{'x plain fp32: median':>20} {'min':>6} {'CPU':>6}"
    ]
    for r in results:
        rows.append(
            f"{r.variant.name:<26} {r.median:>9.3f} {r.best:>7.3f} {max(r.seconds):>7.3f} "
            f"{r.cpu_median:>7.2f}  {r.median / base.median:>20.3f} {r.best / base.best:>6.3f} "
            f"{r.cpu_median / base.cpu_median:>6.3f}"
        )
    return "\n".join(rows)


# -- accuracy: does bf16-mixed keep it? ------------------------------------------------------
def test_scores(module: NervusModule, dm: NervusDataModule, bf16: bool) -> tuple[float, float]:
    """Accuracy and AUROC of ``label_parity`` on the test split, by scikit-learn."""
    loader = DataLoader(dm.dataset("test"), batch_size=dm.batch_size)
    module.eval()
    probs, targets = [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            logits = module(batch)[0]
            probs.append(torch.softmax(logits.float(), dim=1))
            targets.append(batch["target"][:, 0].long())
    prob = torch.cat(probs).numpy()
    target = torch.cat(targets).numpy()
    return accuracy_score(target, prob.argmax(1)), roc_auc_score(target, prob[:, 1])


def accuracy_comparison(dm: NervusDataModule, args: argparse.Namespace) -> str:
    rows = [f"{LABEL}, test split, {args.accuracy_epochs} epochs, seed {SEED}:"]
    variants = [Variant("nervus")] + ([Variant("nervus", bf16=True)] if args.bf16 else [])
    for variant in variants:
        _, module = nervus_train(dm, args, variant, args.accuracy_epochs)
        acc, auc = test_scores(module, dm, variant.bf16)
        rows.append(f"  {variant.name:<12} accuracy {acc:.4f}   AUROC {auc:.4f}")
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="training images (demo train)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="skip the bf16 variants (skipped anyway without CPU support)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="also time bf16 with channels-last tensors"
    )
    parser.add_argument(
        "--fused-adam", action="store_true", help="also time each variant with torch's fused Adam"
    )
    parser.add_argument(
        "--accuracy", action="store_true", help="also compare fp32 and bf16-mixed test accuracy"
    )
    parser.add_argument("--accuracy-epochs", type=int, default=5)
    _gpu_section().add_arguments(parser)
    return parser.parse_args(argv)


def _gpu_section():
    """benchmarks/gpu_speed.py, the sibling script (importable whatever the working folder)."""
    import sys

    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import gpu_speed

    return gpu_speed


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.gpu:
        _gpu_section().run(args)
        return []
    torch.set_num_threads(args.threads)
    if args.bf16 and not cpu_has_native_bf16():
        print("this CPU has no native bfloat16 support: bf16 variants skipped")
        args.bf16 = False
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    with tempfile.TemporaryDirectory() as folder:
        dm = make_datamodule(subset_csv(args.images, Path(folder)), args)
        n_train = len(dm.split_frame("train"))
        print(
            f"torch {torch.__version__}, lightning {L.__version__}, {args.threads} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n"
            f"ResNet18 from scratch, {n_train} images {args.image_size}x{args.image_size} x1, "
            f"batch {args.batch_size}, {args.epochs} epoch(s) per run, {args.repeats} repeats"
        )
        results = benchmark(dm, args)
        print(format_table(results))
        if args.accuracy:
            print(accuracy_comparison(dm, args))
    return results


if __name__ == "__main__":
    main()
