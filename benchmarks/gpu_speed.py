"""GPU section of ``benchmarks/train_speed.py`` (``--gpu``): images per second on one CUDA card.

ResNet18 and ResNet50 from scratch at 224 x 224 (one channel, batch ``--gpu-batch``), fp32,
bf16-mixed, bf16-mixed with channels-last tensors, and bf16-mixed with ``torch.compile``, each
trained by

* ``plain``: a hand-written loop over in-memory float32 tensors (pinned, copied with
  ``non_blocking``), ``zero_grad; forward; loss; backward; step`` under ``torch.autocast``;
* ``nervus``: ``Trainer.fit`` of ``NervusModule`` on a ``NervusDataModule`` of the same images as
  PNG files with ``data.cache=memory`` (read and resized once, before timing), 4 loader workers.

Each run trains ``--gpu-steps`` timed steps after ``--gpu-warmup`` untimed ones (compilation
included in the warm-up); images per second = timed images / timed seconds, with
``torch.cuda.synchronize`` at both ends. The training split holds at least ``warm-up + steps``
batches, so nervus's timed steps lie inside one epoch, as the plain loop's do (it never starts
an epoch): with a split of a few batches, every epoch start empties and refills the loader's
prefetch queue, a cost the plain loop over in-memory tensors does not have. Skipped, with a
message, without CUDA. Sized to finish in about 5 minutes on an H100 (compilation takes most).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.module import NervusModule

SIZE = 224
MODES = ("fp32", "bf16-mixed", "bf16 channels-last", "bf16 compile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", action="store_true", help="run the GPU section (needs CUDA)")
    parser.add_argument(
        "--gpu-images", type=int, default=0, help="0: enough for warm-up + timed steps"
    )
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--gpu-warmup", type=int, default=10)
    parser.add_argument("--gpu-archs", default="resnet18,resnet50")
    parser.add_argument(
        "--gpu-csv", type=Path, default=None, help="also append each row to this CSV as it comes"
    )


def _write_data(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / f"img/{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        Image.fromarray(pixels).save(path, compress_level=1)
        split = "train" if i < n - 8 else ("val" if i < n - 4 else "test")
        rows.append(
            {"uniqID": i, "imgpath": str(path), "label_y": ("no", "yes")[i % 2], "split": split}
        )
    csv = folder / "gpu.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _module(dm: NervusDataModule, arch: str, mode: str) -> NervusModule:
    L.seed_everything(0, verbose=False)
    return NervusModule(
        dm.schema,
        extractor=arch,
        tabular=None,
        mixer=None,
        task="classification",
        optimizer={"name": "adam", "lr": 1e-3},
        in_channels=1,
        image_size=SIZE,
        channels_last=mode == "bf16 channels-last",
    )


def _plain(dm, data, arch: str, mode: str, args) -> float:
    module = _module(dm, arch, mode).cuda()
    net = module.net
    if mode == "bf16 channels-last":
        net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if mode == "bf16 compile" else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    images, targets = data
    batch = args.gpu_batch
    n_batches = len(images) // batch

    def step(k: int) -> None:
        i = (k % n_batches) * batch
        image = images[i : i + batch].cuda(non_blocking=True)
        if mode == "bf16 channels-last":
            image = image.contiguous(memory_format=torch.channels_last)
        target = targets[i : i + batch].cuda(non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "fp32"):
            loss = F.cross_entropy(forward(image=image)[0].float(), target)
        loss.backward()
        optimizer.step()

    for k in range(args.gpu_warmup):
        step(k)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(args.gpu_steps):
        step(k)
    torch.cuda.synchronize()
    return args.gpu_steps * batch / (time.perf_counter() - start)


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        self.end = time.perf_counter()


def _nervus(dm, arch: str, mode: str, args) -> float:
    module = _module(dm, arch, mode)
    timer = _StepTimer(args.gpu_warmup)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=args.gpu_warmup + args.gpu_steps,
        precision="32-true" if mode == "fp32" else "bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(torch.compile(module) if mode == "bf16 compile" else module, datamodule=dm)
    return args.gpu_steps * args.gpu_batch / (timer.end - timer.start)


def run(args: argparse.Namespace) -> list[tuple[str, str, float, float]] | None:
    """The table of images per second, or None (printed why) without CUDA."""
    if not torch.cuda.is_available():
        print("--gpu: no CUDA device here; the GPU section is skipped")
        return None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    # One epoch holds every timed step (+ 8 val/test images and a spare batch).
    n_images = args.gpu_images or (args.gpu_warmup + args.gpu_steps + 1) * args.gpu_batch + 8
    with tempfile.TemporaryDirectory() as name:
        csv = _write_data(Path(name), n_images)
        dm = NervusDataModule(
            csv,
            image_size=SIZE,
            batch_size=args.gpu_batch,
            num_workers=4,
            pin_memory=True,
            cache="memory",
        )
        dm.image_cache()
        ds = dm.dataset("train")
        images = torch.stack([ds[i]["image"] for i in range(len(ds))]).pin_memory()
        targets = ds.targets[:, 0].long().pin_memory()
        print(
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.gpu_batch}, "
            f"{len(ds)} training images ({len(ds) // args.gpu_batch} batches per epoch)"
        )
        for arch in args.gpu_archs.split(","):
            for mode in MODES:
                plain = _plain(dm, (images, targets), arch, mode, args)
                nervus = _nervus(dm, arch, mode, args)
                rows.append((arch, mode, plain, nervus))
                if args.gpu_csv is not None:
                    new_file = not args.gpu_csv.exists()
                    with args.gpu_csv.open("a") as handle:
                        if new_file:
                            handle.write("device,arch,mode,plain_img_s,nervus_img_s,ratio\n")
                        handle.write(
                            f"{torch.cuda.get_device_name()},{arch},{mode},{plain:.1f},"
                            f"{nervus:.1f},{nervus / plain:.3f}\n"
                        )
                print(
                    f"{arch:9s} {mode:20s} plain {plain:8.0f} img/s  nervus {nervus:8.0f} img/s"
                    f"  nervus/plain {nervus / plain:5.2f}",
                    flush=True,
                )
    return rows
