"""The user's command with nervus_lightning's defaults against the textbook models (issue 19).

For every data set and split seed ``s`` (``--seeds N``: seeds 0..N-1) the rows are split 60/20/20
into train/val/test (stratified by the event indicator for survival, by class for
classification, at random for regression; :func:`split_rows`), written as a Nervus CSV
(:func:`write_nervus_csv`) and then

1. **nervus**: the command a user types, and nothing else, run as a subprocess and timed::

       python -m nervus_lightning data.csv=CSV task=<task> model/extractor=none \\
           hydra.run.dir=RUN evaluation.n_bootstrap=0 trainer.enable_progress_bar=false

   Its test scores are read from ``RUN/evaluation/metrics.csv`` (split ``test``, group
   ``all``): survival ``c_index`` (Harrell's), ``ibs``, ``ibs_null`` (the Kaplan-Meier curve's)
   and ``ipa`` = 1 - ibs / ibs_null, all on the library's own IBS grid; and ``ipa_km``
   (:func:`nervus_ipa_against_full_km`), the same run's test IPA scored as the baselines' are
   (their grid, the training Kaplan-Meier curve at every event time), which a reader scoring
   the predictions with scikit-survival would find; classification ``auroc``
   (binary; multi-class: the macro one-vs-rest ``auroc`` of the evaluation, checked below
   against scikit-learn); regression ``r2``. ``RUN/model_summary.json`` gives the penalty of the
   linear start, the epochs run and the epoch kept; the run's warnings are the log's
   ``WARNING`` lines, the evaluation's checks among them
   (:func:`nervus_lightning.evaluation.diagnostics.run_warnings`).

2. **baselines** on the same rows, inputs standardised with the training mean and sd:

   * survival: ``coxnet`` = scikit-survival's ``CoxnetSurvivalAnalysis(l1_ratio=0.5,
     fit_baseline_model=True)`` fitted on train along its own alpha path, the alpha kept being
     the one with the highest Harrell's C on the validation rows; ``coxph`` =
     ``CoxPHSurvivalAnalysis`` (Efron ties) with its ridge ``alpha`` chosen the same way from
     :data:`RIDGE_ALPHAS`; ``rsf`` = ``RandomSurvivalForest(n_estimators=200,
     min_samples_leaf=15, random_state=s, n_jobs=2)`` on train, not tuned.
   * classification: ``logistic`` = ``LogisticRegressionCV`` (ridge, 5-fold CV on train),
     ``logistic_enet`` = the same with the elastic net (``l1_ratios=(0.5,)``, saga),
     ``hgb`` = ``HistGradientBoostingClassifier(random_state=s)``.
   * regression: ``ridge`` = ``RidgeCV`` (efficient leave-one-out on train), ``enet`` =
     ``ElasticNetCV(l1_ratio=0.5)`` (5-fold CV on train), ``hgb`` =
     ``HistGradientBoostingRegressor(random_state=s)``.

   Test scores with the libraries' own functions: ``concordance_index_censored``,
   ``roc_auc_score`` (multi-class: ``multi_class="ovr", average="macro"``), ``r2_score``. The
   baselines' IBS is scikit-survival's ``integrated_brier_score`` (censoring distribution from
   the training rows) on :func:`ibs_grid` (50 times between the 10th and 90th percentiles of the
   training times, inside the test follow-up), and their IPA is 1 - IBS / IBS of the training
   Kaplan-Meier curve on the same grid. The nervus IPA comes from its own metrics.csv and its
   own grid, so the table compares IPAs, each against its own Kaplan-Meier reference, not IBSs.

The **better linear baseline** of a data set is the linear model (``coxnet`` or ``coxph``;
``logistic``; ``ridge``) with the higher mean test metric; the **paired difference** is nervus
minus that model on each seed (mean ± sd over seeds). The **target** (issue 19) holds when

* C-index, AUROC: nervus mean >= better linear mean - 0.005; R^2: >= better linear - 0.01;
* survival, in addition: the nervus IPA >= 0 on every seed (its IBS never above Kaplan-Meier's),
  both the library's ``ipa`` and ``ipa_km``;
* simulated data with a nonlinear effect or an interaction (:data:`NONLINEAR`): the mean paired
  difference is positive and larger than its sd over seeds.

Data sets (:data:`DATASETS`): every tabular set shipped inside scikit-learn and scikit-survival,
nothing downloaded, plus eight simulations (:func:`sim_highdim`, :func:`sim_nonlinear`,
:func:`sim_interaction`, :func:`sim_regression`, and more inputs than training rows or a
nonlinear class for the other heads: :func:`sim_classification_highdim`,
:func:`sim_regression_highdim`, :func:`sim_classification_nonlinear`, and a rare class,
:func:`sim_classification_rare`; each docstring gives its
formula; the rows are
drawn once from :data:`SIMULATION_SEED`, only the split changes with the seed). With
``--unseen`` (or named in ``--datasets``), eight sets on which no default was chosen, shipped in
lifelines (``rossi``, ``lung``, ``kidney_transplant``, ``larynx``, ``democracy_duration``) and
statsmodels (``fair``, ``anes96``, ``star98``): ``pip install lifelines statsmodels``. Encoding
(:func:`nervus_lightning.survival.presets.encode_inputs`, shared with the survival presets):
numbers copied, categoricals one-hot with the first level dropped, and a missing number
(only ``flchain``'s ``creatinine``) replaced by the training median with an
``input_<name>_missing`` 1/0 column, since the project refuses NaN inputs. ``flchain``'s
``chapter`` (cause of death, known only for the dead) is dropped. Skipped, with the reason
printed: :data:`SKIPPED`.

Output: one markdown table per task kind, printed and written to ``--out`` (default
``benchmarks/results/defaults.md``), and one row per (data set, seed, model) in
``defaults_runs.csv`` next to it (rewritten after every data set, so a run cut short keeps what
it measured).

Usage::

    python benchmarks/defaults.py                                   # every set but flchain, 5 seeds
    python benchmarks/defaults.py --large                           # flchain too
    python benchmarks/defaults.py --unseen                          # lifelines', statsmodels' sets
    python benchmarks/defaults.py --datasets breast_cancer diabetes --seeds 2
    python benchmarks/defaults.py --quick --datasets iris veterans_lung_cancer   # smoke test
    python benchmarks/defaults.py --override trainer.max_epochs=300   # try a candidate default
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nervus_lightning.survival.presets import encode_inputs

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "defaults.md"
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SIMULATION_SEED = 2026
#: Ridge penalties of the ``coxph`` baseline, chosen on the validation rows.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 3, 11))
#: ``--quick``: one seed, two epochs; only checks the wiring, its numbers mean nothing.
QUICK_OVERRIDES = ("trainer.max_epochs=2",)
#: Seconds one nervus run may take before it counts as failed.
RUN_TIMEOUT = 3600
LINEAR = {
    "survival": ("coxnet", "coxph"),
    "classification": ("logistic", "logistic_enet"),
    "regression": ("ridge", "enet"),
}
BASELINES = {
    "survival": ("coxnet", "coxph", "rsf"),
    "classification": ("logistic", "logistic_enet", "hgb"),
    "regression": ("ridge", "enet", "hgb"),
}
METRIC = {"survival": "c_index", "classification": "auroc", "regression": "r2"}
#: How far below the better linear baseline the nervus mean may be (issue 19's target).
MARGIN = {"c_index": 0.005, "auroc": 0.005, "r2": 0.01}


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A data set before encoding: features, and the outcome (survival: event and time)."""

    task: str
    features: pd.DataFrame
    target: np.ndarray
    time: np.ndarray | None = None
    note: str = ""


def _sklearn(loader: str) -> Callable[[], Raw]:
    def load() -> Raw:
        from sklearn import datasets

        bunch = getattr(datasets, loader)(as_frame=True)
        task = "regression" if loader == "load_diabetes" else "classification"
        return Raw(task, bunch.data, bunch.target.to_numpy())

    return load


def _sksurv(loader: str, drop: tuple[str, ...] = ()) -> Callable[[], Raw]:
    def load() -> Raw:
        from sksurv import datasets

        features, outcome = getattr(datasets, loader)()
        event_field, time_field = outcome.dtype.names
        return Raw(
            "survival",
            features.drop(columns=list(drop)),
            np.asarray(outcome[event_field], bool),
            np.asarray(outcome[time_field], float),
        )

    return load


def _simulated_survival(
    n: int, p: int, log_hazard: Callable[[np.ndarray], np.ndarray], censor_mean: float
) -> Raw:
    """``x`` ~ N(0, I_p); T = E / exp(log_hazard(x)), E ~ Exp(1) (an exponential model);
    C ~ Exp(mean ``censor_mean``), independent; observed min(T, C), event T <= C."""
    rng = np.random.default_rng(SIMULATION_SEED)
    x = rng.standard_normal((n, p))
    event_time = rng.exponential(1.0, n) / np.exp(log_hazard(x))
    censor_time = rng.exponential(censor_mean, n)
    features = pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(p)])
    return Raw("survival", features, event_time <= censor_time, np.minimum(event_time, censor_time))


def sim_highdim() -> Raw:
    r"""Inputs outnumbering events: 150 rows, 60 inputs ``x1..x60`` ~ N(0, 1), five informative,

    .. math:: \log h(t \mid x) = 0.6\,(x_1 + x_2 + x_3 - x_4 - x_5),

    exponential event times, censoring ~ Exp(mean 1): about half the rows have the event, so the
    90 training rows hold about 45 events for 60 inputs (no finite unpenalised Cox fit).
    """
    return _simulated_survival(
        150, 60, lambda x: 0.6 * (x[:, 0] + x[:, 1] + x[:, 2] - x[:, 3] - x[:, 4]), 1.0
    )


def sim_nonlinear() -> Raw:
    r"""A U-shaped effect: 1,000 rows, 6 inputs ~ N(0, 1),

    .. math:: \log h(t \mid x) = x_1^2 - 1 + 0.5\,x_2,

    ``x3..x6`` noise; exponential event times, censoring ~ Exp(mean 2). A linear Cox model sees
    only ``x2`` (the quadratic has no linear part), so its C-index stays near 0.6.
    """
    return _simulated_survival(1000, 6, lambda x: x[:, 0] ** 2 - 1 + 0.5 * x[:, 1], 2.0)


def sim_interaction() -> Raw:
    r"""An interaction: 1,000 rows, 6 inputs ~ N(0, 1),

    .. math:: \log h(t \mid x) = 1.2\,x_1 x_2 + 0.5\,x_3,

    ``x4..x6`` noise; exponential event times, censoring ~ Exp(mean 2). Neither ``x1`` nor
    ``x2`` has a main effect, so a linear Cox model sees only ``x3``.
    """
    return _simulated_survival(1000, 6, lambda x: 1.2 * x[:, 0] * x[:, 1] + 0.5 * x[:, 2], 2.0)


def sim_regression() -> Raw:
    r"""Nonlinear regression: 1,000 rows, 8 inputs ~ Uniform(-2, 2),

    .. math:: y = 2 \sin(2 x_1) + x_2^2 + 0.5\,x_3 + \varepsilon,\quad \varepsilon \sim N(0, 0.5^2),

    ``x4..x8`` noise. Ridge regression explains only the ``0.5 x3`` part (R^2 about 0.1, plus the
    small linear part of the sine); the noise caps R^2 near 0.95.
    """
    rng = np.random.default_rng(SIMULATION_SEED)
    x = rng.uniform(-2, 2, (1000, 8))
    y = 2 * np.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.5 * x[:, 2] + rng.normal(0, 0.5, 1000)
    return Raw("regression", pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(8)]), y)


def _highdim_inputs(n: int = 150, p: int = 100) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``x`` ~ N(0, I_p) and the linear score ``0.8 (x1 + x2 + x3 - x4 - x5)``: more inputs (100)
    than training rows (90 of 150)."""
    rng = np.random.default_rng(SIMULATION_SEED)
    x = rng.standard_normal((n, p))
    score = 0.8 * (x[:, 0] + x[:, 1] + x[:, 2] - x[:, 3] - x[:, 4])
    return rng.random(n), score, pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(p)])


def sim_classification_highdim() -> Raw:
    r"""A binary class from 5 of 100 inputs, 150 rows: 90 training rows for 100 inputs,

    .. math:: P(y = 1 \mid x) = \operatorname{logit}^{-1}(0.8\,(x_1 + x_2 + x_3 - x_4 - x_5)),

    so no unpenalised logistic fit exists; a penalised one finds the five.
    """
    uniform, score, features = _highdim_inputs()
    return Raw("classification", features, (uniform < 1 / (1 + np.exp(-score))).astype(int))


def sim_regression_highdim() -> Raw:
    r"""A continuous outcome from 5 of 100 inputs, 150 rows,

    .. math:: y = 0.8\,(x_1 + x_2 + x_3 - x_4 - x_5) + \varepsilon,
              \quad \varepsilon \sim N(0, 1.5^2),

    R^2 about 0.59 at best (3.2 / (3.2 + 2.25)); least squares has no unique fit on 90 rows.
    """
    uniform, score, features = _highdim_inputs()
    noise = np.random.default_rng(SIMULATION_SEED + 1).normal(0, 1.5, len(score))
    return Raw("regression", features, score + noise)


def sim_classification_nonlinear() -> Raw:
    r"""A class from a ring and an interaction, 1,000 rows, 6 inputs ~ N(0, 1),

    .. math:: P(y = 1 \mid x) = \operatorname{logit}^{-1}(2\,(x_1^2 + x_2^2 - 1.4) + 2\,x_3 x_4),

    ``x5, x6`` noise: neither term has a linear part, so logistic regression stays near 0.5.
    """
    rng = np.random.default_rng(SIMULATION_SEED)
    x = rng.standard_normal((1000, 6))
    score = 2 * (x[:, 0] ** 2 + x[:, 1] ** 2 - 1.4) + 2 * x[:, 2] * x[:, 3]
    label = (rng.random(1000) < 1 / (1 + np.exp(-score))).astype(int)
    return Raw("classification", pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(6)]), label)


def sim_classification_rare() -> Raw:
    r"""A rare finding: about 6 % positives in 600 rows, 20 inputs ~ N(0, 1),

    .. math:: P(y = 1 \mid x) = \operatorname{logit}^{-1}(-3.6 + 0.9\,(x_1 + x_2 - x_3)),

    ``x4`` to ``x20`` noise. The stratified split leaves about 7 positives in the 120 validation
    rows, fewer than the 10 per class below which the classification start holds out the folds
    of train (``MIN_VAL_PER_CLASS``): the branch a rare disease takes.
    """
    rng = np.random.default_rng(SIMULATION_SEED)
    x = rng.standard_normal((600, 20))
    score = -3.6 + 0.9 * (x[:, 0] + x[:, 1] - x[:, 2])
    label = (rng.random(600) < 1 / (1 + np.exp(-score))).astype(int)
    return Raw("classification", pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(20)]), label)


def _lifelines(
    loader: str, event: str, time: str, drop: tuple[str, ...] = (), dead: int = 1
) -> Callable[[], Raw]:
    """A survival set shipped inside lifelines (``pip install lifelines``): ``event == dead``
    is the event, ``drop`` names identifiers and other columns that are not inputs."""

    def load() -> Raw:
        from lifelines import datasets

        frame = getattr(datasets, loader)()
        return Raw(
            "survival",
            frame.drop(columns=[event, time, *drop]),
            frame[event].to_numpy() == dead,
            frame[time].to_numpy(float),
        )

    return load


def statsmodels_fair() -> Raw:
    """statsmodels ``fair`` (6,366 rows, 8 inputs): any extramarital affair (32 %)."""
    from statsmodels.datasets import fair

    frame = fair.load_pandas().data
    return Raw("classification", frame.drop(columns="affairs"), (frame.affairs > 0).to_numpy(int))


def statsmodels_anes96() -> Raw:
    """statsmodels ``anes96`` (944 rows, 9 inputs): the 1996 vote, Clinton 0 / Dole 1 (42 %);
    ``popul`` dropped beside its logarithm."""
    from statsmodels.datasets import anes96

    frame = anes96.load_pandas().data
    return Raw("classification", frame.drop(columns=["vote", "popul"]), frame.vote.to_numpy(int))


def statsmodels_star98() -> Raw:
    """statsmodels ``star98`` (303 school districts, 20 inputs): the share of pupils above the
    national maths median, ``NABOVE / (NABOVE + NBELOW)``."""
    from statsmodels.datasets import star98

    frame = star98.load_pandas().data
    share = frame.NABOVE / (frame.NABOVE + frame.NBELOW)
    return Raw("regression", frame.drop(columns=["NABOVE", "NBELOW"]), share.to_numpy(float))


@dataclass(frozen=True)
class Dataset:
    load: Callable[[], Raw]
    large: bool = False
    #: The package that ships it when it is neither scikit-learn nor scikit-survival: such a
    #: set is run when named in ``--datasets`` or with ``--unseen`` (the package installed).
    package: str = ""


DATASETS: dict[str, Dataset] = {
    "breast_cancer": Dataset(_sklearn("load_breast_cancer")),
    "wine": Dataset(_sklearn("load_wine")),
    "iris": Dataset(_sklearn("load_iris")),
    "digits": Dataset(_sklearn("load_digits")),
    "diabetes": Dataset(_sklearn("load_diabetes")),
    "whas500": Dataset(_sksurv("load_whas500")),
    "gbsg2": Dataset(_sksurv("load_gbsg2")),
    "veterans_lung_cancer": Dataset(_sksurv("load_veterans_lung_cancer")),
    "aids": Dataset(_sksurv("load_aids")),
    "sksurv_breast_cancer": Dataset(_sksurv("load_breast_cancer")),
    "flchain": Dataset(_sksurv("load_flchain", drop=("chapter",)), large=True),
    "sim_highdim": Dataset(sim_highdim),
    "sim_nonlinear": Dataset(sim_nonlinear),
    "sim_interaction": Dataset(sim_interaction),
    "sim_regression": Dataset(sim_regression),
    "sim_classification_highdim": Dataset(sim_classification_highdim),
    "sim_regression_highdim": Dataset(sim_regression_highdim),
    "sim_classification_nonlinear": Dataset(sim_classification_nonlinear),
    "sim_classification_rare": Dataset(sim_classification_rare),
    # Sets no rule of the defaults was chosen on (added 2026-12-07, run once each to check
    # that the defaults generalise): lifelines' and statsmodels' shipped tables.
    "rossi": Dataset(_lifelines("load_rossi", "arrest", "week"), package="lifelines"),
    "lung": Dataset(_lifelines("load_lung", "status", "time", drop=("inst",)), package="lifelines"),
    "kidney_transplant": Dataset(
        _lifelines("load_kidney_transplant", "death", "time"), package="lifelines"
    ),
    "larynx": Dataset(_lifelines("load_larynx", "death", "time"), package="lifelines"),
    "democracy_duration": Dataset(
        _lifelines(
            "load_dd",
            "observed",
            "duration",
            drop=("ctryname", "cowcode2", "politycode", "ehead", "leaderspellreg", "democracy"),
        ),
        package="lifelines",
    ),
    "fair": Dataset(statsmodels_fair, package="statsmodels"),
    "anes96": Dataset(statsmodels_anes96, package="statsmodels"),
    "star98": Dataset(statsmodels_star98, package="statsmodels"),
}
#: Simulated sets whose target is "ahead of the linear baseline beyond the spread over seeds".
NONLINEAR = ("sim_nonlinear", "sim_interaction", "sim_regression", "sim_classification_nonlinear")
SKIPPED = {
    "linnerud": "scikit-learn load_linnerud: 20 rows (3 targets), too few for a 60/20/20 split",
    "bmt": "scikit-survival load_bmt: competing risks, 35 rows and one input",
    "cgvhd": "scikit-survival load_cgvhd: competing risks (benchmarks/competing.py scores it)",
}


def split_rows(task: str, target: np.ndarray, seed: int) -> np.ndarray:
    """60/20/20 train/val/test, stratified by event (survival) or class (classification);
    within each stratum rows are shuffled by ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    strata = np.zeros(len(target), int) if task == "regression" else pd.factorize(target)[0]
    split = np.empty(len(target), dtype=object)
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        n_train = round(SPLIT_FRACTIONS[0] * len(members))
        n_val = round(SPLIT_FRACTIONS[1] * len(members))
        split[members[:n_train]] = "train"
        split[members[n_train : n_train + n_val]] = "val"
        split[members[n_train + n_val :]] = "test"
    return split.astype(str)


def nervus_frame(name: str, raw: Raw, seed: int) -> pd.DataFrame:
    """The data set as a Nervus-format frame: ``uniqID``, ``input_*``, ``label_<y>`` (survival:
    ``label_event`` 1/0 and ``period_event``), ``split``."""
    split = split_rows(raw.task, raw.target, seed)
    features = raw.features.reset_index(drop=True)
    width = len(str(len(features)))
    frame = pd.DataFrame({"uniqID": [f"{name}_{i:0{width}d}" for i in range(len(features))]})
    frame = pd.concat([frame, encode_inputs(features, split == "train")], axis=1)
    if raw.task == "survival":
        frame["label_event"] = raw.target.astype(int)
        frame["period_event"] = raw.time
    elif raw.task == "classification":
        frame["label_class"] = raw.target.astype(int)
    else:
        frame["label_y"] = raw.target.astype(float)
    frame["split"] = split
    return frame


def write_nervus_csv(name: str, seed: int, path: Path, raw: Raw | None = None) -> pd.DataFrame:
    """Write data set ``name`` with split seed ``seed`` as a Nervus CSV at ``path``."""
    frame = nervus_frame(name, raw if raw is not None else DATASETS[name].load(), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


# --------------------------------------------------------------------------------------------
# The nervus run
# --------------------------------------------------------------------------------------------


def nervus_command(csv: Path, task: str, run_dir: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The user's command (module docstring), with ``sys.executable``, then ``overrides``
    (``--quick``, ``--override``)."""
    return [
        sys.executable,
        "-m",
        "nervus_lightning",
        f"data.csv={csv}",
        f"task={task}",
        "model/extractor=none",
        f"hydra.run.dir={run_dir}",
        "evaluation.n_bootstrap=0",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]


def _metric(metrics: pd.DataFrame, label: str, name: str) -> float:
    rows = metrics[
        (metrics["split"] == "test")
        & (metrics["group"] == "all")
        & (metrics["label"] == label)
        & (metrics["metric"] == name)
    ]
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")


def _run_warnings(log: str) -> list[str]:
    """The run's WARNING lines, the evaluation's checks among them
    (:func:`nervus_lightning.evaluation.diagnostics.run_warnings` logs each one)."""
    found = [line.split("] - ", 1)[-1] for line in log.splitlines() if "][WARNING]" in line]
    return list(dict.fromkeys(found))


def library_check(run_dir: Path, task: str, label: str, scores: dict) -> float:
    """The run's main test metric recomputed from its ``predictions.csv`` with the libraries'
    functions (Harrell's C: scikit-survival; AUROC, R^2: scikit-learn); raises when it differs
    from metrics.csv by more than 1e-6, returns the absolute difference."""
    from sklearn.metrics import r2_score

    predictions = pd.read_csv(run_dir / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    if task == "survival":
        rows = Rows(np.empty(0), test[label].to_numpy(int), test[f"period_{label[6:]}"].to_numpy())
        value = harrell_c(rows, test[f"risk_{label}"].to_numpy(float))
    elif task == "classification":
        columns = [c for c in test.columns if c.startswith(f"prob_{label}_")]
        classes = [int(c.rsplit("_", 1)[1]) for c in columns]
        value = auroc(test[label].to_numpy(), test[columns].to_numpy(float), classes)
    else:
        value = float(r2_score(test[label], test[f"pred_{label}"]))
    metric = METRIC[task]
    difference = abs(value - scores[metric])
    if not difference <= 1e-6:
        raise RuntimeError(f"{run_dir}: metrics.csv {metric} {scores[metric]} != {value}")
    return difference


def run_nervus(
    csv: Path, task: str, label: str, run_dir: Path, overrides: Sequence[str] = ()
) -> dict:
    """Run the user's command on ``csv``; its test scores, seconds and what it chose."""
    start = time.perf_counter()
    done = subprocess.run(
        nervus_command(csv, task, run_dir, overrides),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    seconds = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise RuntimeError(f"nervus run failed (exit {done.returncode}) in {run_dir}:\n{tail}")
    metrics = pd.read_csv(run_dir / "evaluation" / "metrics.csv")
    out: dict = {"seconds": seconds}
    names = {
        "survival": ("c_index", "ibs", "ibs_null", "ipa"),
        "classification": ("auroc",),
        "regression": ("r2",),
    }[task]
    for name in names:
        out[name] = _metric(metrics, label, name)
    out["library_check"] = library_check(run_dir, task, label, out)
    summary = json.loads((run_dir / "model_summary.json").read_text())
    choice = (summary.get("linear_start") or {}).get(label) or {}
    out["linear_penalty"] = choice.get("penalty")
    out["linear_l1_ratio"] = choice.get("l1_ratio", 0.0) if choice else None
    out["best_epoch"] = summary.get("best_epoch")
    out["start_kept"] = bool(summary.get("linear_start_kept"))
    epochs = dict(summary.get("rows", [])).get("epochs run", "")
    out["epochs_run"] = int(epochs.split()[0]) if epochs[:1].isdigit() else None
    out["warnings"] = " | ".join(_run_warnings(log))
    return out


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """One split's standardised inputs and outcome."""

    x: np.ndarray
    y: np.ndarray
    time: np.ndarray | None = None

    def surv(self) -> np.ndarray:
        from sksurv.util import Surv

        return Surv.from_arrays(self.y.astype(bool), self.time)


def split_arrays(frame: pd.DataFrame, task: str) -> dict[str, Rows]:
    """train/val/test inputs standardised with the training mean and sd (constant columns
    centred only), and the outcome."""
    inputs = [c for c in frame.columns if c.startswith("input_")]
    train_x = frame.loc[frame["split"] == "train", inputs].to_numpy(float)
    mean, sd = train_x.mean(axis=0), train_x.std(axis=0)
    sd[sd == 0] = 1.0
    out = {}
    for split in ("train", "val", "test"):
        rows = frame[frame["split"] == split]
        x = (rows[inputs].to_numpy(float) - mean) / sd
        if task == "survival":
            out[split] = Rows(x, rows["label_event"].to_numpy(int), rows["period_event"].to_numpy())
        elif task == "classification":
            out[split] = Rows(x, rows["label_class"].to_numpy(int))
        else:
            out[split] = Rows(x, rows["label_y"].to_numpy(float))
    return out


def harrell_c(rows: Rows, risk: np.ndarray) -> float:
    from sksurv.metrics import concordance_index_censored

    return float(concordance_index_censored(rows.y.astype(bool), rows.time, risk)[0])


def ibs_grid(train: Rows, test: Rows, n: int = 50) -> np.ndarray:
    """50 times between the 10th and 90th percentiles of the training times, kept inside the
    test follow-up (at or after its first time, before its last)."""
    low, high = np.percentile(train.time, [10, 90])
    grid = np.linspace(low, high, n)
    return grid[(grid >= test.time.min()) & (grid < test.time.max())]


def ipa_scores(train: Rows, test: Rows, survival: np.ndarray, grid: np.ndarray) -> dict:
    """scikit-survival's IBS of ``survival`` (rows x grid), the training Kaplan-Meier curve's
    on the same grid, and the IPA = 1 - IBS / IBS_KM. Test rows past the training follow-up are
    censored at its end (after the grid, so no Brier score on the grid changes)."""
    from sksurv.metrics import integrated_brier_score
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    if len(grid) < 2:
        return {"ibs": float("nan"), "ibs_null": float("nan"), "ipa": float("nan")}
    last = train.time.max()
    beyond = test.time >= last
    capped = Surv.from_arrays(
        test.y.astype(bool) & ~beyond, np.where(beyond, np.nextafter(last, 0), test.time)
    )
    km_time, km_surv = kaplan_meier_estimator(train.y.astype(bool), train.time)
    at = np.searchsorted(km_time, grid, side="right") - 1
    km = np.where(at >= 0, km_surv[np.clip(at, 0, None)], 1.0)
    ibs = integrated_brier_score(train.surv(), capped, survival, grid)
    null = integrated_brier_score(train.surv(), capped, np.tile(km, (len(test.y), 1)), grid)
    return {"ibs": float(ibs), "ibs_null": float(null), "ipa": float(1 - ibs / null)}


def _curves(functions, grid: np.ndarray) -> np.ndarray:
    return np.vstack([f(grid) for f in functions])


def fit_coxnet(data: dict[str, Rows]) -> dict:
    """Elastic-net Cox (l1_ratio 0.5) along its alpha path; alpha chosen by validation C."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    train, val, test = data["train"], data["val"], data["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CoxnetSurvivalAnalysis(l1_ratio=0.5, fit_baseline_model=True)
        model.fit(train.x, train.surv())
    scores = [harrell_c(val, model.predict(val.x, alpha=a)) for a in model.alphas_]
    alpha = float(model.alphas_[int(np.argmax(scores))])  # ties: the strongest penalty
    grid = ibs_grid(train, test)
    survival = _curves(model.predict_survival_function(test.x, alpha=alpha), grid)
    return {
        "c_index": harrell_c(test, model.predict(test.x, alpha=alpha)),
        **ipa_scores(train, test, survival, grid),
        "penalty": alpha,
    }


def fit_coxph(data: dict[str, Rows]) -> dict:
    """Ridge Cox (Efron ties), its alpha from :data:`RIDGE_ALPHAS` by validation C."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    train, val, test = data["train"], data["val"], data["test"]
    best = None
    for alpha in RIDGE_ALPHAS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron").fit(train.x, train.surv())
        except (ValueError, np.linalg.LinAlgError, ArithmeticError):
            continue
        c = harrell_c(val, model.predict(val.x))
        if best is None or c > best[0]:
            best = (c, alpha, model)
    if best is None:
        raise RuntimeError("no ridge alpha gave a finite Cox fit")
    _, alpha, model = best
    grid = ibs_grid(train, test)
    survival = _curves(model.predict_survival_function(test.x), grid)
    return {
        "c_index": harrell_c(test, model.predict(test.x)),
        **ipa_scores(train, test, survival, grid),
        "penalty": alpha,
    }


def fit_rsf(data: dict[str, Rows], seed: int) -> dict:
    from sksurv.ensemble import RandomSurvivalForest

    train, test = data["train"], data["test"]
    forest = RandomSurvivalForest(
        n_estimators=200, min_samples_leaf=15, random_state=seed, n_jobs=2
    ).fit(train.x, train.surv())
    grid = ibs_grid(train, test)
    survival = _curves(forest.predict_survival_function(test.x), grid)
    c_index = harrell_c(test, forest.predict(test.x))
    return {"c_index": c_index, **ipa_scores(train, test, survival, grid)}


def auroc(y: np.ndarray, probabilities: np.ndarray, classes: Sequence | None = None) -> float:
    """Binary: AUROC of the second class's probability; multi-class: macro one-vs-rest."""
    from sklearn.metrics import roc_auc_score

    if probabilities.shape[1] == 2:
        return float(roc_auc_score(np.asarray(y) == (classes or [0, 1])[1], probabilities[:, 1]))
    return float(
        roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=classes)
    )


def fit_baseline(method: str, task: str, data: dict[str, Rows], seed: int) -> dict:
    """One baseline (module docstring) fitted on train, scored on test."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import ElasticNetCV, LogisticRegressionCV, RidgeCV
    from sklearn.metrics import r2_score

    train, test = data["train"], data["test"]
    if method == "coxnet":
        return fit_coxnet(data)
    if method == "coxph":
        return fit_coxph(data)
    if method == "rsf":
        return fit_rsf(data, seed)
    if task == "classification":
        model = (
            LogisticRegressionCV(
                Cs=10,
                l1_ratios=(0.5,) if method == "logistic_enet" else (0.0,),
                solver="saga" if method == "logistic_enet" else "lbfgs",
                scoring="neg_log_loss",
                max_iter=5000,
                use_legacy_attributes=False,
            )
            if method.startswith("logistic")
            else HistGradientBoostingClassifier(random_state=seed)
        ).fit(train.x, train.y)
        return {"auroc": auroc(test.y, model.predict_proba(test.x))}
    if method == "enet":
        model = ElasticNetCV(l1_ratio=0.5, cv=5, max_iter=100_000, random_state=seed)
    elif method == "ridge":
        model = RidgeCV(alphas=np.logspace(-3, 3, 13))
    else:
        model = HistGradientBoostingRegressor(random_state=seed)
    model.fit(train.x, train.y)
    return {"r2": float(r2_score(test.y, model.predict(test.x)))}


# --------------------------------------------------------------------------------------------
# The benchmark and its table
# --------------------------------------------------------------------------------------------


@dataclass
class Described:
    """What the table says about a data set besides the scores."""

    task: str
    rows: int
    inputs: int
    events: int | None = None
    classes: int | None = None
    runs: list[dict] = field(default_factory=list)


def run_dataset(
    name: str, seeds: Sequence[int], folder: Path, overrides: Sequence[str] = (), log=print
) -> tuple[Described, list[dict]]:
    """Every seed of one data set: the nervus run and each baseline; one dict per model x seed."""
    raw = DATASETS[name].load()
    task = raw.task
    label = {"survival": "label_event", "classification": "label_class"}.get(task, "label_y")
    records: list[dict] = []
    described = None
    for seed in seeds:
        csv = folder / f"{name}_seed{seed}.csv"
        frame = write_nervus_csv(name, seed, csv, raw)
        if described is None:
            described = Described(
                task,
                len(frame),
                sum(c.startswith("input_") for c in frame.columns),
                int(frame["label_event"].sum()) if task == "survival" else None,
                int(frame["label_class"].nunique()) if task == "classification" else None,
            )
        base = {"dataset": name, "task": task, "seed": seed}
        try:
            scores = run_nervus(csv, task, label, folder / f"{name}_seed{seed}_run", overrides)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            log(f"  {name} seed {seed}: nervus failed: {error}")
            scores = {"error": str(error).splitlines()[0]}
        data = split_arrays(frame, task)
        if task == "survival" and "error" not in scores:
            run_dir = folder / f"{name}_seed{seed}_run"
            scores["ipa_km"] = nervus_ipa_against_full_km(run_dir, label, data["train"])
        records.append({**base, "method": "nervus", **scores})
        log(f"  {name} seed {seed} nervus: " + _brief(scores))
        for method in BASELINES[task]:
            start = time.perf_counter()
            try:
                scores = fit_baseline(method, task, data, seed)
            except Exception as error:  # a baseline that fails is a row, not a lost benchmark
                scores = {"error": f"{type(error).__name__}: {error}"}
            scores["seconds"] = time.perf_counter() - start
            records.append({**base, "method": method, **scores})
            log(f"  {name} seed {seed} {method}: " + _brief(scores))
    return described, records


def nervus_ipa_against_full_km(run_dir: Path, label: str, train: Rows) -> float:
    """The nervus run's test IPA scored as the baselines' are (:func:`ipa_scores`: on
    :func:`ibs_grid`, against the training Kaplan-Meier curve at every event time), its survival
    curves read from the run's stored training aggregates (``schema.json``) as its predictions
    are. The library's own IPA (``ipa``) is measured against the stored, coarser null curve;
    this one is what anyone scoring the predictions with scikit-survival would find. NaN for a
    model without a Breslow baseline (the discrete-time ones)."""
    from nervus_lightning.survival.reference import SurvivalReference

    schema = json.loads((run_dir / "schema.json").read_text())
    spec = next(entry for entry in schema["labels"] if entry["name"] == label)
    if spec.get("baseline") is None:
        return float("nan")
    reference = SurvivalReference.from_json(spec)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    rows = predictions[predictions["split"] == "test"]
    test = Rows(None, rows[label].to_numpy(int), rows[spec["period"]].to_numpy(float))
    grid = ibs_grid(train, test)
    survival = reference.survival(rows[f"risk_{label}"].to_numpy(float), grid)
    return ipa_scores(train, test, survival, grid)["ipa"]


def _brief(scores: dict) -> str:
    shown = (
        "c_index",
        "ipa",
        "ipa_km",
        "auroc",
        "r2",
        "seconds",
        "linear_penalty",
        "linear_l1_ratio",
        "epochs_run",
        "error",
    )
    parts = []
    for key in shown:
        value = scores.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def _mean_sd(values: np.ndarray, digits: int = 3) -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def summarise(name: str, described: Described, runs: pd.DataFrame) -> dict:
    """The table row of one data set: means, the paired difference and the target."""
    task = described.task
    metric = METRIC[task]
    by_method = {
        method: rows.set_index("seed")[metric].astype(float)
        for method, rows in runs.groupby("method")
        if metric in rows
    }
    nervus = by_method.get("nervus", pd.Series(dtype=float))
    linear = [m for m in LINEAR[task] if m in by_method and by_method[m].notna().any()]
    better = max(linear, key=lambda m: by_method[m].mean()) if linear else None
    row: dict = {
        "data set": name,
        "rows": described.rows,
        "inputs": described.inputs,
    }
    if task == "survival":
        row["events"] = described.events
    if task == "classification":
        row["classes"] = described.classes
    row[f"nervus {metric}"] = _mean_sd(nervus.to_numpy())
    for method in BASELINES[task]:
        row[method] = _mean_sd(by_method.get(method, pd.Series(dtype=float)).to_numpy())
    target = "no nervus result"
    if better is not None and nervus.notna().any():
        difference = (nervus - by_method[better]).dropna()
        row["nervus − better linear"] = f"{_mean_sd(difference.to_numpy())} ({better})"
        mean_diff = float(difference.mean())
        sd_diff = float(difference.std(ddof=1)) if len(difference) > 1 else float("nan")
        if name in NONLINEAR:
            holds = mean_diff > 0 and (np.isfinite(sd_diff) and mean_diff > sd_diff)
            rule = "ahead by more than the sd"
        else:
            holds = nervus.mean() >= by_method[better].mean() - MARGIN[metric]
            rule = f"≥ linear − {MARGIN[metric]}"
        parts = [f"{rule}: {'yes' if holds else 'no'}"]
        if task == "survival":
            # Both IPAs: the library's (its stored null curve) and the full Kaplan-Meier one's.
            nervus_rows = runs.loc[runs["method"] == "nervus"]
            ipa = nervus_rows["ipa"].astype(float)
            if "ipa_km" in nervus_rows:
                ipa = np.fmin(ipa, nervus_rows["ipa_km"].astype(float))
            ipa_ok = bool((ipa >= 0).all())
            holds = holds and ipa_ok
            parts.append("IPA ≥ 0: yes" if ipa_ok else f"IPA < 0 on {int((ipa < 0).sum())} seed(s)")
        target = ("yes" if holds else "NO") + " (" + "; ".join(parts) + ")"
    else:
        row["nervus − better linear"] = "–"
    if task == "survival":
        for method in ("nervus", "coxnet", "rsf"):
            ipa = runs.loc[runs["method"] == method, "ipa"] if "ipa" in runs else pd.Series()
            row[f"{method} IPA"] = _mean_sd(ipa.astype(float).to_numpy())
            if method == "nervus" and "ipa_km" in runs:
                full_km = runs.loc[runs["method"] == method, "ipa_km"].astype(float).to_numpy()
                row["nervus IPA, full KM"] = _mean_sd(full_km)
    seconds = runs.loc[runs["method"] == "nervus", "seconds"].astype(float)
    row["nervus s/run"] = f"{seconds.mean():.0f}" if seconds.notna().any() else "–"
    row["target"] = target
    return row


def _int(value: object) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def report(described: dict[str, Described], runs: pd.DataFrame, command: str) -> str:
    """The markdown of ``--out``: one table per task kind, then the skipped sets and the
    nervus runs' warnings and choices."""
    parts = [
        "# nervus_lightning defaults against textbook models",
        "",
        f"Command: `{command}`. Test split; mean ± sd over split seeds "
        f"{sorted(set(runs['seed']))}. See `benchmarks/defaults.py` for every choice.",
    ]
    for task in ("survival", "classification", "regression"):
        names = [n for n, d in described.items() if d.task == task]
        if not names:
            continue
        rows = [summarise(n, described[n], runs[runs["dataset"] == n]) for n in names]
        parts += ["", f"## {task} ({METRIC[task]})", "", markdown_table(rows)]
    nervus = runs[runs["method"] == "nervus"]
    parts += ["", "## nervus runs", ""]
    for _, run in nervus.iterrows():
        text = f"- {run['dataset']} seed {run['seed']}: "
        if isinstance(run.get("error"), str):
            parts.append(text + f"failed: {run['error']}")
            continue
        penalty = run.get("linear_penalty")
        text += (
            f"{run.get('seconds', float('nan')):.0f} s, epochs run {_int(run.get('epochs_run'))}, "
        )
        if run.get("start_kept") is True:
            text += "kept the linear start (before training)"
        else:
            text += f"kept epoch {_int(run.get('best_epoch'))}"
        if penalty is not None and np.isfinite(float(penalty)):
            l1_ratio = run.get("linear_l1_ratio")
            kind = "elastic-net" if isinstance(l1_ratio, float) and l1_ratio > 0 else "ridge"
            text += f", linear start: {kind} penalty {float(penalty):.3g}"
        warned = run.get("warnings")
        parts.append(text + (f"; warnings: {warned}" if isinstance(warned, str) and warned else ""))
    parts += ["", "Skipped: " + "; ".join(SKIPPED.values()) + "."]
    return "\n".join(parts) + "\n"


def choose_datasets(named: Sequence[str] | None, *, large: bool, unseen: bool) -> list[str]:
    """The sets named, else every set but the large ones (``large``) and those shipped in
    lifelines or statsmodels (``unseen``)."""
    if named:
        return list(named)
    return [n for n, d in DATASETS.items() if (large or not d.large) and (unseen or not d.package)]


def installed() -> set[str]:
    """The packages of :data:`DATASETS` that can be imported here."""
    return {
        d.package
        for d in DATASETS.values()
        if d.package and importlib.util.find_spec(d.package) is not None
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), metavar="NAME")
    parser.add_argument("--seeds", type=int, default=5, help="split seeds 0..N-1 (default 5)")
    parser.add_argument("--large", action="store_true", help="include flchain (7,874 rows)")
    parser.add_argument(
        "--unseen",
        action="store_true",
        help="add the sets shipped in lifelines and statsmodels (no default was chosen on them)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown table")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke test")
    parser.add_argument("--keep", type=Path, help="keep CSVs and run folders here")
    parser.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra overrides added to the user's command (to try a candidate default)",
    )
    args = parser.parse_args(argv)
    names = choose_datasets(args.datasets, large=args.large, unseen=args.unseen)
    missing = sorted({DATASETS[n].package for n in names if DATASETS[n].package} - installed())
    if missing:
        parser.error(
            f"these data sets ship inside {', '.join(missing)}: pip install {' '.join(missing)}"
        )
    seeds = range(1 if args.quick else args.seeds)
    overrides = [*(QUICK_OVERRIDES if args.quick else ()), *args.override]
    out = args.out
    runs_csv = out.with_name(out.stem + "_runs.csv")
    given = list(argv if argv is not None else sys.argv[1:])
    if "--keep" in given:  # where the run folders were kept changes no number
        del given[given.index("--keep") : given.index("--keep") + 2]
    command = "python benchmarks/defaults.py " + " ".join(given)
    for reason in SKIPPED.values():
        print(f"skipped: {reason}")
    described: dict[str, Described] = {}
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        for name in names:
            print(f"{name}:", flush=True)
            described[name], found = run_dataset(
                name, seeds, folder, overrides, log=lambda s: print(s, flush=True)
            )
            records += found
            out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(records).to_csv(runs_csv, index=False)
    text = report(described, pd.DataFrame(records), command.strip())
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
