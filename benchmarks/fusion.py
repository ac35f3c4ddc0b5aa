"""Compare the fusion choices of ``model/mixer=`` (concat, gated, film, attention) on the demo data.

Every run fuses the demo's digit images (resized to ``--image-size``, default 16 x 16, so that
the comparison fits a shared 2-core machine; ResNet18 from scratch) with its three tabular
inputs (``input_age``, ``input_sex``, ``input_marker``) and trains two binary labels at once,
with one head each on the mixer's output:

* ``label_parity`` (even / odd digit), the demo's own label. Only the image carries it: the
  tabular inputs are noise for it, so a mixer is judged on keeping the image signal.
* ``label_both``, written here from the demo's columns: ``yes`` when the digit is odd **and**
  ``input_marker > 0``, else ``no`` (about a quarter ``yes``). Neither input alone decides it,
  so a mixer is judged on combining them.

Each mixer uses its YAML's defaults and is trained with the same settings, for the same number of
epochs, from the same seeds; seed ``s`` sets ``seed=s`` (weights, data order, dropout); the
splits are the demo's fixed ones. The model after the last epoch is scored, so the validation
split is not used for any choice and its AUROC is as honest as the test one. AUROC comes from
``sklearn.metrics.roc_auc_score`` on the probabilities that ``NervusModule.infer`` returns (what
``predictions.csv`` holds).

Output: a table of mean ± sd over seeds (val and test AUROC per label, seconds per run), and the
per-seed values in a CSV (default ``benchmarks/results/fusion.csv``).

Usage::

    python benchmarks/fusion.py                          # 4 mixers x 3 seeds, 2 epochs, 16 x 16
    python benchmarks/fusion.py --mixers concat film --seeds 0 --epochs 1   # a quick check
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from sklearn.metrics import roc_auc_score

from nervus_lightning.cli.overrides import with_csv_data_group
from nervus_lightning.cli.train import train_settings
from nervus_lightning.config import config_dir
from nervus_lightning.data.demo import build_demo_dataset
from nervus_lightning.workflows.train import build_datamodule, build_module

MIXERS = ("concat", "gated", "film", "attention")
LABELS = ("label_parity", "label_both")
POSITIVE = {"label_parity": "odd", "label_both": "yes"}
SPLITS = ("val", "test")
DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "fusion.csv"


def fusion_csv(folder: Path, demo_root: str | None = None) -> Path:
    """The demo CSV with ``label_both`` added and image paths made absolute, in ``folder``."""
    demo = build_demo_dataset(demo_root)
    frame = pd.read_csv(demo)
    frame["imgpath"] = [str((demo.parent / p).resolve()) for p in frame["imgpath"]]
    odd = frame["label_parity"] == "odd"
    frame["label_both"] = (odd & (frame["input_marker"] > 0)).map({True: "yes", False: "no"})
    path = folder / "fusion.csv"
    frame.to_csv(path, index=False)
    return path


def settings(args: argparse.Namespace) -> list[str]:
    """The Hydra overrides shared by every run (printed with the results)."""
    return [
        "task=classification",
        f"data.labels=[{','.join(LABELS)}]",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        "model/extractor=resnet18",
        "model/tabular=mlp",
        f"optimizer.lr={args.lr}",
        f"trainer.max_epochs={args.epochs}",
    ]


def fit_and_score(csv: Path, mixer: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one mixer from one seed; AUROC of each label on val and test, and the seconds."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=with_csv_data_group(
                [f"data.csv={csv}", f"model/mixer={mixer}", f"seed={seed}", *settings(args)]
            ),
        )
    start = time.perf_counter()
    L.seed_everything(seed, workers=True)
    datamodule = build_datamodule(train_settings(cfg))
    module = build_module(train_settings(cfg), datamodule.schema, {"positive_class": POSITIVE})
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    outputs = module.infer(datamodule.predict_dataloader(), "cpu")
    row = {"mixer": mixer, "seed": seed, "seconds": time.perf_counter() - start}
    frame = datamodule.frame
    for j, spec in enumerate(module.schema.labels):
        positive = spec.classes.index(POSITIVE[spec.name])
        for split in SPLITS:
            rows = (frame["split"] == split).to_numpy()
            truth = frame.loc[rows, spec.name] == POSITIVE[spec.name]
            row[f"{split}_auroc_{spec.name}"] = roc_auc_score(truth, outputs[j][rows, positive])
    return row


def format_table(results: pd.DataFrame) -> str:
    """Mean ± sd over seeds, one row per mixer, in the order they were asked for."""
    columns = [f"{s}_auroc_{label}" for label in LABELS for s in SPLITS]
    head = ["mixer", *[c.replace("_auroc_label_", " ") for c in columns], "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mixer, group in results.groupby("mixer", sort=False):
        cells = [mixer]
        for col in [*columns, "seconds"]:
            values = group[col].tolist()
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 0 if col == "seconds" else 3
            cells.append(f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=MIXERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1: a shared CPU thrashes)"
    )
    parser.add_argument("--demo-root", default=None, help="demo cache (default: the usual one)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="per-seed results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        csv = fusion_csv(Path(folder), args.demo_root)
        for seed in args.seeds:
            for mixer in args.mixers:
                rows.append(fit_and_score(csv, mixer, seed, args))
                args.csv.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(args.csv, index=False)  # kept if stopped early
                print(
                    f"{mixer} seed {seed}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if "auroc" in k),
                    flush=True,
                )
    results = pd.DataFrame(rows)
    print(
        f"\nDemo data, images ({args.image_size} x {args.image_size}, ResNet18 from scratch) + "
        f"3 tabular inputs; {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, "
        f"last-epoch model; seeds {args.seeds}; {args.threads} threads "
        f"({os.cpu_count()} CPUs). AUROC mean ± sd over seeds:\n"
    )
    print(format_table(results))
    print(f"\nper-seed values: {args.csv}")
    return results


if __name__ == "__main__":
    main()
