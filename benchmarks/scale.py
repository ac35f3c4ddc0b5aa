"""Scale check: a 1,000,000-row tabular survival CSV, one epoch, the whole run, peak memory.

Steps (figures printed at the end, as a Markdown table):

1. Writes a synthetic survival CSV of ``--rows`` rows to a temporary folder (``--keep`` keeps
   it). Generating formula, seed 0: ten inputs ``x_k ~ N(0, 1)``; log hazard ratio
   ``eta = 0.8 x_0 - 0.5 x_1 + 0.3 x_2``; event time ``T ~ Exponential(rate 0.1 exp(eta))``;
   censoring time ``C ~ Exponential(rate 0.1)``; ``period_death = min(T, C)`` rounded to 0.01
   (tied times), ``label_death = 1{T <= C}`` (about half events); split 80 / 10 / 10 % at
   random into train / val / test.
2. In a child process (so that its memory is the run's own), runs
   ``nervus_lightning.workflows.train.train`` -- the command line's recipe -- with ``task=survival
   model/extractor=none trainer.max_epochs=1`` and ``data.batch_size`` (``--batch-size``):
   validation of the CSV (data module build), one training epoch, validation, test, post-training
   work (baseline hazard, predictions of every row, ``predictions.csv``, figures, evaluation
   with the default ``evaluation.*`` settings, including the bootstrap). Times come from a
   Lightning callback and wrappers around ``build_datamodule``; peak RSS per phase from a thread
   sampling ``/proc/self/statm`` every 50 ms, and the process's ``ru_maxrss``.
3. Header check of ``--images`` small PNGs (8x8 grayscale) listed in a CSV:
   ``nervus_lightning.data.images.check_image_files`` on all paths, as the data module calls it
   (``--images 100000`` measures the 100,000-image case directly; fewer gives a linear
   extrapolation, labelled as such).

Usage::

    python benchmarks/scale.py                      # 1,000,000 rows, 20,000 PNGs
    python benchmarks/scale.py --rows 200000 --images 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_INPUTS = 10


def write_survival_csv(path: Path, rows: int, seed: int = 0) -> None:
    """The synthetic survival CSV of the module docstring."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, N_INPUTS)).astype(np.float32)
    eta = 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2]
    event_time = rng.exponential(1.0 / (0.1 * np.exp(eta)))
    censor_time = rng.exponential(1.0 / 0.1, rows)
    frame = pd.DataFrame({f"input_x{k}": x[:, k] for k in range(N_INPUTS)})
    frame.insert(0, "split", rng.choice(["train", "val", "test"], rows, p=[0.8, 0.1, 0.1]))
    frame.insert(0, "uniqID", np.char.add("case", np.arange(rows).astype(str)))
    frame["label_death"] = (event_time <= censor_time).astype(np.int8)
    frame["period_death"] = np.round(np.minimum(event_time, censor_time), 2)
    frame.to_csv(path, index=False, float_format="%.5g")


class RssSampler(threading.Thread):
    """Peak resident memory per phase, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.running = True

    def rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def sample(self) -> None:
        value = self.rss()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), value)

    def enter(self, phase: str) -> None:
        """Start ``phase`` with a reading of its own: a phase shorter than the interval (a
        3,000-row epoch on a busy machine) still has a peak."""
        self.sample()
        self.phase = phase
        self.sample()

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(self.interval)


def child(csv: Path, run_dir: Path, batch_size: int, overrides: list[str]) -> dict:
    """Run the training recipe with timing and memory probes; return the figures."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    import nervus_lightning.workflows.train as recipe
    from nervus_lightning.cli.overrides import with_csv_data_group
    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.config import config_dir

    sampler = RssSampler()
    sampler.start()
    marks: dict[str, float] = {}

    cpu: dict[str, float] = {}

    def mark(name: str, phase: str | None = None) -> None:
        marks.setdefault(name, time.perf_counter())
        cpu.setdefault(name, time.process_time())
        if phase:
            sampler.enter(phase)

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            mark("epoch_start", "training epoch")

        def on_validation_start(self, trainer, module):
            if "epoch_start" in marks:
                mark("train_batches_end", "validation")

        def on_train_epoch_end(self, trainer, module):
            mark("epoch_end")

        def on_fit_end(self, trainer, module):
            mark("fit_end", "post-training")

    build_datamodule, build_trainer = recipe.build_datamodule, recipe.build_trainer

    def timed_datamodule(settings, **kwargs):
        mark("validate_start", "CSV validation")
        datamodule = build_datamodule(settings, **kwargs)
        mark("validate_end", "model build")
        return datamodule

    def probed_trainer(trainer, run_dir, callbacks):
        return build_trainer(trainer, run_dir, [*callbacks, Probe()])

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    spent: dict[str, float] = {}
    recipe.build_datamodule = timed_datamodule
    recipe.build_trainer = probed_trainer
    timed(recipe.NervusModule, "infer", "inference of the kept checkpoints (all splits)")
    timed(recipe.L.Trainer, "test", "test loop")
    timed(recipe, "write_predictions", "predictions.csv, schema.json, survival figures")
    timed(recipe, "evaluate_run", "evaluation (metrics, bootstrap CIs, report)")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=with_csv_data_group(
                [
                    f"data.csv={csv}",
                    "task=survival",
                    "model/extractor=none",
                    "trainer.max_epochs=1",
                    "trainer.enable_progress_bar=false",
                    "trainer.enable_model_summary=false",
                    f"data.batch_size={batch_size}",
                    *overrides,
                ]
            ),
        )
    start = time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        recipe.train(train_settings(cfg), run_dir)
    end = time.perf_counter()
    sampler.running = False
    sampler.join()
    evaluation_dir = run_dir / "evaluation"
    return {
        "validate_s": marks["validate_end"] - marks["validate_start"],
        "train_batches_s": marks["train_batches_end"] - marks["epoch_start"],
        "epoch_s": marks["epoch_end"] - marks["epoch_start"],
        "post_training_s": end - marks["fit_end"],
        "epoch_cpu_s": cpu["epoch_end"] - cpu["epoch_start"],
        "post_training_cpu_s": time.process_time() - cpu["fit_end"],
        "total_s": end - start,
        "post_training_parts_s": spent,
        "peak_rss_mb": {k: v / 2**20 for k, v in sampler.peaks.items()},
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics_written": (evaluation_dir / "metrics.csv").is_file(),
        "predictions_rows": sum(1 for _ in open(run_dir / "predictions.csv")) - 1,
        "notes": pd.read_csv(evaluation_dir / "metrics_notes.csv")["note"]
        .drop_duplicates()
        .head(4)
        .tolist(),
    }


def header_check(n_images: int, folder: Path) -> dict:
    """Seconds to write ``n_images`` 8x8 PNGs and to check their headers."""
    from PIL import Image

    from nervus_lightning.data.images import check_image_files

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 8, 8), dtype=np.uint8)
    paths = []
    start = time.perf_counter()
    for i in range(n_images):
        path = folder / f"img{i:06d}.png"
        Image.fromarray(pixels[i % 64]).save(path)
        paths.append(str(path))
    written = time.perf_counter() - start
    start = time.perf_counter()
    bad = check_image_files(paths)
    checked = time.perf_counter() - start
    assert not bad, bad[:3]
    return {"n": n_images, "write_s": written, "check_s": checked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=20_000, help="0 skips the header check")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--child", nargs=2, metavar=("CSV", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child(Path(args.child[0]), Path(args.child[1]), args.batch_size, args.override)
        print("RESULT " + json.dumps(result))
        return

    folder = Path(tempfile.mkdtemp(prefix="nervus_scale_"))
    print(f"working folder: {folder}", flush=True)
    csv = folder / "survival.csv"
    start = time.perf_counter()
    write_survival_csv(csv, args.rows)
    print(
        f"wrote {args.rows:,} rows ({csv.stat().st_size / 2**20:.0f} MiB) in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    command = [
        sys.executable, __file__, "--child", str(csv), str(folder / "run"),
        "--batch-size", str(args.batch_size), "--override", *args.override,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        print(done.stdout[-3000:], done.stderr[-6000:])
        raise SystemExit(f"the training run failed (exit {done.returncode})")
    run = json.loads(lines[-1][len("RESULT ") :])

    images = header_check(args.images, folder / "images") if args.images else None

    print(f"\n| {args.rows:,}-row survival run (batch {args.batch_size}) | value |\n|---|---|")
    print(f"| CSV validation (data module build) | {run['validate_s']:.1f} s |")
    print(f"| training epoch, training batches only | {run['train_batches_s']:.1f} s |")
    print(f"| training epoch with its validation | {run['epoch_s']:.1f} s "
          f"({run['epoch_cpu_s']:.0f} s CPU) |")  # fmt: skip
    print(f"| post-training work (test, baseline, predictions, evaluation) | "
          f"{run['post_training_s']:.1f} s ({run['post_training_cpu_s']:.0f} s CPU) |")  # fmt: skip
    for part, seconds in run["post_training_parts_s"].items():
        print(f"| ... of which {part} | {seconds:.1f} s |")
    print(f"| whole run | {run['total_s']:.1f} s |")
    for phase, mb in run["peak_rss_mb"].items():
        print(f"| peak RSS during {phase} | {mb:,.0f} MiB |")
    print(f"| ru_maxrss of the run | {run['ru_maxrss_mb']:,.0f} MiB |")
    print(f"| predictions.csv rows / metrics.csv written | {run['predictions_rows']:,} / "
          f"{run['metrics_written']} |")  # fmt: skip
    ok = run["post_training_s"] < run["epoch_s"]
    print(f"\npost-training < one epoch: {ok}")
    print("metrics notes:", *run["notes"], sep="\n  ")
    if images:
        rate = images["check_s"] / images["n"]
        print(
            f"\nheader check of {images['n']:,} PNGs: {images['check_s']:.1f} s "
            f"({images['write_s']:.0f} s to write them)"
        )
        if images["n"] != 100_000:
            print(f"100,000 images, extrapolated linearly: {rate * 100_000:.0f} s")
    if args.keep:
        print(f"kept {folder}")
    else:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
