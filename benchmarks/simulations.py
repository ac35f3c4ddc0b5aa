r"""Simulated survival data sets for the benchmarks, as Nervus CSV frames.

Each function returns a data frame in the project's CSV format: ``uniqID``, ``input_*``
(numeric), ``label_death`` (1 = event, 0 = censored), ``period_death`` (follow-up time, in
years) and ``split`` (60 % ``train``, 20 % ``val``, 20 % ``test``, stratified by the event
indicator as the presets' split, :mod:`nervus_lightning.survival.presets`). Rows and split
are both reproducible from ``seed``; the true survival curve of every row is available from the
matching ``*_survival`` function, so a model's curves can be compared with the truth.

``crossing_hazards``
    Two groups whose hazards cross (proportional hazards broken), with three noise inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nervus_lightning.survival.presets import _stratified_split

__all__ = ["CROSSING_SCALE", "CROSSING_SHAPES", "crossing_hazards", "crossing_survival"]

#: Weibull shape of group 0 (falling hazard: early events) and group 1 (rising hazard: late).
CROSSING_SHAPES = (0.5, 4.0)
#: Common Weibull scale (years): the two survival curves cross there, at S = 1/e.
CROSSING_SCALE = 5.0
#: Censoring: exponential drop-out with this mean (years), and the study ends at FOLLOW_UP.
DROPOUT_MEAN = 15.0
FOLLOW_UP = 10.0


def crossing_survival(group: np.ndarray, times: np.ndarray) -> np.ndarray:
    r"""True survival :math:`S(t \mid g) = \exp\{-(t / 5)^{k_g}\}` of each row of ``group`` at
    ``times``, shape ``(len(group), len(times))``."""
    shape = np.where(np.asarray(group) == 1, CROSSING_SHAPES[1], CROSSING_SHAPES[0])
    ratio = np.asarray(times, dtype=np.float64)[None, :] / CROSSING_SCALE
    return np.exp(-(ratio ** shape[:, None]))


def crossing_hazards(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    r"""Two groups with crossing hazards and three noise inputs (issue 19's simulation).

    Inputs: ``input_group`` ~ Bernoulli(0.5) and ``input_noise1..3`` ~ N(0, 1), which do not
    enter the outcome. Event time: Weibull with scale 5 years and a shape that depends on the
    group only,

    .. math:: S(t \mid g) = \exp\{-(t/5)^{k_g}\},\quad k_0 = 0.5,\ k_1 = 4,

    i.e. ``T = 5 * E ** (1 / k_g)``, ``E`` ~ Exp(1): group 0 has a falling hazard (a third of it
    has an event within a year), group 1 a rising one (almost none before 2 years). The curves
    cross at 5 years (``S = 1/e``), inside the follow-up, so no hazard ratio describes the group
    and a Cox model ranks the groups the same way at every time. Censoring: drop-out
    ~ Exponential(mean 15 years) and the end of the study at 10 years, independent of
    everything; observed time ``min(T, C)``, event ``T <= C`` (about 30 % censored, ~1/3 of
    them at the study end).
    """
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    noise = rng.standard_normal((n, 3))
    shape = np.where(group == 1, CROSSING_SHAPES[1], CROSSING_SHAPES[0])
    event_time = CROSSING_SCALE * rng.exponential(1.0, n) ** (1.0 / shape)
    censor_time = np.minimum(rng.exponential(DROPOUT_MEAN, n), FOLLOW_UP)
    event = event_time <= censor_time
    width = len(str(n - 1))
    frame = pd.DataFrame({"uniqID": [f"crossing_{i:0{width}d}" for i in range(n)]})
    frame["input_group"] = group.astype(float)
    for k in range(3):
        frame[f"input_noise{k + 1}"] = noise[:, k]
    frame["label_death"] = event.astype(int)
    frame["period_death"] = np.minimum(event_time, censor_time)
    frame["split"] = _stratified_split(event, seed).astype(str)
    return frame


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a simulated survival CSV.")
    parser.add_argument("path", help="CSV to write")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    crossing_hazards(args.n, args.seed).to_csv(args.path, index=False)
    print(f"wrote {args.path}")
