"""Fused image + table survival on the demo data against the risk that generated it.

The demo's survival endpoint (``label_death`` / ``period_death``) was drawn from a known
proportional-hazards model whose log-hazard, ``true_loghazard_death``, is written beside it
(``log(ln 2 / 5) + 0.25 * (digit - 4.5) + 0.4 * (age - 60) / 10``; see
:mod:`nervus_lightning.data.demo`). The digit is only in the image, the age only in the table, so
only a model that reads both can order the cases as well as the true risk does. The true risk's
Harrell C on the same rows is the ceiling a model can reach on average; the score of a model is
its C divided by that ceiling (``ratio``).

Each run is the command line's recipe, ``nervus_lightning.workflows.train.train`` with
``task=survival`` on the demo data (``python -m nervus_lightning task=survival ...``; DeepSurv,
Cox partial likelihood, ResNet18 from scratch + the tabular MLP, concat mixer), evaluation
bootstrap off, and
the given ``--override`` Hydra overrides; seed ``s`` sets ``seed=s`` (weights, data order). The
demo's split is fixed (1,078 train, 360 val, 180 test, 179 external rows; the external rows
are drawn exactly as the test rows are, a second held-out set); the validation split chooses the
best-``val_loss`` checkpoint and nothing else. Three inputs are compared:

* ``fused``: images + the three tabular inputs (``input_age``, ``input_sex``, ``input_marker``;
  the last two are noise for this endpoint);
* ``image``: images only (``model/tabular=none``);
* ``table``: tabular inputs only (``model/extractor=none``).

Scores on the ``--evaluate`` rows (``test`` by default; ``val`` for choosing settings, so that
test rows never influence a choice; ``val test external`` scores them all from the same runs;
with 180 rows, the test ratio of one model varies by about 0.02 (bootstrap sd) with the rows
drawn, so the external rows are a second opinion), from the
``risk_label_death`` column of the run's ``predictions.csv``: Harrell's C of the model
(``c_model``) and of ``true_loghazard_death`` (``c_true``) with the library's O(n log n)
:func:`~nervus_lightning.survival.concordance.concordance_index_censored`, each checked against
scikit-survival's ``concordance_index_censored`` on the same arrays (and the model's against the
``c_index`` of the run's ``metrics.json``), and ``ratio = c_model / c_true``.

Output: a table of mean ± sd over seeds per input and split, and the per-seed values (with the
overrides) in a CSV (default ``benchmarks/results/fused_survival.csv``).

Usage::

    python benchmarks/fused_survival.py --evaluate val test  # 3 inputs x 3 seeds, the defaults
    python benchmarks/fused_survival.py --evaluate val test --override data.image_size=16 \\
        augmentation=xray optimizer=adamw trainer.max_epochs=20 scheduler=cosine  # best on val
    python benchmarks/fused_survival.py --inputs fused --seeds 0 --evaluate val \\
        --override trainer.max_epochs=20 --csv /tmp/val.csv  # choosing settings on val only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sksurv.metrics import concordance_index_censored as sksurv_concordance

from nervus_lightning.data.demo import build_demo_dataset
from nervus_lightning.survival.concordance import concordance_index_censored

LABEL = "label_death"
PERIOD = "period_death"
TRUE_RISK = "true_loghazard_death"
# The demo's defaults when the results were measured (the demo itself now runs a smaller CNN,
# conf/recipe/*_small_cnn_demo.yaml): ResNet18 from scratch, 10 epochs. --override may change
# them (the last group choice wins).
BASE = ["model/extractor=resnet18", "trainer.max_epochs=10"]
INPUTS = {
    "fused": [],
    "image": ["model/tabular=none"],
    "table": ["model/extractor=none"],
}
DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "fused_survival.csv"


def harrell_c(event: np.ndarray, time_: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of ``risk`` (higher = earlier event), checked against scikit-survival's."""
    event = np.asarray(event, bool)
    time_ = np.asarray(time_, float)
    risk = np.asarray(risk, float)
    ours = concordance_index_censored(event, time_, risk)[0]
    reference = sksurv_concordance(event, time_, risk)[0]
    if not np.isclose(ours, reference, rtol=0, atol=1e-12):
        raise RuntimeError(f"Harrell C {ours} != scikit-survival's {reference}")
    return float(ours)


def ratio_to_truth(rows: pd.DataFrame, risk: np.ndarray) -> dict[str, float]:
    """``c_model``, ``c_true`` (of ``true_loghazard_death``) and their ratio on ``rows``."""
    event, time_ = rows[LABEL].to_numpy(), rows[PERIOD].to_numpy()
    c_model = harrell_c(event, time_, risk)
    c_true = harrell_c(event, time_, rows[TRUE_RISK].to_numpy())
    return {"c_model": c_model, "c_true": c_true, "ratio": c_model / c_true}


def fit_and_score(
    inputs: str,
    seed: int,
    splits: Sequence[str],
    overrides: Sequence[str],
    run_dir: Path,
    demo: Path,
) -> list[dict]:
    """Train one model through the library's recipe; one row of scores per split (module doc)."""
    from hydra import compose, initialize_config_dir

    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.config import config_dir
    from nervus_lightning.workflows.train import train

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "task=survival",
                f"data.demo_root={demo.parent.parent.parent}",
                f"seed={seed}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "evaluation.n_bootstrap=0",  # the scores are computed here
                *BASE,
                *INPUTS[inputs],
                *overrides,
            ],
        )
    start = time.perf_counter()
    # Lightning prints the test-loss table to stdout; keep test numbers out of sight in
    # --evaluate val runs.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        train(train_settings(cfg), run_dir)
    seconds = time.perf_counter() - start
    predictions = pd.read_csv(run_dir / "predictions.csv")
    truth = pd.read_csv(demo, usecols=["uniqID", TRUE_RISK])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    results = []
    for split in splits:
        rows = predictions[predictions["split"] == split].merge(truth, on="uniqID", validate="1:1")
        scores = ratio_to_truth(rows, rows[f"risk_{LABEL}"].to_numpy(float))
        reported = metrics[split][LABEL]["c_index"]
        if not np.isclose(scores["c_model"], reported, rtol=0, atol=1e-9):
            raise RuntimeError(
                f"metrics.json c_index {reported} != {scores['c_model']} ({run_dir})"
            )
        results.append(
            {"inputs": inputs, "seed": seed, "split": split, **scores, "seconds": seconds}
        )
    return results


def format_table(results: pd.DataFrame) -> str:
    """Mean ± sd over seeds, one row per input and split, in the order they were run."""
    columns = ["c_model", "c_true", "ratio", "seconds"]
    head = ["inputs", "split", *columns, "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (inputs, split), group in results.groupby(["inputs", "split"], sort=False):
        cells = [inputs, split]
        for col in columns:
            values = group[col].tolist()
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 0 if col == "seconds" else 3
            cells.append(f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}")
        lines.append("| " + " | ".join(cells) + f" | {len(group)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--evaluate",
        nargs="+",
        choices=["val", "test", "external"],
        default=["test"],
        help="rows to score; choose settings on val only",
    )
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1: a shared CPU thrashes)"
    )
    parser.add_argument("--demo-root", default=None, help="demo cache (default: the usual one)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="per-seed results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "nervus_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    demo = build_demo_dataset(args.demo_root)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for inputs in args.inputs:
                run_dir = Path(folder) / f"{inputs}_{seed}"
                scored = fit_and_score(inputs, seed, args.evaluate, args.override, run_dir, demo)
                for row in scored:
                    row["overrides"] = " ".join(args.override) or "defaults"
                rows.extend(scored)
                args.csv.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(args.csv, index=False)  # kept if stopped early
                for row in scored:
                    print(
                        f"{inputs} seed {seed} ({row['split']}): C {row['c_model']:.4f}, "
                        f"true C {row['c_true']:.4f}, ratio {row['ratio']:.4f}, "
                        f"{row['seconds']:.0f} s",
                        flush=True,
                    )
                shutil.rmtree(run_dir)  # checkpoints are large; the scores are kept
    results = pd.DataFrame(rows)
    print(
        f"\nDemo survival (label_death), {' and '.join(args.evaluate)} rows; overrides "
        f"{args.override or 'none'}; seeds {args.seeds}; {args.threads} threads "
        f"({os.cpu_count()} CPUs). "
        "Harrell C mean ± sd over seeds:\n"
    )
    print(format_table(results))
    print(f"\nper-seed values: {args.csv}")
    return results


if __name__ == "__main__":
    main()
