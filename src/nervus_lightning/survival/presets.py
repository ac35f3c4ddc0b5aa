"""Real clinical survival data sets (bundled with scikit-survival) written as Nervus CSVs.

This module owns turning a scikit-survival data set into a ready-to-train Nervus CSV; nothing
is downloaded. Columns: ``uniqID``, ``input_<feature>`` (numeric), ``label_<endpoint>`` (1 =
event, 0 = censored), ``period_<endpoint>`` (follow-up time) and ``split``.

Presets (times in days):

``whas500``
    Worcester Heart Attack Study, 500 patients after acute myocardial infarction. Endpoint
    ``death`` (``fstat``) at ``lenfol``.
``gbsg2``
    German Breast Cancer Study Group 2, 686 patients. Endpoint ``rfs``: recurrence-free
    survival (``cens`` = recurrence or death) at ``time``.
``flchain``
    Serum free light chain study, 7874 residents of Olmsted County. Endpoint ``death`` at
    ``futime``. The column ``chapter`` (ICD chapter of the *cause of death*) is dropped: it is
    only recorded for subjects who died, so its value and even its missingness give the outcome
    away. Three subjects died at time 0; they are kept as recorded.

Encoding:

* Numeric columns are copied. Names are made CSV/Hydra friendly (``flc.grp`` -> ``flc_grp``).
* Categorical columns are one-hot encoded with the first category of scikit-survival's
  category order dropped as the reference level: ``input_<column>_<level>`` is 1/0 (e.g.
  ``gbsg2`` ``tgrade`` I/II/III gives ``input_tgrade_II`` and ``input_tgrade_III``).
* Missing values (``flchain`` ``creatinine``): replaced by the median of the *training* split
  only (val/test statistics are never used), and a 1/0 column ``input_<column>_missing`` says
  which values were imputed. A missing categorical value gives all-zero indicator columns plus
  the ``_missing`` column. Only columns with missing values get a ``_missing`` column.

Split (fixed, reproducible from ``seed``): 60 % train, 20 % val, 20 % test, stratified by the
event indicator. Within each event class (censored first, then events), subjects are shuffled
by ``numpy.random.default_rng(seed)``; the first ``round(0.6 n)`` go to train, the next
``round(0.2 n)`` to val and the rest to test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sksurv import datasets

__all__ = [
    "PRESETS",
    "SPLIT_FRACTIONS",
    "encode_inputs",
    "preset_endpoint",
    "preset_frame",
    "write_preset_csv",
]

PRESETS = ("whas500", "gbsg2", "flchain")
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


@dataclass(frozen=True)
class _Preset:
    loader: Callable[[], tuple[pd.DataFrame, np.ndarray]]
    event_field: str
    time_field: str
    endpoint: str
    drop: tuple[str, ...] = ()


_PRESETS: dict[str, _Preset] = {
    "whas500": _Preset(datasets.load_whas500, "fstat", "lenfol", "death"),
    "gbsg2": _Preset(datasets.load_gbsg2, "cens", "time", "rfs"),
    "flchain": _Preset(datasets.load_flchain, "death", "futime", "death", drop=("chapter",)),
}


def _clean_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(text)).strip("_")


def _get_preset(name: str) -> _Preset:
    if name not in _PRESETS:
        raise ValueError(f"unknown survival preset {name!r}; choose one of {PRESETS}")
    return _PRESETS[name]


def preset_endpoint(name: str) -> str:
    """Endpoint name of a preset, i.e. the suffix of its ``label_`` and ``period_`` columns."""
    return _get_preset(name).endpoint


def _stratified_split(event: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.empty(event.shape[0], dtype=object)
    for value in (False, True):
        members = rng.permutation(np.flatnonzero(event == value))
        n_train = round(SPLIT_FRACTIONS["train"] * members.shape[0])
        n_val = round(SPLIT_FRACTIONS["val"] * members.shape[0])
        split[members[:n_train]] = "train"
        split[members[n_train : n_train + n_val]] = "val"
        split[members[n_train + n_val :]] = "test"
    return split


def encode_inputs(features: pd.DataFrame, is_train: np.ndarray) -> pd.DataFrame:
    """``input_*`` columns of a data set's features: numbers copied; categoricals (pandas
    category or object dtype) one-hot with the first level dropped; a missing number replaced by
    the training rows' median plus an ``input_<name>_missing`` column (a missing category: all
    levels 0 plus that column)."""
    columns: dict[str, np.ndarray] = {}
    for column in features.columns:
        values = features[column]
        name = f"input_{_clean_name(column)}"
        missing = values.isna().to_numpy()
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
            for level in values.astype("category").cat.categories[1:]:
                columns[f"{name}_{_clean_name(level)}"] = (values == level).to_numpy(dtype=int)
        else:
            numeric = values.to_numpy(dtype=float)
            if missing.any():
                train_values = numeric[is_train & ~missing]
                if train_values.shape[0] == 0:
                    raise ValueError(f"column {column!r} has no training value to impute from")
                numeric = np.where(missing, np.median(train_values), numeric)
            columns[name] = numeric
        if missing.any():
            columns[f"{name}_missing"] = missing.astype(int)
    return pd.DataFrame(columns, index=features.index)


def preset_frame(name: str, seed: int = 0) -> pd.DataFrame:
    """The preset as a Nervus-format data frame (see module docstring for every choice)."""
    preset = _get_preset(name)
    features, outcome = preset.loader()
    features = features.drop(columns=list(preset.drop)).reset_index(drop=True)
    event = np.asarray(outcome[preset.event_field], dtype=bool)
    time = np.asarray(outcome[preset.time_field], dtype=float)

    split = _stratified_split(event, seed)
    inputs = encode_inputs(features, split == "train")
    width = len(str(features.shape[0]))
    frame = pd.DataFrame({"uniqID": [f"{name}_{i:0{width}d}" for i in range(features.shape[0])]})
    frame = pd.concat([frame, inputs], axis=1)
    frame[f"label_{preset.endpoint}"] = event.astype(int)
    frame[f"period_{preset.endpoint}"] = time
    frame["split"] = split.astype(str)
    return frame


def write_preset_csv(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Write preset ``name`` (one of :data:`PRESETS`) as a Nervus CSV at ``path``; returns it."""
    frame = preset_frame(name, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
