"""Competing risks with the user's defaults against cause-specific Cox (issue 19's question for
the one model that takes several causes, ``task.model=deephit``).

For each data set and split seed (a stratified 60/20/20 split by cause, ``defaults.split_rows``;
inputs one-hot / standardised as ``defaults.encode_inputs`` writes them): the user's command,
``python -m nervus_lightning data.csv=CSV task=survival task.model=deephit
model/extractor=none`` (plus ``evaluation.n_bootstrap=0``, and ``--override`` Hydra overrides),
timed; from its ``evaluation/metrics.csv`` per cause c the test Wolbers C (``c_index_cause<c>``,
recomputed from ``predictions.csv`` with scikit-survival's ``concordance_index_censored`` after
moving other-cause failures beyond the last time: the two must agree to 1e-6), the test IPA of
the cumulative incidence against the training Aalen-Johansen curve (``ipa_cause<c>``), and
calibration in the large on the training and test rows: the mean predicted incidence of cause
c at the calibration time over the Aalen-Johansen estimate there (``cif_predicted_cause<c>`` /
``cif_observed_cause<c>``; 1 is calibrated). On the same rows the textbook model, a
cause-specific ridge Cox model per cause (scikit-survival's ``CoxPHSurvivalAnalysis``, Efron
ties, the other causes censored; alpha from ``defaults.RIDGE_ALPHAS`` by the validation Wolbers
C of its cause), scored with the same Wolbers C on its linear predictor.

Data sets: scikit-survival's ``cgvhd`` (100 patients, 4 inputs, three causes; ``bmt``, 35
patients with one input, is too small to split) and two simulations of 1,000 patients with six
standard normal inputs ``x`` and two causes with exponential cause-specific hazards
``0.10 exp(x @ b1)`` and ``r2 exp(x @ b2)``, ``b1 = (0.8, -0.6, 0.4, 0, 0, 0)``, ``b2 = (0, 0.5,
0, -0.7, 0.3, 0)``, censoring Uniform(0, 15): ``sim_competing`` (``r2 = 0.06``: 41 % / 27 %
of patients fail from cause 1 / 2) and ``sim_competing_rare`` (``r2 = 0.015``: 48 % / 9 %).

    python benchmarks/competing.py                        # 3 sets x 5 split seeds
    python benchmarks/competing.py --old /tmp/old         # and a checkout's code side by side
    python benchmarks/competing.py --override task.alpha=0.2 --out b.csv
    python benchmarks/competing.py --summarize a.csv b.csv:new=alpha_0.2   # one table of both
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import defaults  # noqa: E402

#: Simulation seed: the patients are drawn once; the split seeds split them.
SIM_SEED = 20261207


def simulated(rate2: float, n: int = 1000) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Inputs, times and causes (0 censored) of the module docstring's simulation."""
    rng = np.random.default_rng(SIM_SEED)
    x = rng.standard_normal((n, 6))
    b1 = np.array([0.8, -0.6, 0.4, 0, 0, 0])
    b2 = np.array([0, 0.5, 0, -0.7, 0.3, 0])
    t1 = rng.exponential(1 / (0.10 * np.exp(x @ b1)))
    t2 = rng.exponential(1 / (rate2 * np.exp(x @ b2)))
    censor = rng.uniform(0, 15, n)
    time_ = np.minimum.reduce([t1, t2, censor])
    cause = np.where(censor <= np.minimum(t1, t2), 0, np.where(t1 < t2, 1, 2))
    return pd.DataFrame(x, columns=[f"x{j}" for j in range(6)]), time_, cause


def cgvhd() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    from sksurv.datasets import load_cgvhd

    x, y = load_cgvhd()
    return x.reset_index(drop=True), y["ftime"].astype(float), y["status"].astype(int)


DATASETS = {
    "cgvhd": cgvhd,
    "sim_competing": lambda: simulated(0.06),
    "sim_competing_rare": lambda: simulated(0.015),
}


def write_csv(name: str, seed: int, path: Path) -> pd.DataFrame:
    features, time_, cause = DATASETS[name]()
    split = defaults.split_rows("survival", cause, seed)
    frame = pd.DataFrame({"uniqID": [f"{name}_{i:04d}" for i in range(len(cause))]})
    frame = pd.concat([frame, defaults.encode_inputs(features, split == "train")], axis=1)
    frame["label_event"], frame["period_event"], frame["split"] = cause, time_, split
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def wolbers_c(cause: np.ndarray, time_: np.ndarray, risk: np.ndarray, c: int) -> float:
    """Wolbers' C of cause ``c``: scikit-survival's Harrell C after moving other-cause failures,
    censored, beyond the last time."""
    from sksurv.metrics import concordance_index_censored

    moved = np.where((cause != 0) & (cause != c), time_.max() * 2 + 1, time_)
    return float(concordance_index_censored(cause == c, moved, risk)[0])


def cause_specific_cox(frame: pd.DataFrame, causes: int) -> dict[str, float]:
    """Test Wolbers C of each cause's ridge Cox model (module docstring)."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    inputs = [c for c in frame.columns if c.startswith("input_")]
    parts = {s: frame[frame["split"] == s] for s in ("train", "val", "test")}
    mean, sd = parts["train"][inputs].mean(), parts["train"][inputs].std(ddof=0).replace(0, 1)
    x = {s: ((p[inputs] - mean) / sd).to_numpy(float) for s, p in parts.items()}
    cause = {s: p["label_event"].to_numpy(int) for s, p in parts.items()}
    time_ = {s: p["period_event"].to_numpy(float) for s, p in parts.items()}
    out = {}
    for c in range(1, causes + 1):
        y = Surv.from_arrays(cause["train"] == c, time_["train"])
        best = None
        for alpha in defaults.RIDGE_ALPHAS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron").fit(x["train"], y)
            score = wolbers_c(cause["val"], time_["val"], model.predict(x["val"]), c)
            if best is None or score > best[0]:
                best = (score, model)
        risk = best[1].predict(x["test"])
        out[f"c{c}"] = wolbers_c(cause["test"], time_["test"], risk, c)
    return out


def run_nervus(csv: Path, run_dir: Path, overrides: Sequence[str], old: Path | None) -> dict:
    command = defaults.nervus_command(csv, "survival", run_dir, ["task.model=deephit", *overrides])
    env = dict(os.environ)
    if old is not None:
        env["PYTHONPATH"] = str(old / "src")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"nervus run failed (exit {done.returncode}) in {run_dir}:\n{tail}")
    metrics = pd.read_csv(run_dir / "evaluation" / "metrics.csv")
    metrics = metrics[metrics["group"] == "all"].set_index(["split", "metric"])["value"]
    predictions = pd.read_csv(run_dir / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    out: dict = {"seconds": seconds}
    causes = int(predictions["label_event"].max())
    for c in range(1, causes + 1):
        value = float(metrics[("test", f"c_index_cause{c}")])
        check = wolbers_c(
            test["label_event"].to_numpy(int),
            test["period_event"].to_numpy(float),
            test[f"risk_label_event_{c}"].to_numpy(float),
            c,
        )
        if not abs(check - value) <= 1e-6:
            raise RuntimeError(f"{run_dir}: c_index_cause{c} {value} != scikit-survival {check}")
        out[f"c{c}"] = value
        out[f"ipa{c}"] = float(metrics[("test", f"ipa_cause{c}")])
        for split in ("train", "test"):
            predicted = metrics[(split, f"cif_predicted_cause{c}")]
            observed = metrics[(split, f"cif_observed_cause{c}")]
            out[f"cal{c}_{split}"] = float(predicted / observed) if observed > 0 else np.nan
    return out


def _mean_sd(values: Sequence[float]) -> str:
    return defaults._mean_sd(np.asarray(values, dtype=float))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5, help="split seeds 0..N-1 (default 5)")
    parser.add_argument("--old", type=Path, help="a checkout whose src/ runs beside this one")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides of the runs")
    parser.add_argument("--work", type=Path, help="CSVs and run folders (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="per-run rows (CSV)")
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="CSV[:METHOD=NAME,...]",
        help="only print the table of --out files, renaming their methods (Cox from the first)",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        print(table(combined(args.summarize)))
        return 0
    args.work = args.work or Path(tempfile.mkdtemp(prefix="nervus_competing_"))
    versions = {"new": None} if args.old is None else {"old": args.old, "new": None}
    rows = []
    for name in args.datasets:
        for seed in range(args.seeds):
            csv = args.work / f"{name}_{seed}.csv"
            frame = write_csv(name, seed, csv)
            causes = int(frame["label_event"].max())
            rows.append({"dataset": name, "seed": seed, "method": "cox", **cause_specific_cox(
                frame, causes)})  # fmt: skip
            for version, old in versions.items():
                run_dir = args.work / f"{name}_{seed}_{version}"
                scores = run_nervus(csv, run_dir, args.override, old)
                rows.append({"dataset": name, "seed": seed, "method": version, **scores})
                print(name, seed, version, {k: round(v, 3) for k, v in scores.items()}, flush=True)
    runs = pd.DataFrame(rows)
    if args.out:
        runs.to_csv(args.out, index=False)
    print(table(runs))
    return 0


def combined(specs: Sequence[str]) -> pd.DataFrame:
    """The runs of several ``--out`` files, ``path:old=before,new=after`` renaming methods;
    the cause-specific Cox rows of the first file only (every file fits the same ones)."""
    parts = []
    for k, spec in enumerate(specs):
        path, _, renames = spec.partition(":")
        runs = pd.read_csv(path)
        names = dict(pair.split("=", 1) for pair in renames.split(",") if pair)
        runs["method"] = runs["method"].replace(names)
        parts.append(runs if k == 0 else runs[runs["method"] != "cox"])
    return pd.concat(parts, ignore_index=True)


def table(runs: pd.DataFrame) -> str:
    """Mean ± sd over seeds per data set, cause and method; nervus minus Cox paired."""
    lines = [
        "| data set | cause | method | test Wolbers C | − cause-specific Cox (paired) | test IPA "
        "| predicted / observed CIF, train | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, sets in runs.groupby("dataset", sort=False):
        cox = sets[sets["method"] == "cox"].set_index("seed")
        causes = sorted(int(k[1:]) for k in sets.columns if k[:1] == "c" and k[1:].isdigit())
        for c in causes:
            if cox[f"c{c}"].isna().all():
                continue
            lines.append(
                f"| {name} | {c} | cause-specific Cox | {_mean_sd(cox[f'c{c}'])} | | | | |"
            )
            for method in [m for m in sets["method"].unique() if m != "cox"]:
                own = sets[sets["method"] == method].set_index("seed")
                gap = own[f"c{c}"] - cox[f"c{c}"]
                lines.append(
                    f"| {name} | {c} | nervus ({method}) | {_mean_sd(own[f'c{c}'])} | "
                    f"{gap.mean():+.3f} ± {gap.std(ddof=1):.3f} | {_mean_sd(own[f'ipa{c}'])} | "
                    f"{_mean_sd(own[f'cal{c}_train'])} | {_mean_sd(own[f'cal{c}_test'])} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
