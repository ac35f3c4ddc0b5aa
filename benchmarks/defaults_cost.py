"""What the defaults cost: the user's tabular survival command on 1,000 rows, this checkout
against an older one, side by side on the same machine (issue 19: at most 2x).

    git worktree add /tmp/old <commit>          # the checkout to compare with
    python benchmarks/defaults_cost.py --old /tmp/old --repeats 3

Both run ``python -m nervus_lightning data.csv=CSV task=survival model/extractor=none`` and
nothing else (each checkout's own defaults), interleaved (old, new, old, new...) so that a
machine that slows down in the middle slows both; the table gives wall seconds of the whole
command (start-up, training, evaluation, report), median and min, and the ratio of the medians.
The CSV is a seeded simulation (:func:`simulated_cox`): 1,000 rows, 10 standard normal inputs of
which 3 act linearly on the log hazard, exponential event and censoring times (about 60 %
events), split 60/20/20. ``--dataset NAME`` takes one of ``defaults.py``'s data sets instead
(split seed 0), e.g. ``sim_nonlinear``, where the network keeps learning to the epoch cap: the
dearest case of the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def simulated_cox(n: int = 1000, inputs: int = 10, seed: int = 0) -> pd.DataFrame:
    """A linear Cox data set: log hazard ``0.8 x0 - 0.5 x1 + 0.3 x2``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, inputs))
    log_hazard = 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2]
    event_time = rng.exponential(1.0, n) * np.exp(-log_hazard)
    censor_time = rng.exponential(1.5, n)
    frame = pd.DataFrame(x, columns=[f"input_{k}" for k in range(inputs)])
    frame.insert(0, "uniqID", [f"p{i}" for i in range(n)])
    frame["label_death"] = (event_time <= censor_time).astype(int)
    frame["period_death"] = np.round(np.minimum(event_time, censor_time), 3)
    frame["split"] = rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2])
    return frame


def run_once(checkout: Path, csv: Path, run_dir: Path) -> tuple[float, dict]:
    """Wall seconds of the user's command with ``checkout``'s code and configs, and what its
    ``model_summary.json`` says (empty where that checkout writes none)."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    command = [
        sys.executable,
        "-m",
        "nervus_lightning",
        f"data.csv={csv}",
        "task=survival",
        "model/extractor=none",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=run_dir.parent, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: exit {out.returncode}\n{out.stderr[-3000:]}")
    summary = run_dir / "model_summary.json"
    return seconds, json.loads(summary.read_text()) if summary.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the older checkout (its root)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument(
        "--dataset", help="a defaults.py data set (split seed 0) instead of the simulation"
    )
    args = parser.parse_args()
    checkouts = {"old": args.old.resolve(), "new": ROOT}
    times: dict[str, list[float]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "cost.csv"
        if args.dataset:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from defaults import DATASETS, write_nervus_csv

            write_nervus_csv(args.dataset, 0, csv, DATASETS[args.dataset].load())
        else:
            simulated_cox(args.rows).to_csv(csv, index=False)
        for repeat in range(args.repeats):
            for name, checkout in checkouts.items():
                seconds, summary = run_once(checkout, csv, Path(tmp) / f"{name}{repeat}")
                times[name].append(seconds)
                rows = dict(summary.get("rows", []))
                said = "; ".join(rows[k] for k in ("epochs run", "checkpoint chosen") if k in rows)
                print(f"{name} run {repeat}: {seconds:.1f} s {said}", flush=True)
    print("\n| checkout | median s | min s | × old (medians) |\n|---|---|---|---|")
    old = statistics.median(times["old"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {median / old:.2f} |")


if __name__ == "__main__":
    main()
