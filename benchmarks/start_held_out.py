"""Where the classification and regression starts choose their penalty, on the start alone
(issue 19: ``sim_regression_highdim``'s gap to ``ElasticNetCV`` was the penalty chosen on 30
validation rows).

For each data set of ``defaults.py`` and split seed (the same CSV rows as ``defaults.py``:
:func:`defaults.nervus_frame`, :func:`defaults.split_arrays`; inputs standardised on the training
rows, a regression target too), the linear start fitted on the training rows, ridge against
elastic net as the library does, its penalty chosen on the held-out rows of each design of
:func:`nervus_lightning.models.penalty.held_out_splits`:

* ``val``: the validation rows;
* ``cv``: the 5 folds of the training rows in turn;
* ``cv+val``: both (every training and validation row held out once).

Printed per data set: the mean test metric of each design (R² of the standardised target for
regression; AUROC, one-vs-rest for several classes, for classification; with the test log loss
of classification after a slash) and its paired difference to ``val`` (mean ± sd over seeds),
and which design the library uses (classification: ``val``, or ``cv+val`` on the seeds where a
class has fewer than ``MIN_VAL_PER_CLASS`` validation cases, counted). No network is trained:
this isolates where the penalty is chosen.

    python benchmarks/start_held_out.py --seeds 10 --datasets diabetes sim_regression_highdim
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
import defaults  # noqa: E402

from nervus_lightning.models.glm import (  # noqa: E402
    choose_linear_classifier,
    choose_linear_regression,
    classifier_held_out,
)
from nervus_lightning.models.penalty import (  # noqa: E402
    HELD_OUT_CV,
    HELD_OUT_CV_AND_VAL,
    HELD_OUT_VAL,
)

DESIGNS = (HELD_OUT_VAL, HELD_OUT_CV, HELD_OUT_CV_AND_VAL)


def start_scores(task: str, data: dict, design: str) -> tuple[float, float | None]:
    """Test metric (and test log loss for classification) of the start chosen by ``design``,
    the folds of train drawn as the library draws them (its default seed)."""
    parts = [data[s] for s in ("train", "val", "test")]
    x = np.vstack([p.x for p in parts]).astype(float)
    y = np.concatenate([p.y for p in parts])
    n_train, n_val = len(parts[0].y), len(parts[1].y)
    train = np.arange(n_train)
    val = np.arange(n_train, n_train + n_val)
    test = np.arange(n_train + n_val, len(y))
    scale = x[train].std(0)
    x = (x - x[train].mean(0)) / np.where(scale > 0, scale, 1.0)
    inputs = torch.as_tensor(x)
    if task == "regression":
        target = (y - y[train].mean()) / y[train].std()
        weight = choose_linear_regression(inputs, target, train, val, held_out=design).weight
        prediction = x[test] @ weight[0, :-1].numpy() + float(weight[0, -1])
        residual = np.square(prediction - target[test]).sum()
        return 1 - residual / np.square(target[test] - target[test].mean()).sum(), None
    classes = np.unique(y[train])
    index = np.searchsorted(classes, y)
    choice = choose_linear_classifier(inputs, index, len(classes), train, val, held_out=design)
    weight = choice.weight
    logits = x[test] @ weight[:, :-1].numpy().T + weight[:, -1].numpy()
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    if len(classes) == 2:
        auroc = roc_auc_score(index[test], probabilities[:, 1])
    else:
        auroc = roc_auc_score(
            index[test], probabilities, multi_class="ovr", labels=range(len(classes))
        )
    return float(auroc), float(log_loss(index[test], probabilities, labels=range(len(classes))))


def few_cases(data: dict) -> bool:
    """Whether the library's classification start leaves the validation rows alone here (a
    class with fewer than ``MIN_VAL_PER_CLASS`` validation cases)."""
    classes = np.unique(data["train"].y)
    val = np.searchsorted(classes, data["val"].y)
    return classifier_held_out(val, len(classes)) != HELD_OUT_VAL


def run(name: str, seeds: int) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray], int]:
    raw = defaults.DATASETS[name].load()
    metric = {d: [] for d in DESIGNS}
    losses = {d: [] for d in DESIGNS}
    n_few = 0
    for seed in range(seeds):
        data = defaults.split_arrays(defaults.nervus_frame(name, raw, seed), raw.task)
        n_few += raw.task == "classification" and few_cases(data)
        for design in DESIGNS:
            score, loss = start_scores(raw.task, data, design)
            metric[design].append(score)
            losses[design].append(np.nan if loss is None else loss)
    as_arrays = {d: np.asarray(v) for d, v in metric.items()}
    return raw.task, as_arrays, {d: np.asarray(v) for d, v in losses.items()}, n_few


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--datasets", nargs="+", default=["diabetes", "sim_regression_highdim"])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    print("| data set | metric | " + " | ".join(DESIGNS) + " | the library's |")
    print("|---|---|" + "---|" * (len(DESIGNS) + 1))
    for name in args.datasets:
        task, metric, losses, n_few = run(name, args.seeds)
        cells = []
        for design in DESIGNS:
            cell = f"{metric[design].mean():.4f}"
            if task == "classification":
                cell += f" / {losses[design].mean():.4f}"
            if design != HELD_OUT_VAL:
                diff = metric[design] - metric[HELD_OUT_VAL]
                cell += f" ({diff.mean():+.4f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.3f})"
            cells.append(cell)
        label = "R²" if task == "regression" else "AUROC / log loss"
        library = HELD_OUT_CV_AND_VAL
        if task == "classification":
            library = f"{HELD_OUT_VAL}; {HELD_OUT_CV_AND_VAL} on {n_few} of {args.seeds} seeds"
        print(f"| {name} | {label} | " + " | ".join(cells) + f" | {library} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
