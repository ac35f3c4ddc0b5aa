"""Compare nervus_lightning's DeepSurv with scikit-survival baselines on real survival data.

For each preset data set (``whas500``, ``gbsg2``, ``flchain``; see
:mod:`nervus_lightning.survival.presets`) and each seed ``s``, the preset CSV is written with
``data.split_seed=s`` (a different stratified 60/20/20 train/val/test split per seed) and three
models are fitted on exactly the same training rows and scored on exactly the same test rows:

* ``deepsurv``: ``nervus_lightning.train.train`` with ``data=<preset> data.split_seed=s seed=s``
  (tabular MLP only, Cox partial likelihood). Its hyperparameters come from the preset YAML;
  the validation split is used only for choosing the best-``val_loss`` checkpoint.
* ``coxph``: ``sksurv.linear_model.CoxPHSurvivalAnalysis`` (Efron ties) on the training rows
  only, the same rows DeepSurv fits on, inputs standardised with training mean/sd. A small
  ridge penalty ``alpha`` (default 1e-4) keeps the Newton steps finite when a one-hot level is
  rare; it barely moves the estimates.
* ``rsf``: ``sksurv.ensemble.RandomSurvivalForest`` (200 trees, ``min_samples_leaf=15``,
  ``max_features="sqrt"``, ``random_state=s``), training rows only, no tuning.

Every score is Harrell's C-index, ``sksurv.metrics.concordance_index_censored``, computed here
from each model's risk scores (DeepSurv's come from its ``predictions.csv``, and are checked
against the ``c_index`` in its ``metrics.json``).

``--evaluate val`` scores the validation split instead of the test split. It is the only mode
used to choose DeepSurv's hyperparameters (``--override`` passes Hydra overrides to every
DeepSurv run), so the test split never influences a choice.

Output: a table of mean ± sd over seeds per data set and method, and the per-seed values in a
CSV (default ``benchmarks/results/survival.csv``).

Usage::

    python benchmarks/survival.py                               # 3 data sets x 5 seeds
    python benchmarks/survival.py --datasets whas500 --seeds 0 1 --quick
    python benchmarks/survival.py --evaluate val --override model.tabular.dropout=0.3 \\
        --csv /tmp/val.csv                                      # tuning, validation only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from nervus_lightning.survival.presets import PRESETS, preset_endpoint
from nervus_lightning.train import materialize_preset

METHODS = ("deepsurv", "coxph", "rsf")
DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "survival.csv"
# A quick run only checks that everything is wired; its numbers mean nothing.
QUICK_OVERRIDES = ("trainer.max_epochs=2",)


def harrell_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event), the one score of this benchmark."""
    return float(concordance_index_censored(event.astype(bool), time.astype(float), risk)[0])


def _split_arrays(frame: pd.DataFrame, endpoint: str) -> tuple[np.ndarray, np.ndarray]:
    inputs = frame[[c for c in frame.columns if c.startswith("input_")]].to_numpy(float)
    outcome = Surv.from_arrays(
        frame[f"label_{endpoint}"].to_numpy().astype(bool),
        frame[f"period_{endpoint}"].to_numpy(float),
    )
    return inputs, outcome


def fit_coxph(train: pd.DataFrame, score: pd.DataFrame, endpoint: str, alpha: float) -> float:
    """Linear Cox on standardised training inputs; C-index on ``score`` rows."""
    x_train, y_train = _split_arrays(train, endpoint)
    x_score, y_score = _split_arrays(score, endpoint)
    scaler = StandardScaler().fit(x_train)
    model = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron").fit(scaler.transform(x_train), y_train)
    risk = model.predict(scaler.transform(x_score))
    return harrell_c(y_score["event"], y_score["time"], risk)


def fit_rsf(train: pd.DataFrame, score: pd.DataFrame, endpoint: str, seed: int) -> float:
    """Random survival forest on the training rows; C-index on ``score`` rows."""
    x_train, y_train = _split_arrays(train, endpoint)
    x_score, y_score = _split_arrays(score, endpoint)
    forest = RandomSurvivalForest(
        n_estimators=200,
        min_samples_leaf=15,
        max_features="sqrt",
        n_jobs=2,
        random_state=seed,
        low_memory=True,
    ).fit(x_train, y_train)
    return harrell_c(y_score["event"], y_score["time"], forest.predict(x_score))


def fit_deepsurv(
    dataset: str, seed: int, split: str, overrides: Sequence[str], run_dir: Path
) -> float:
    """Train DeepSurv through the library's own recipe; C-index of its predictions on ``split``."""
    from hydra import compose, initialize_config_dir

    from nervus_lightning.config import config_dir
    from nervus_lightning.train import train

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"data={dataset}",
                f"data.split_seed={seed}",
                f"seed={seed}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                # Only the C-index is needed here: skip the bootstrap intervals of the report.
                "evaluation.n_bootstrap=0",
                *overrides,
            ],
        )
    # Lightning prints its test-loss table to stdout; keep the benchmark's output to C-indices
    # (and keep test numbers out of sight in --evaluate val tuning runs).
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        train(cfg, run_dir)
    endpoint = preset_endpoint(dataset)
    label = f"label_{endpoint}"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    rows = predictions[predictions["split"] == split]
    c_index = harrell_c(
        rows[label].to_numpy(), rows[f"period_{endpoint}"].to_numpy(), rows[f"risk_{label}"]
    )
    reported = json.loads((run_dir / "metrics.json").read_text())[split][label]["c_index"]
    if not np.isclose(c_index, reported, rtol=0, atol=1e-9):
        raise RuntimeError(f"metrics.json c_index {reported} != recomputed {c_index} ({run_dir})")
    return c_index


def run_benchmark(
    datasets: Sequence[str] = PRESETS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = METHODS,
    evaluate: str = "test",
    overrides: Sequence[str] = (),
    cox_alpha: float = 1e-4,
    quick: bool = False,
) -> pd.DataFrame:
    """One row per (dataset, seed, method): C-index on the ``evaluate`` split and seconds taken."""
    if evaluate not in ("test", "val"):
        raise ValueError(f"evaluate must be 'test' or 'val', not {evaluate!r}")
    overrides = [*(QUICK_OVERRIDES if quick else ()), *overrides]
    rows = []
    for dataset in datasets:
        endpoint = preset_endpoint(dataset)
        for seed in seeds:
            frame = pd.read_csv(materialize_preset(dataset, seed=seed))
            train_rows = frame[frame["split"] == "train"]
            score_rows = frame[frame["split"] == evaluate]
            for method in methods:
                start = time.perf_counter()
                if method == "coxph":
                    c_index = fit_coxph(train_rows, score_rows, endpoint, cox_alpha)
                elif method == "rsf":
                    c_index = fit_rsf(train_rows, score_rows, endpoint, seed)
                elif method == "deepsurv":
                    with tempfile.TemporaryDirectory() as run_dir:
                        c_index = fit_deepsurv(dataset, seed, evaluate, overrides, Path(run_dir))
                else:
                    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
                rows.append(
                    {
                        "dataset": dataset,
                        "seed": seed,
                        "method": method,
                        "split": evaluate,
                        "c_index": c_index,
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(
                    f"{dataset:8s} seed {seed} {method:8s} {evaluate} C = {c_index:.4f}", flush=True
                )
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd of the C-index over seeds, per data set and method."""
    table = []
    for (dataset, method), group in results.groupby(["dataset", "method"], sort=False):
        values = group["c_index"].tolist()
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        table.append(
            {
                "dataset": dataset,
                "method": method,
                "n_seeds": len(values),
                "mean": statistics.fmean(values),
                "sd": sd,
            }
        )
    return pd.DataFrame(table)


def format_table(summary: pd.DataFrame, split: str) -> str:
    """Markdown table: data set, method, C-index mean ± sd (n seeds)."""
    lines = [
        f"| data set | method | {split} C-index, mean ± sd | seeds |",
        "|---|---|---|---|",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {row.dataset} | {row.method} | {row.mean:.3f} ± {row.sd:.3f} | {row.n_seeds} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--evaluate", choices=("test", "val"), default="test")
    parser.add_argument(
        "--override", action="append", default=[], help="Hydra override for DeepSurv runs"
    )
    parser.add_argument("--cox-alpha", type=float, default=1e-4)
    parser.add_argument("--quick", action="store_true", help="2 epochs: a wiring check only")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="per-seed results")
    args = parser.parse_args(argv)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    start = time.perf_counter()
    results = run_benchmark(
        args.datasets,
        args.seeds,
        args.methods,
        evaluate=args.evaluate,
        overrides=args.override,
        cox_alpha=args.cox_alpha,
        quick=args.quick,
    )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.csv, index=False, float_format="%.6f")
    print()
    print(format_table(summarize(results), args.evaluate))
    print(f"\nper-seed values: {args.csv}; total {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
