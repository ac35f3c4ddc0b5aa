"""Volumes on a GPU: training speed of a 3D network in fp32 and bf16-mixed, and predictions on the
GPU against the CPU's (issue 21).

    python benchmarks/gpu_volumes.py                        # resnet18_3d, 64^3, batch 8, CUDA
    python benchmarks/gpu_volumes.py --device cpu --size 16 --batch-size 2 --steps 2   # smoke

Synthetic NIfTI volumes of ``--size``^3 voxels (``volume_speed.py``'s: a bright blob in the upper
or lower half, the label) are read through the library (``data.volume_size``, memory cache,
images only) and the network is the command line's ``model/extractor=<--extractor>`` with one
softmax head (``volume_speed.py``'s module). Two checks, one device:

* **Speed**: for each precision (``32-true`` and ``bf16-mixed``), ``Trainer.fit`` of a freshly
  seeded ``NervusModule`` for ``--warmup`` untimed steps then ``--steps`` timed ones, all inside
  one epoch (the training split holds them all); volumes per second = timed volumes / timed
  seconds, with ``torch.cuda.synchronize`` at both ends on a GPU.
* **Parity**: the network trained in fp32 above predicts the validation and test volumes on the
  CPU and on ``--device`` (fp32, TF32 off): the largest difference of a probability must be at
  most ``--tolerance`` (1e-4); the exit status is 1 when it is not. The same volumes under
  bf16 autocast on the device are shown for information (no bound: bf16 keeps 8 bits of
  mantissa).

With ``--device cpu`` both sides of the parity check run on the CPU (the difference is 0): that
is the smoke test of the script (``tests/test_benchmark_smoke.py``), not a measurement. Sized to
take about a minute on an H100 at the defaults, most of it writing the volumes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader
from volume_speed import EXTRACTORS, LABEL, SEED, make_module, write_volumes

from nervus_lightning.console import quiet_lightning
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.module import NervusModule

PRECISIONS = ("32-true", "bf16-mixed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--extractor", choices=sorted(EXTRACTORS), default="resnet18_3d")
    parser.add_argument("--size", type=int, default=64, help="voxels a side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=4, help="loader workers (cuda only)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    return parser.parse_args(argv)


class StepTimer(L.Callback):
    """Seconds from the end of step ``warmup`` to the end of training."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.steps, self.start, self.end = 0, 0.0, 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        if self.warmup == 0:
            self.start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.start = self._now()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = self._now()


def train_steps(
    dm: NervusDataModule, args: argparse.Namespace, precision: str
) -> tuple[float, NervusModule]:
    """Volumes per second of the timed steps, and the trained module."""
    module = make_module(dm, args)
    cuda = args.device == "cuda"
    timer = StepTimer(args.warmup, cuda)
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            max_epochs=1,
            max_steps=args.warmup + args.steps,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[timer],
        )
        L.seed_everything(SEED, verbose=False)
        trainer.fit(module, datamodule=dm)
    if timer.steps != args.warmup + args.steps:
        raise RuntimeError(f"trained {timer.steps} steps, not {args.warmup + args.steps}")
    return args.steps * args.batch_size / (timer.end - timer.start), module


def predictions(
    module: NervusModule, loader: DataLoader, device: str, bf16: bool = False
) -> np.ndarray:
    """Probabilities of every volume of ``loader`` on ``device`` (fp32, or under bf16
    autocast)."""
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        return module.infer(loader, device)[0]


def main(argv: list[str] | None = None) -> dict | None:
    """Run both checks; return what was printed (None, said why, without CUDA)."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_volumes: no CUDA device here; run with --device cpu for a smoke test")
        return None
    # fp32 means fp32: no TF32 in convolutions or matrix products (the parity check).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n_train = (args.warmup + args.steps) * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_volumes(n_train, args.size, Path(tmp))
        cuda = args.device == "cuda"
        dm = NervusDataModule(
            csv,
            task="classification",
            labels=[LABEL],
            batch_size=args.batch_size,
            use_tabular=False,
            cache="memory",
            volume_size=[args.size] * 3,
            window=[500, 1000],
            num_workers=args.workers if cuda else 0,
            pin_memory=cuda,
        )
        dm.setup("fit")
        dm.image_cache()
        name = torch.cuda.get_device_name() if cuda else "CPU"
        print(
            f"{name}, torch {torch.__version__}, {args.extractor}, {n_train} training volumes of "
            f"{args.size}^3, batch {args.batch_size}, {args.warmup} + {args.steps} steps\n"
        )
        speed, trained = {}, None
        for precision in PRECISIONS:
            speed[precision], module = train_steps(dm, args, precision)
            print(f"{precision:11s} {speed[precision]:9.1f} volumes/s (training)", flush=True)
            if precision == "32-true":
                trained = module
        held_out = ConcatDataset([dm.dataset("val"), dm.dataset("test")])
        loader = DataLoader(held_out, batch_size=args.batch_size)
        on_cpu = predictions(trained, loader, "cpu")
        on_device = predictions(trained, loader, args.device)
        in_bf16 = predictions(trained, loader, args.device, bf16=True)
    fp32_gap = float(np.abs(on_device - on_cpu).max())
    bf16_gap = float(np.abs(in_bf16 - on_cpu).max())
    agree = fp32_gap <= args.tolerance
    print(
        f"\npredictions of {len(on_cpu)} held-out volumes, largest |probability difference| "
        f"from the CPU's:\n  {args.device} fp32 {fp32_gap:.2e} "
        f"({'within' if agree else 'OVER'} {args.tolerance:g})\n"
        f"  {args.device} bf16 autocast {bf16_gap:.2e} (for information)"
    )
    if not cuda:
        print("(--device cpu: both sides ran on the CPU; a smoke test, not a measurement)")
    return {
        "volumes_per_second": speed,
        "fp32_gap": fp32_gap,
        "bf16_gap": bf16_gap,
        "agree": agree,
        "n_predicted": len(on_cpu),
    }


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result is None or result["agree"] else 1)
