"""Files of a run folder: predictions, metrics, schema, learning curves.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import ID_COLUMN, SPLIT_COLUMN
from nervus_lightning.files import temporary_sibling

PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
SCHEMA = "schema.json"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_sibling(path)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    def _write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")

    return atomic_write(path, _write)


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def predict_frame(
    module: Any, datamodule: NervusDataModule, outputs: list[np.ndarray]
) -> pd.DataFrame:
    """``predictions.csv`` as a frame: one row per kept case of the CSV, in CSV order.

    ``outputs`` are ``module.infer(datamodule.predict_dataloader())``. Columns: ``uniqID``,
    ``split``, ``group`` (if any), then per label its true value (where the CSV has it; for
    survival also the time column) followed by the task's prediction columns.
    """
    frame = datamodule.frame
    schema = module.schema
    out = pd.DataFrame({ID_COLUMN: frame[ID_COLUMN].to_numpy(), SPLIT_COLUMN: frame[SPLIT_COLUMN]})
    if schema.group_column and schema.group_column in frame.columns:
        out[schema.group_column] = frame[schema.group_column].to_numpy()
    for j, spec in enumerate(schema.labels):
        if spec.name in frame.columns:
            out[spec.name] = frame[spec.name].to_numpy()
        if spec.period and spec.period in frame.columns:
            out[spec.period] = pd.to_numeric(frame[spec.period], errors="coerce").to_numpy()
        for col, vals in module.task.prediction_columns(outputs[j], j).items():
            out[col] = vals
    return out


def write_predictions(
    module: Any,
    datamodule: NervusDataModule,
    out_dir: str | os.PathLike,
    outputs: list[np.ndarray],
) -> pd.DataFrame:
    """Write ``predictions.csv`` and ``schema.json`` (labels with the fitted contract)."""
    out_dir = Path(out_dir)
    predictions = predict_frame(module, datamodule, outputs)
    write_json(out_dir / SCHEMA, module.export_schema())
    write_csv(out_dir / PREDICTIONS, predictions)
    module.task.write_figures(predictions, out_dir)
    return predictions


def metrics_summary(table: pd.DataFrame, notes: pd.DataFrame | None = None) -> dict:
    """``metrics.json``: ``{split: {label: {metric: value}}}`` of whole splits (group ``all``),
    taken from the evaluation's ``metrics.csv`` rows so that both files always agree; a
    ``reasons`` entry per label carries the notes of missing values."""
    result: dict[str, dict[str, dict]] = {}
    whole = table[table["group"] == "all"]
    for row in whole.itertuples(index=False):
        value = None if pd.isna(row.value) else float(row.value)
        result.setdefault(str(row.split), {}).setdefault(str(row.label), {})[row.metric] = value
    if notes is not None and not notes.empty:
        for row in notes[notes["group"] == "all"].itertuples(index=False):
            entry = result.get(str(row.split), {}).get(str(row.label))
            if entry is not None and entry.get(row.metric) is None:
                entry.setdefault("reasons", {})[row.metric] = row.note
    return result


def write_metrics_json(run_dir: str | os.PathLike, table: pd.DataFrame) -> dict:
    """Write ``metrics.json`` next to ``predictions.csv`` from the evaluation's ``metrics.csv``
    rows (``table``) and its ``metrics_notes.csv``; return what was written."""
    run_dir = Path(run_dir)
    notes_path = run_dir / "evaluation" / "metrics_notes.csv"
    notes = pd.read_csv(notes_path) if notes_path.is_file() else None
    metrics = metrics_summary(table, notes)
    write_json(run_dir / METRICS, metrics)
    return metrics
