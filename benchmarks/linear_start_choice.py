"""How the linear Cox start chooses its penalty, against other rules, on the linear start alone
(issue 19: is the gap to Coxnet in the defaults table the rule, or the split seeds?).

For each data set of ``defaults.py`` and split seed (the same CSV rows and standardisation as
``defaults.py``: :func:`defaults.nervus_frame`, :func:`defaults.split_arrays`), the test
Harrell's C of the linear Cox model fitted on the training rows, its penalty chosen by

* ``heldout_pl``: the library's rule, :func:`nervus_lightning.survival.linear.choose_linear_cox`
  (ridge and elastic net, the held-out partial likelihood on val when it holds 20 events or
  more, else on the 5 folds of train, drawn 5 times, and the validation rows together, each
  fit's linear predictor at its best scale there);
* ``one_draw``: the same with one draw of the 5 folds instead of
  :data:`~nervus_lightning.survival.linear.FOLD_DRAWS` (the library's rule until 2026-12-08;
  the same as ``heldout_pl`` where val holds 20 events);
* ``unscaled_pl``: the same without the scale (each fit as it is: the library's rule until
  2026-12-07);
* ``scale_up``: the same, each fit scaled up but never down (the factor searched in
  [1, 1000], besides 0): a candidate, since a factor below 1 lets a weakly penalised fit, its
  direction fitted to the noise of few events, compete by shrinking afterwards;
* ``val_c``: the same two paths, the penalty and kind with the highest validation C (what the
  ``coxnet`` baseline of ``defaults.py`` does with its own path);
* ``cv_train``: the same two paths, always 5-fold cross-validation of train (partial likelihood);
* ``cv_val``: the same two paths, 5-fold cross-validation of train and the validation rows
  together (partial likelihood; every training and validation row held out once, as the
  regression start chooses);

and ``coxnet`` and ``coxph`` (ridge Cox) as ``defaults.py`` fits them. Printed: mean test C and
the paired difference to the better of the two (higher mean test C; mean ± sd over seeds; a
baseline fit that fails on a split is left out of its mean and its pairs, and counted), and
each rule's mean seconds per start on this machine. No network is trained: this isolates the
choice of penalty.

    python benchmarks/linear_start_choice.py --seeds 10 --datasets veterans_lung_cancer whas500
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import defaults  # noqa: E402

from nervus_lightning.models import penalty as penalty_module  # noqa: E402
from nervus_lightning.models.penalty import (  # noqa: E402
    HELD_OUT_CV,
    HELD_OUT_CV_AND_VAL,
    HELD_OUT_VAL,
    choose_penalty,
    penalty_path,
)
from nervus_lightning.models.solvers import minimise_lbfgs, minimise_proximal  # noqa: E402
from nervus_lightning.survival import linear  # noqa: E402
from nervus_lightning.survival.linear import L1_RATIO, choose_linear_cox  # noqa: E402

RULES = ("heldout_pl", "one_draw", "unscaled_pl", "scale_up", "val_c", "cv_train", "cv_val")
BASELINES = ("coxnet", "coxph")


def _fitter(x, time, event, l1_ratio):
    def fit(rows, penalty, start):
        r = torch.as_tensor(rows)
        weight = torch.zeros(1, x.shape[1], dtype=torch.float64) if start is None else start
        smooth = linear._per_event_objective(
            x[r], time[r], event[r], "efron", penalty * (1 - l1_ratio)
        )
        if not l1_ratio:
            return minimise_lbfgs(weight, smooth)
        return minimise_proximal(weight, smooth, penalty * l1_ratio)

    return fit


def _scaled_up_only(x, time, event, train, val, seed: int) -> torch.Tensor:
    lowest = penalty_module.SCALE_RANGE
    penalty_module.SCALE_RANGE = (1.0, lowest[1])
    try:
        return choose_linear_cox(x, time, event, train, val, seed=seed).weight
    finally:
        penalty_module.SCALE_RANGE = lowest


def linear_start(rule: str, x, time, event, train, val, seed: int) -> torch.Tensor:
    """The weight (1, p) that ``rule`` picks (module docstring)."""
    if rule == "heldout_pl":
        return choose_linear_cox(x, time, event, train, val, seed=seed).weight
    if rule == "one_draw":
        return choose_linear_cox(x, time, event, train, val, seed=seed, fold_draws=1).weight
    if rule == "unscaled_pl":
        plain = choose_linear_cox(x, time, event, train, val, seed=seed, profile_scale=False)
        return plain.weight
    if rule == "scale_up":
        return _scaled_up_only(x, time, event, train, val, seed)
    if rule == "cv_train":
        alone = HELD_OUT_CV
        return choose_linear_cox(x, time, event, train, val, seed=seed, held_out=alone).weight
    if rule == "cv_val":
        pooled = HELD_OUT_CV_AND_VAL
        return choose_linear_cox(x, time, event, train, val, seed=seed, held_out=pooled).weight
    t = torch.as_tensor(train)
    paths = {
        0.0: penalty_path(),
        L1_RATIO: linear._elastic_net_path(x[t], time[t], event[t], "efron"),
    }

    def minus_val_c(weight, fit_rows, held_rows):
        held = torch.as_tensor(held_rows)
        risk = (x[held] @ weight[0]).numpy()
        rows = defaults.Rows(None, event[held].numpy().astype(int), time[held].numpy())
        return -defaults.harrell_c(rows, risk)

    choices = [
        choose_penalty(
            _fitter(x, time, event, l1), minus_val_c, train, val, HELD_OUT_VAL, path, seed
        )
        for l1, path in paths.items()
    ]
    return min(choices, key=lambda c: c.best_loss()).weight


def run(name: str, seeds: int, rules: Sequence[str] = RULES) -> dict[str, np.ndarray]:
    raw = defaults.DATASETS[name].load()
    scores: dict[str, list[float]] = {rule: [] for rule in (*rules, *BASELINES)}
    seconds: dict[str, list[float]] = {rule: [] for rule in rules}
    for seed in range(seeds):
        data = defaults.split_arrays(defaults.nervus_frame(name, raw, seed), "survival")
        for method in BASELINES:
            try:
                scores[method].append(
                    defaults.fit_baseline(method, "survival", data, seed)["c_index"]
                )
            except ValueError:  # a fit whose survival curves overflow (ridge Cox, weak alpha)
                scores[method].append(np.nan)
        fit_rows = (data["train"], data["val"])
        x = torch.as_tensor(np.vstack([r.x for r in fit_rows]), dtype=torch.float64)
        time = torch.as_tensor(np.concatenate([r.time for r in fit_rows]), dtype=torch.float64)
        event = torch.as_tensor(np.concatenate([r.y for r in fit_rows])) != 0
        train = np.arange(len(data["train"].y))
        val = np.arange(len(train), len(event))
        for rule in rules:
            started = perf_counter()
            weight = linear_start(rule, x, time, event, train, val, seed)
            seconds[rule].append(perf_counter() - started)
            risk = data["test"].x @ weight[0].numpy()
            scores[rule].append(defaults.harrell_c(data["test"], risk))
    return {k: np.asarray(v) for k, v in scores.items()}, {
        k: float(np.mean(v)) for k, v in seconds.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--datasets", nargs="+", default=["veterans_lung_cancer", "whas500"])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    print("| data set | " + " | ".join((*args.rules, *BASELINES)) + " |")
    print("|---|" + "---|" * (len(args.rules) + len(BASELINES)))
    for name in args.datasets:
        scores, seconds = run(name, args.seeds, args.rules)
        base = max((scores[b] for b in BASELINES), key=np.nanmean)
        cells = [
            f"{scores[r].mean():.4f} ({np.nanmean(scores[r] - base):+.4f} ± "
            f"{np.nanstd(scores[r] - base, ddof=1):.3f}; {seconds[r]:.1f} s)"
            for r in args.rules
        ]
        failed = {b: int(np.isnan(scores[b]).sum()) for b in BASELINES}
        cells += [
            f"{np.nanmean(scores[b]):.4f}" + (f" ({failed[b]} failed)" if failed[b] else "")
            for b in BASELINES
        ]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
