"""External validation: :func:`predict` a CSV with a checkpoint (the command line,
:mod:`nervus_lightning.cli.predict`: ``python -m nervus_lightning.predict ckpt=PATH
data.csv=PATH``).

Loads a checkpoint (which carries the schema, class names, input statistics, the evaluation
contract and, for survival, training aggregates: baseline hazard, rounded times), reads the CSV
with that schema and writes predictions, the evaluation report and metrics. Nothing of the
training machine is needed: no training CSV, no pretrained-weights file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from nervus_lightning.checkpoints import checkpoint_datamodule, load_trained
from nervus_lightning.errors import NervusInputError
from nervus_lightning.outputs import (
    PREDICTIONS,
    checkpoint_choice,
    model_summary,
    write_metrics_json,
    write_model_summary,
    write_predictions,
)
from nervus_lightning.workflows.evaluate import check_evaluation_options, evaluate_run

log = logging.getLogger(__name__)


def inference_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; ``gpu`` means ``cuda``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "gpu":
        device = "cuda"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise NervusInputError(
            f"device={device!r} is not a device ({err}); use auto, cpu, cuda or cuda:<index>."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise NervusInputError(f"device={device!r}: no CUDA GPU on this machine; use device=cpu.")
    return resolved


def predict(
    ckpt: str | Path,
    csv: str | Path,
    out_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    evaluation: dict[str, Any] | None = None,
) -> dict:
    """Predict ``csv`` with the model in ``ckpt``; write outputs to ``out_dir``; return metrics.

    Where the CSV has labels, the evaluation report (``out_dir/evaluation``) and
    ``metrics.json`` are written too. ``evaluation`` takes the options of the ``evaluation``
    config group; ``threshold``, ``target_sensitivity`` and ``positive_class`` left at ``None``
    apply the contract stored in the checkpoint (its threshold included), and a value that
    differs from it is an override, said in the log and in ``metrics_notes.csv``."""
    evaluation = check_evaluation_options(evaluation or {})
    device = inference_device(device)
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise NervusInputError(f"checkpoint not found: {ckpt}. Pass ckpt=PATH of a .ckpt file.")
    module = load_trained(ckpt, map_location=device)
    datamodule = checkpoint_datamodule(module, csv, batch_size=batch_size, num_workers=num_workers)
    log.info("predicting %d case(s) of %s on %s", len(datamodule.frame), csv, device)
    outputs = module.infer(datamodule.predict_dataloader(), device)
    predictions = write_predictions(module, datamodule, out_dir, outputs)
    # What the model is, for the top of the report (aggregates of the checkpoint only).
    chosen = checkpoint_choice(torch.load(ckpt, map_location="cpu", weights_only=True))
    write_model_summary(out_dir, model_summary(module, epochs_run=None, checkpoint=ckpt, **chosen))
    metrics: dict = {}
    if any(spec.name in predictions.columns for spec in module.schema.labels):
        table = evaluate_run(Path(out_dir) / PREDICTIONS, **evaluation)
        metrics = write_metrics_json(out_dir, table)
    log.info("predictions of %s written to %s", csv, out_dir)
    return metrics
