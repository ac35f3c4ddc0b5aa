"""Files of a run folder: predictions, metrics, schema, learning curves.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.schema import ID_COLUMN, SPLIT_COLUMN

PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
SCHEMA = "schema.json"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    module: Any, datamodule: NervusDataModule, trainer: L.Trainer | None = None
) -> pd.DataFrame:
    """Predict every kept case of the data module's CSV; one row per case, in CSV order.

    Columns: ``uniqID``, ``split``, ``group`` (if any), then per label its true value (where the
    CSV has it; for survival also the time column) followed by the task's prediction columns.
    """
    trainer = trainer or L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batches = trainer.predict(module, dataloaders=datamodule.predict_dataloader())
    index = torch.cat([b["index"] for b in batches]).numpy()
    order = np.argsort(index)
    frame = datamodule.frame
    schema = module.schema
    out = pd.DataFrame({ID_COLUMN: frame[ID_COLUMN].to_numpy(), SPLIT_COLUMN: frame[SPLIT_COLUMN]})
    if schema.group_column and schema.group_column in frame.columns:
        out[schema.group_column] = frame[schema.group_column].to_numpy()
    for j, spec in enumerate(schema.labels):
        values = torch.cat([b["outputs"][j] for b in batches]).numpy()[order]
        if spec.name in frame.columns:
            out[spec.name] = frame[spec.name].to_numpy()
        if spec.period and spec.period in frame.columns:
            out[spec.period] = pd.to_numeric(frame[spec.period], errors="coerce").to_numpy()
        for col, vals in module.task.prediction_columns(values, j).items():
            out[col] = vals
    return out


def split_metrics(module: Any, predictions: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """``{split: {label: {metric: value}}}`` for every split whose labels are known."""
    result: dict[str, dict[str, dict]] = {}
    for split, rows in predictions.groupby(SPLIT_COLUMN, sort=False):
        per_label = {}
        for j, spec in enumerate(module.schema.labels):
            metrics = module.task.split_metrics(rows, j)
            if metrics:
                per_label[spec.name] = dict(metrics)
                if getattr(metrics, "reasons", None):
                    per_label[spec.name]["reasons"] = dict(metrics.reasons)
        if per_label:
            result[str(split)] = per_label
    return result


def write_predictions_and_metrics(
    module: Any,
    datamodule: NervusDataModule,
    out_dir: str | os.PathLike,
    trainer: L.Trainer | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Write ``predictions.csv``, ``metrics.json`` and ``schema.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    predictions = predict_frame(module, datamodule, trainer)
    metrics = split_metrics(module, predictions)
    write_json(out_dir / SCHEMA, module.export_schema())
    write_csv(out_dir / PREDICTIONS, predictions)
    write_json(out_dir / METRICS, metrics)
    module.task.write_figures(predictions, out_dir)
    return predictions, metrics
