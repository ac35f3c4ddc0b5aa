"""Compare nervus_lightning's survival models with scikit-survival baselines on survival data.

Data sets: the three presets (``whas500``, ``gbsg2``, ``flchain``; see
:mod:`nervus_lightning.survival.presets`) and ``crossing``, a simulated set where the hazards of
two groups cross (proportional hazards broken; :func:`crossing_frame` gives the formula). For each
data set and each seed ``s`` the CSV is written with split seed ``s`` (a different stratified
60/20/20 train/val/test split per seed; the simulated rows themselves are drawn once) and every
model is fitted on exactly the same training rows and scored on exactly the same test rows:

* ``deepsurv``: ``nervus_lightning.workflows.train.train`` with ``data=<preset>
  data.split_seed=s seed=s`` (tabular MLP only, Cox partial likelihood). Its hyperparameters
  come from the preset YAML; the validation split is used only for choosing the
  best-``val_loss`` checkpoint. On ``crossing`` the same recipe is passed as overrides
  (:data:`PRESET_RECIPE`).
* ``logistic_hazard``, ``pmf``, ``deephit``: the same runs with ``task.model=<method>``
  (discrete-time models on pycox, ``task.num_durations=20``), nothing else changed.
* ``coxph``: ``sksurv.linear_model.CoxPHSurvivalAnalysis`` (Efron ties) on the training rows
  only, the same rows DeepSurv fits on, inputs standardised with training mean/sd. A small
  ridge penalty ``alpha`` (default 1e-4) keeps the Newton steps finite when a one-hot level is
  rare; it barely moves the estimates.
* ``rsf``: ``sksurv.ensemble.RandomSurvivalForest`` (200 trees, ``min_samples_leaf=15``,
  ``max_features="sqrt"``, ``random_state=s``), training rows only, no tuning.

Scores on the test rows (:func:`score`), each computed here the same way for every model:

* ``c_index``: Harrell's C of the risk scores, ``sksurv.metrics.concordance_index_censored``
  (nervus runs: checked against the ``c_index`` of their ``metrics.json``).
* ``c_index_antolini``: Antolini's time-dependent C of the survival *curves*, pycox's
  ``EvalSurv(...).concordance_td("antolini")``, curves evaluated at every distinct training time.
* ``ibs``: scikit-survival's ``integrated_brier_score`` (censoring Kaplan-Meier of the test
  rows themselves, ``survival_train`` = the test rows, as the library weighs) on the library's
  IBS grid (50 times between the 10th and 90th percentiles of the training
  times, kept inside the test follow-up; :func:`~nervus_lightning.survival.metrics.ibs_time_grid`).
  Lower is better.

The curves: the discrete-time models' own (``surv_<label>_grid<k>`` of ``predictions.csv``,
interpolated as the library does); Cox models (DeepSurv, ``coxph``): Breslow's estimator
(``sksurv.linear_model.coxph.BreslowEstimator``) fitted on the training rows' risk scores; RSF:
its own ``predict_survival_function``. For the discrete models the ``ibs`` is also checked
against the one of their ``metrics.json``.

``--recipe defaults`` trains the nervus models with the defaults a user gets on their own CSV
instead of the presets' tuned settings: ``data.csv=<the data set's CSV> task=survival
model/extractor=none`` and nothing else (``task.model=<method>`` for the discrete models); the
CSV, the split and the seed are the same as above. Its per-seed values go to
``benchmarks/results/survival_defaults.csv``.

``--evaluate val`` scores the validation split instead of the test split. It is the only mode
used to choose DeepSurv's hyperparameters (``--override`` passes Hydra overrides to every
nervus run), so the test split never influences a choice.

Output: a table of mean ± sd over seeds per data set and method, and the per-seed values in a
CSV (default ``benchmarks/results/survival.csv``).

Usage::

    python benchmarks/survival.py                               # 4 data sets x 5 seeds
    python benchmarks/survival.py --datasets whas500 --seeds 0 1 --quick
    python benchmarks/survival.py --evaluate val --override model.tabular.dropout=0.3 \\
        --csv /tmp/val.csv                                      # tuning, validation only
    python benchmarks/survival.py --recipe defaults --methods deepsurv coxph \\
        --datasets whas500 gbsg2 flchain                        # a user's defaults
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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.util import Surv

from nervus_lightning.data.sources import materialize_preset
from nervus_lightning.survival import discrete
from nervus_lightning.survival.metrics import ibs_time_grid
from nervus_lightning.survival.presets import PRESETS, _stratified_split, preset_endpoint
from nervus_lightning.survival.reference import SurvivalReference

#: nervus_lightning methods and their ``task.model``.
NERVUS = {
    "deepsurv": "cox",
    "logistic_hazard": "logistic_hazard",
    "pmf": "pmf",
    "deephit": "deephit",
}
METHODS = (*NERVUS, "coxph", "rsf")
SIMULATED = ("crossing",)
DATASETS = (*PRESETS, *SIMULATED)
SCORES = ("c_index", "c_index_antolini", "ibs")
DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "survival.csv"
#: How the nervus models are configured: the presets' tuned settings, or a user's defaults.
RECIPES = ("preset", "defaults")
DEFAULTS_CSV = DEFAULT_CSV.with_name("survival_defaults.csv")
#: The command a user runs on their own tabular survival CSV, after ``data.csv=...``.
USER_DEFAULTS = ("task=survival", "model/extractor=none")
# A quick run only checks that everything is wired; its numbers mean nothing.
QUICK_OVERRIDES = ("trainer.max_epochs=2",)
#: The presets' training recipe (conf/data/whas500.yaml), for the simulated CSV.
PRESET_RECIPE = (
    "task=survival",
    "model/extractor=none",
    "optimizer=adamw",
    "data.batch_size=4096",
    "model.tabular.hidden=[32]",
    "model.tabular.dropout=0.3",
    "model.tabular.norm=none",
    "model.tabular.linear=false",
    "optimizer.lr=1.0e-2",
    "optimizer.weight_decay=1.0e-3",
    "trainer.max_epochs=150",
)
#: Rows of the simulated set; they are drawn once (this seed), only the split changes per seed.
CROSSING_N = 1000
CROSSING_SEED = 2026

#: A survival function of the scored rows: ``times -> (n_rows, len(times))``.
Curves = Callable[[np.ndarray], np.ndarray]


def crossing_frame(split_seed: int, n: int = CROSSING_N) -> pd.DataFrame:
    r"""Simulated data where the two groups' hazards cross (proportional hazards broken).

    Covariates: ``group`` ~ Bernoulli(0.5), ``z`` ~ N(0, 1) and four noise covariates
    ``noise1..4`` ~ N(0, 1) that do not enter the outcome. Event time: Weibull with a
    group-dependent shape,

    .. math:: S(t \mid g, z) = \exp\{-(t\, e^{z/2})^{k_g}\},\quad k_0 = 0.5,\ k_1 = 3,

    i.e. ``T = exp(-z/2) * E ** (1 / k_g)``, ``E`` ~ Exp(1): group 0 has a falling hazard
    (early events), group 1 a rising one; for the same ``z`` their survival curves cross at
    ``t = exp(-z/2)`` (where ``S = 1/e``), so no single hazard ratio describes ``group``.
    Within a group ``z`` acts proportionally. Censoring: ``C`` ~ Uniform(0, 3), independent;
    observed time ``min(T, C)``, event ``T <= C``. Split: stratified 60/20/20 by event with
    ``split_seed`` (as the presets).
    """
    rng = np.random.default_rng(CROSSING_SEED)
    group = rng.integers(0, 2, n)
    z = rng.standard_normal(n)
    noise = rng.standard_normal((n, 4))
    shape = np.where(group == 1, 3.0, 0.5)
    event_time = np.exp(-z / 2) * rng.exponential(1.0, n) ** (1 / shape)
    censor_time = rng.uniform(0, 3, n)
    event = event_time <= censor_time
    frame = pd.DataFrame({"uniqID": [f"crossing_{i:04d}" for i in range(n)]})
    frame["input_group"] = group.astype(float)
    frame["input_z"] = z
    for k in range(4):
        frame[f"input_noise{k + 1}"] = noise[:, k]
    frame["label_death"] = event.astype(int)
    frame["period_death"] = np.minimum(event_time, censor_time)
    frame["split"] = _stratified_split(event, split_seed).astype(str)
    return frame


def endpoint_of(dataset: str) -> str:
    return "death" if dataset in SIMULATED else preset_endpoint(dataset)


def harrell_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event)."""
    return float(concordance_index_censored(event.astype(bool), time.astype(float), risk)[0])


def _outcome(frame: pd.DataFrame, endpoint: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        frame[f"label_{endpoint}"].to_numpy().astype(bool),
        frame[f"period_{endpoint}"].to_numpy(float),
    )


def score(
    train: pd.DataFrame, rows: pd.DataFrame, endpoint: str, risk: np.ndarray, curves: Curves
) -> dict[str, float]:
    """Harrell's C, Antolini's C and the IBS of one model on ``rows`` (module docstring)."""
    from pycox.evaluation import EvalSurv

    train_event, train_time = _outcome(train, endpoint)
    event, time_ = _outcome(rows, endpoint)
    out = {"c_index": harrell_c(event, time_, risk)}
    times = np.unique(train_time)
    frame = pd.DataFrame(curves(times).T, index=times)
    evaluator = EvalSurv(frame, time_, event.astype(float), censor_surv="km")
    out["c_index_antolini"] = float(evaluator.concordance_td("antolini"))
    # The library's IBS grid (its SurvivalReference needs no risk for that).
    reference = SurvivalReference.fit(train_time, train_event, np.zeros_like(train_time))
    grid = ibs_time_grid(reference, time_)
    # Administrative censoring after the grid (as the library does: no Brier score changes),
    # so that a test time beyond the largest training time does not stop scikit-survival.
    beyond = time_ > grid.max()
    capped = Surv.from_arrays(
        event & ~beyond, np.where(beyond, min(time_.max(), reference.max_time), time_)
    )
    out["ibs"] = float(
        integrated_brier_score(Surv.from_arrays(event, time_), capped, curves(grid), grid)
    )
    return out


def _inputs(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("input_")]].to_numpy(float)


def breslow_curves(train: pd.DataFrame, endpoint: str, train_risk, risk) -> Curves:
    """Survival of a Cox model: Breslow's baseline fitted on the training risks."""
    event, time_ = _outcome(train, endpoint)
    breslow = BreslowEstimator().fit(np.asarray(train_risk, float), event, time_)
    steps = breslow.cum_baseline_hazard_

    def curves(times: np.ndarray) -> np.ndarray:
        index = np.searchsorted(steps.x, times, side="right") - 1
        cumhaz = np.where(index >= 0, steps.y[np.clip(index, 0, None)], 0.0)
        return np.exp(-np.outer(np.exp(np.asarray(risk, float)), cumhaz))

    return curves


def fit_coxph(train: pd.DataFrame, rows: pd.DataFrame, endpoint: str, alpha: float) -> dict:
    """Linear Cox on standardised training inputs, scored on ``rows``."""
    scaler = StandardScaler().fit(_inputs(train))
    x_train, x_rows = scaler.transform(_inputs(train)), scaler.transform(_inputs(rows))
    event, time_ = _outcome(train, endpoint)
    model = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron").fit(
        x_train, Surv.from_arrays(event, time_)
    )
    risk = model.predict(x_rows)
    curves = breslow_curves(train, endpoint, model.predict(x_train), risk)
    return score(train, rows, endpoint, risk, curves)


def fit_rsf(train: pd.DataFrame, rows: pd.DataFrame, endpoint: str, seed: int) -> dict:
    """Random survival forest on the training rows, scored on ``rows``."""
    event, time_ = _outcome(train, endpoint)
    forest = RandomSurvivalForest(
        n_estimators=200,
        min_samples_leaf=15,
        max_features="sqrt",
        n_jobs=2,
        random_state=seed,
        low_memory=False,
    ).fit(_inputs(train), Surv.from_arrays(event, time_))
    x_rows = _inputs(rows)
    steps = forest.predict_survival_function(x_rows, return_array=True)

    def curves(times: np.ndarray) -> np.ndarray:
        index = np.searchsorted(forest.unique_times_, times, side="right") - 1
        return np.where(index >= 0, steps[:, np.clip(index, 0, None)], 1.0)

    return score(train, rows, endpoint, forest.predict(x_rows), curves)


def fit_nervus(
    dataset: str,
    csv: Path,
    seed: int,
    method: str,
    split: str,
    overrides: Sequence[str],
    run_dir: Path,
    recipe: str = "preset",
) -> dict:
    """Train through the library's recipe (``task.model`` of ``method``); scores on ``split``.

    ``recipe``: ``preset`` (the presets' tuned settings) or ``defaults`` (a user's command on the
    same CSV, :data:`USER_DEFAULTS`)."""
    from hydra import compose, initialize_config_dir

    from nervus_lightning.cli.overrides import with_csv_data_group
    from nervus_lightning.cli.train import train_settings
    from nervus_lightning.config import config_dir
    from nervus_lightning.workflows.train import train

    if recipe == "defaults":
        data = [f"data.csv={csv}", *USER_DEFAULTS]
    elif dataset in SIMULATED:
        data = [f"data.csv={csv}", *PRESET_RECIPE]  # the split is the CSV's
    else:
        data = [f"data={dataset}", f"data.split_seed={seed}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=with_csv_data_group(
                [
                    *data,
                    f"seed={seed}",
                    f"task.model={NERVUS[method]}",
                    "trainer.enable_progress_bar=false",
                    "trainer.enable_model_summary=false",
                    # The scores are computed here: skip the bootstrap intervals of the report.
                    "evaluation.n_bootstrap=0",
                    *overrides,
                ]
            ),
        )
    # Lightning prints its test-loss table to stdout; keep the benchmark's output to scores
    # (and keep test numbers out of sight in --evaluate val tuning runs).
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        train(train_settings(cfg), run_dir)
    endpoint = endpoint_of(dataset)
    label = f"label_{endpoint}"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    spec = next(
        s for s in json.loads((run_dir / "schema.json").read_text())["labels"] if s["name"] == label
    )
    rows = predictions[predictions["split"] == split]
    train_rows = predictions[predictions["split"] == "train"]
    risk = rows[f"risk_{label}"].to_numpy(float)
    if method == "deepsurv":
        curves = breslow_curves(train_rows, endpoint, train_rows[f"risk_{label}"], risk)
    else:

        def curves(times: np.ndarray) -> np.ndarray:
            return discrete.model_survival(rows, spec, times)

    scores = score(train_rows, rows, endpoint, risk, curves)
    reported = json.loads((run_dir / "metrics.json").read_text())[split][label]
    if not np.isclose(scores["c_index"], reported["c_index"], rtol=0, atol=1e-9):
        raise RuntimeError(f"metrics.json c_index {reported['c_index']} != {scores['c_index']}")
    if method != "deepsurv" and not np.isclose(scores["ibs"], reported["ibs"], atol=1e-9):
        raise RuntimeError(f"metrics.json ibs {reported['ibs']} != {scores['ibs']} ({run_dir})")
    return scores


def dataset_csv(dataset: str, seed: int, folder: Path) -> Path:
    """The data set's CSV with split seed ``seed`` (presets: the library's cache)."""
    if dataset not in SIMULATED:
        return materialize_preset(dataset, seed=seed)
    path = folder / f"{dataset}_split{seed}.csv"
    crossing_frame(seed).to_csv(path, index=False)
    return path


def run_benchmark(
    datasets: Sequence[str] = DATASETS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = METHODS,
    evaluate: str = "test",
    overrides: Sequence[str] = (),
    cox_alpha: float = 1e-4,
    quick: bool = False,
    partial_csv: Path | None = None,
    recipe: str = "preset",
) -> pd.DataFrame:
    """One row per (dataset, seed, method): the :data:`SCORES` on ``evaluate`` and seconds
    (rewritten to ``partial_csv`` after every row, when given)."""
    if evaluate not in ("test", "val"):
        raise ValueError(f"evaluate must be 'test' or 'val', not {evaluate!r}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, not {recipe!r}")
    overrides = [*(QUICK_OVERRIDES if quick else ()), *overrides]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        # Seeds outermost: a run cut short still has every data set for its first seeds.
        for seed in seeds:
            for dataset in datasets:
                endpoint = endpoint_of(dataset)
                csv = dataset_csv(dataset, seed, Path(folder))
                frame = pd.read_csv(csv)
                train_rows = frame[frame["split"] == "train"]
                score_rows = frame[frame["split"] == evaluate]
                for method in methods:
                    start = time.perf_counter()
                    if method == "coxph":
                        scores = fit_coxph(train_rows, score_rows, endpoint, cox_alpha)
                    elif method == "rsf":
                        scores = fit_rsf(train_rows, score_rows, endpoint, seed)
                    elif method in NERVUS:
                        with tempfile.TemporaryDirectory() as run_dir:
                            scores = fit_nervus(
                                dataset,
                                csv,
                                seed,
                                method,
                                evaluate,
                                overrides,
                                Path(run_dir),
                                recipe,
                            )
                    else:
                        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
                    rows.append(
                        {
                            "dataset": dataset,
                            "seed": seed,
                            "method": method,
                            "split": evaluate,
                            "recipe": recipe,
                            **scores,
                            "seconds": time.perf_counter() - start,
                        }
                    )
                    print(
                        f"{dataset:8s} seed {seed} {method:15s} {evaluate} "
                        + " ".join(f"{k} {scores[k]:.4f}" for k in SCORES),
                        flush=True,
                    )
                    if partial_csv is not None:
                        pd.DataFrame(rows).to_csv(partial_csv, index=False, float_format="%.6f")
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd over seeds of every score, per data set and method."""
    table = []
    for (dataset, method), group in results.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "n_seeds": len(group)}
        for key in SCORES:
            if key not in group:
                continue
            values = group[key].dropna().tolist()
            row[f"{key}_mean"] = statistics.fmean(values) if values else float("nan")
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        table.append(row)
    return pd.DataFrame(table)


def format_table(summary: pd.DataFrame, split: str) -> str:
    """Markdown table: data set, method, each score's mean ± sd, seeds."""
    keys = [k for k in SCORES if f"{k}_mean" in summary]
    names = {"c_index": "Harrell C", "c_index_antolini": "Antolini C", "ibs": "IBS (lower better)"}
    lines = [
        f"| data set | method | {' | '.join(f'{split} {names[k]}' for k in keys)} | seeds |",
        "|---|---|" + "---|" * len(keys) + "---|",
    ]
    for row in summary.to_dict("records"):
        cells = [f"{row[f'{k}_mean']:.3f} ± {row[f'{k}_sd']:.3f}" for k in keys]
        lines.append(
            f"| {row['dataset']} | {row['method']} | {' | '.join(cells)} | {row['n_seeds']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--evaluate", choices=("test", "val"), default="test")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default="preset",
        help="nervus settings: the presets' tuned ones, or a user's defaults on the same CSV",
    )
    parser.add_argument(
        "--override", action="append", default=[], help="Hydra override for every nervus run"
    )
    parser.add_argument("--cox-alpha", type=float, default=1e-4)
    parser.add_argument("--quick", action="store_true", help="2 epochs: a wiring check only")
    parser.add_argument(
        "--csv",
        type=Path,
        help=f"per-seed results (default {DEFAULT_CSV.name}, "
        f"{DEFAULTS_CSV.name} with --recipe defaults)",
    )
    parser.add_argument(
        "--summarize", type=Path, nargs="+", help="only print the table of these per-seed CSVs"
    )
    args = parser.parse_args(argv)
    if args.csv is None:
        args.csv = DEFAULTS_CSV if args.recipe == "defaults" else DEFAULT_CSV
    if args.summarize:
        results = pd.concat([pd.read_csv(p) for p in args.summarize], ignore_index=True)
        print(format_table(summarize(results), results["split"].iloc[0]))
        return results

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    start = time.perf_counter()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(
        args.datasets,
        args.seeds,
        args.methods,
        evaluate=args.evaluate,
        overrides=args.override,
        cox_alpha=args.cox_alpha,
        quick=args.quick,
        partial_csv=args.csv,
        recipe=args.recipe,
    )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.csv, index=False, float_format="%.6f")
    print()
    print(format_table(summarize(results), args.evaluate))
    print(f"\nper-seed values: {args.csv}; total {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
