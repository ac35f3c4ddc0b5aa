"""Files of a run folder: predictions, metrics, schema, learning curves.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nervus_lightning.checkpoints import CHOICE_KEY
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.errors import ID_COLUMN, SPLIT_COLUMN
from nervus_lightning.files import atomic_write
from nervus_lightning.models.penalty import describe_choice
from nervus_lightning.start_choice import StartChoice
from nervus_lightning.survival.shrinkage import Shrinkage

PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
SCHEMA = "schema.json"


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
    module.task.write_figures(predictions, out_dir, time_unit=module.schema.time_unit)
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


MODEL_SUMMARY = "model_summary.json"


def _component(options: Any, default: str) -> str:
    """A model part as text: its name, and its hidden sizes and dropout where it has them."""
    if options is None:
        return "none"
    if isinstance(options, str):
        return options
    if not isinstance(options, dict):
        return type(options).__name__  # a module instance given in Python
    name = str(options.get("name") or options.get("_target_") or default)
    details = [f"{key} {options[key]}" for key in ("hidden", "dropout") if options.get(key)]
    return name + (f" ({', '.join(details)})" if details else "")


def _image_input(schema: Any, hp: Mapping[str, Any]) -> str:
    """The report's line on the images: views, and their size as the network gets them."""
    kind = "volume" if schema.is_volume else "image"
    views = (
        f"{len(schema.views)} views per case ({', '.join(schema.views)})"
        if schema.views
        else f"one {kind} per case"
    )
    if schema.is_volume:
        volume = schema.volume
        shape = " x ".join(str(n) for n in volume["shape"])
        if volume.get("spacing"):
            spacing = " x ".join(f"{mm:g}" for mm in volume["spacing"])
            how = f"resampled to {spacing} mm voxels, cropped or padded to {shape} voxels"
        else:
            how = f"resized to {shape} voxels (D x H x W)"
        return f"{views}, {how}, orientation {volume['orientation']}"
    size = hp.get("image_size")
    return f"{views}, {hp.get('in_channels')} channel(s), resized to {size} x {size} px"


def model_summary(
    module: Any,
    *,
    epochs_run: int | None,
    best_epoch: int | None,
    monitor: str,
    mode: str,
    best_score: float | None,
    checkpoint: str | os.PathLike | None,
    stopped_early: int | None = None,
    linear_start: bool = False,
    start_choice: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What was trained, for the top of the report (``model_summary.json``; no patient data).

    ``rows`` are (what, description) pairs in reading order: the inputs, the architecture and
    how the checkpoint was chosen; ``best_epoch`` (counted from 0, as in
    ``learning_curve.csv``) is marked on the learning curves. ``epochs_run=None`` (a checkpoint
    read for prediction, which does not know how long its run went on): no such row.
    ``stopped_early``: the patience, when early stopping ended training before
    ``trainer.max_epochs``. Each linear term's penalty choice is a row of its own.
    ``linear_start``: the kept checkpoint is the model as it started, before training (the
    penalised linear model); ``start_choice``: its comparison with the best epoch
    (:class:`~nervus_lightning.start_choice.StartChoice` as plain numbers), said in
    the row of the checkpoint chosen.
    """
    schema = module.schema
    hp = module.hparams
    rows: list[list[str]] = []
    if schema.has_images:
        rows.append(["image input", _image_input(schema, hp)])
    if schema.input_columns:
        shown = ", ".join(schema.input_columns[:8])
        more = f" and {len(schema.input_columns) - 8} more" if len(schema.input_columns) > 8 else ""
        rows.append(["tabular input", f"{len(schema.input_columns)} column(s): {shown}{more}"])
    if schema.has_images:
        rows.append(["image extractor", _component(hp.get("extractor"), "resnet18")])
    if schema.input_columns:
        linear = " with a linear term of the inputs" if getattr(module, "linear", False) else ""
        rows.append(["tabular extractor", _component(hp.get("tabular"), "mlp") + linear])
        for name, choice in (getattr(module, "linear_choices", None) or {}).items():
            rows.append([f"linear start of {name}", describe_choice(choice)])
    starts = getattr(module, "linear_choices", None) or {}
    for name, shrinkage in (getattr(module, "shrinkage", None) or {}).items():
        said = Shrinkage(**shrinkage).describe()
        factor = float(starts.get(name, {}).get("scale", 1.0) or 0.0)
        if linear_start and shrinkage.get("slope") is not None and factor != 1.0:
            # Two estimates of one thing from the same rows, which need not agree.
            said += (
                f"; the kept start's factor, {factor:.3g}, came from the partial likelihood of "
                "the held-out rows with the training rows in their risk sets, this slope from "
                "the validation rows alone"
            )
        rows.append([f"calibration of {name}", said])
    image_inputs = (len(schema.views) or 1) if schema.has_images else 0
    n_inputs = image_inputs + bool(schema.input_columns)
    if n_inputs > 1:
        rows.append(["mixer", _component(hp.get("mixer"), "concat")])
    heads = ", ".join(
        f"{spec.name} ({len(spec.classes)} classes)" if spec.classes else spec.name
        for spec in schema.labels
    )
    rows.append(["heads", f"{_component(hp.get('head'), 'linear')}, one per label: {heads}"])
    describe_head = getattr(getattr(module, "task", None), "describe_head", None)
    for j, spec in enumerate(schema.labels):
        if describe_head is not None and (text := describe_head(j)):
            rows.append([f"model of {spec.name}", text])
    if getattr(module, "ensemble", 1) > 1:
        averaged = getattr(getattr(module, "task", None), "averaged", "predictions")
        rows.append(["ensemble", f"{module.ensemble} members, {averaged} averaged"])
    if epochs_run is not None:
        stop = (
            f" (early stopping: no lower val_loss in the last {stopped_early})"
            if stopped_early
            else ""
        )
        rows.append(["epochs run", f"{int(epochs_run)}{stop}"])
    best = "lowest" if mode == "min" else "highest"
    if linear_start:
        chosen = "the linear start, before training"
        if start_choice is None and best_score is not None:  # a checkpoint of an older run
            chosen += f": {best} {monitor} = {best_score:.4g}"
        best_epoch = None
    else:
        chosen = f"epoch {best_epoch}" if best_epoch is not None else "the best checkpoint"
        if best_score is not None:
            chosen += f", {best} {monitor} of the epochs = {best_score:.4g}"
    if checkpoint:
        chosen += f" ({Path(checkpoint).name})"
    if start_choice is not None:
        chosen += f": {StartChoice(**start_choice).describe(monitor)}"
    rows.append(["checkpoint chosen", chosen])
    summary: dict[str, Any] = {"rows": rows, "best_epoch": best_epoch, "monitor": monitor}
    if linear_start:
        summary["linear_start_kept"] = True
    if getattr(module, "linear_choices", None):
        summary["linear_start"] = module.linear_choices
    if getattr(module, "shrinkage", None):
        summary["shrinkage"] = module.shrinkage
    return summary


def checkpoint_choice(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """How a Lightning checkpoint (``torch.load``-ed) was chosen: ``best_epoch`` (its epoch),
    ``monitor``, ``mode`` and ``best_score`` (its monitored value), from the state of the
    ModelCheckpoint callback that wrote it; what is not there is None."""
    found: dict[str, Any] = {"best_epoch": checkpoint.get("epoch"), "monitor": "val_loss"}
    found.update(mode="min", best_score=None)
    recorded = checkpoint.get(CHOICE_KEY)
    if isinstance(recorded, Mapping):
        found.update(monitor=recorded["monitor"], mode=recorded["mode"])
        found["best_score"] = float(recorded["score"])
        if recorded.get("linear_start"):
            found.update(best_epoch=None, linear_start=True)
        if isinstance(recorded.get("start_choice"), Mapping):
            found["start_choice"] = dict(recorded["start_choice"])
        return found
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(state, Mapping):
            continue
        if state.get("current_score") is None:
            continue
        found["monitor"] = str(state.get("monitor") or "val_loss")
        found["mode"] = "max" if "'mode': 'max'" in str(key) else "min"
        found["best_score"] = float(state["current_score"])
        break
    return found


def write_model_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    return write_json(Path(run_dir) / MODEL_SUMMARY, summary)
