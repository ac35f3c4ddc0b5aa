"""The training recipe: data -> model -> callbacks -> trainer -> fit -> test -> outputs.

``train(settings, run_dir)`` takes :class:`~nervus_lightning.workflows.settings.TrainSettings`
(plain values; ``TrainSettings.from_config`` builds them from a plain dict shaped like the
``train`` config) and returns the validation objective (best ``val_loss``) so sweepers can
minimise it. The command line (:mod:`nervus_lightning.cli.train`) is ``python -m
nervus_lightning``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from nervus_lightning.callbacks import (
    LAST_CHECKPOINT,
    LearningCurve,
    LinearStartCheckpoint,
    RandomStates,
    build_checkpoint_callbacks,
    build_early_stopping,
)
from nervus_lightning.checkpoints import (
    AtomicCheckpointIO,
    check_checkpoint,
    record_checkpoint_choice,
)
from nervus_lightning.cluster import resume_checkpoint, trainer_options
from nervus_lightning.console import EpochLines, console_is_interactive, quiet_lightning
from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.data.demo import DEMO_TIME_UNIT
from nervus_lightning.data.schema import DataSchema
from nervus_lightning.data.sources import resolve_data
from nervus_lightning.errors import TEST, VAL, NervusInputError
from nervus_lightning.module import NervusModule
from nervus_lightning.outputs import (
    PREDICTIONS,
    model_summary,
    write_json,
    write_metrics_json,
    write_model_summary,
    write_predictions,
)
from nervus_lightning.start_choice import StartChoice, choose_start
from nervus_lightning.workflows.evaluate import check_evaluation_options, evaluate_run
from nervus_lightning.workflows.explain import check_explain_options, explain_after_training
from nervus_lightning.workflows.settings import TrainSettings

log = logging.getLogger(__name__)
# What every process would say alike before the processes meet (each DDP process runs the
# command from its start): said by the first one only.
say_once = rank_zero_only(log.info)
warn_once = rank_zero_only(log.warning)


def build_datamodule(settings: TrainSettings, **overrides: Any) -> NervusDataModule:
    """The data module of ``settings.data``; ``overrides`` replace its keyword arguments (e.g.
    the preview reads images only)."""
    data = settings.data
    csv, labels, demo = resolve_data(
        data.csv,
        data.labels,
        preset=data.preset,
        demo_root=data.demo_root,
        split_seed=data.split_seed,
        demo_labels=settings.task.get("demo_labels"),
    )
    options = {
        "task": settings.task["name"],
        "labels": labels,
        "image_size": data.image_size,
        "in_channels": data.in_channels,
        "batch_size": data.batch_size,
        "num_workers": data.num_workers,
        "use_images": settings.extractor.get("name") != "none",
        "use_tabular": settings.tabular.get("name") != "none",
        "augmentation": settings.augmentation,
        "augmentation_options": settings.augmentation_options,
        "sampler": settings.sampler,
        "bit_depth": data.bit_depth,
        "window": data.window,
        "frame": data.frame,
        "missing_views": data.missing_views,
        "cache": data.cache,
        "cache_dir": data.cache_dir,
        "cache_max_gb": data.cache_max_gb,
        "time_unit": data.time_unit or (DEMO_TIME_UNIT if demo else None),
        "volume_size": data.volume_size,
        "spacing": data.spacing,
    }
    return NervusDataModule(csv, **{**options, **overrides})


def evaluation_options(settings: TrainSettings) -> dict[str, Any]:
    """``evaluation.*`` checked; on the demo data, the demo's positive classes by default."""
    options = check_evaluation_options(deepcopy(settings.evaluation))
    if settings.data.is_demo and not options.get("positive_class"):
        options["positive_class"] = deepcopy(settings.task.get("demo_positive_class")) or None
    return options


def build_module(
    settings: TrainSettings, schema: DataSchema, evaluation: dict[str, Any] | None = None
) -> NervusModule:
    """The Lightning module of ``settings`` for the data's ``schema`` (each option a copy: the
    settings stay as they were given)."""
    if settings.channels_last and schema.is_volume:
        raise NervusInputError(
            "model.channels_last=true is for 2D images (4D tensors); volumes are 5D. Set "
            "model.channels_last=false."
        )
    return NervusModule(
        schema,
        extractor=deepcopy(settings.extractor),
        tabular=deepcopy(settings.tabular),
        mixer=deepcopy(settings.mixer),
        head=deepcopy(settings.head),
        task=deepcopy(settings.task),
        optimizer=deepcopy(settings.optimizer),
        scheduler=deepcopy(settings.scheduler),
        in_channels=settings.data.in_channels,
        image_size=settings.data.image_size,
        channels_last=settings.channels_last,
        ensemble=settings.ensemble,
        evaluation=evaluation,
        run_config=deepcopy(settings.run_config),
    )


def uses_cuda(accelerator: Any) -> bool:
    """Whether Lightning's ``accelerator`` option resolves to CUDA GPUs on this machine."""
    if not isinstance(accelerator, str):  # an Accelerator instance
        return type(accelerator).__name__ == "CUDAAccelerator"
    name = accelerator.lower()
    if name == "cuda":
        return True
    return name in ("gpu", "auto") and torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix kernels natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def build_trainer(
    trainer: Mapping[str, Any], run_dir: Path, callbacks: list[L.Callback]
) -> L.Trainer:
    """The Lightning trainer of the ``trainer`` options (``lightning.Trainer``'s keyword
    arguments); Lightning's refusal of an option is a user error.

    ``sync_batchnorm`` (batch-norm statistics over every process's batch) is honoured on CUDA
    only, where PyTorch implements it; elsewhere (``trainer=ddp trainer.accelerator=cpu``) each
    process keeps its own statistics, and the log says so. Without a terminal (a SLURM log,
    output redirected to a file) the progress bar is :class:`~nervus_lightning.console.EpochLines`,
    one line per epoch.
    """
    # Under SLURM, Lightning's SLURM plugin (auto-requeue on the preemption signal).
    options = trainer_options(dict(trainer))
    # Checkpoints are written to a temporary file and renamed: never a truncated last.ckpt.
    plugins = list(options.get("plugins") or [])
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    options["plugins"] = plugins
    precision = str(options.get("precision", ""))
    if precision in ("16", "16-mixed") and not uses_cuda(options.get("accelerator", "auto")):
        # fp16 autocast is CUDA's; Lightning would switch to bf16-mixed with a warning, which
        # is emulated (and slow) on most CPUs. Decide here and say it once.
        precision = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
        say_once(
            "trainer.precision=%s needs a CUDA GPU; on %s this run uses %s.",
            options["precision"],
            options.get("accelerator", "auto"),
            precision,
        )
        options["precision"] = precision
    elif precision.startswith("bf16") and not uses_cuda(options.get("accelerator", "auto")):
        if not cpu_has_native_bf16():
            warn_once(
                "trainer.precision=%s on a CPU without native bfloat16 kernels (AVX512-BF16 or "
                "AMX): bf16 operations are emulated and training is much slower than in fp32 "
                "(measured on such a CPU: a ResNet18 step on 32 images of 64 px took 20 times "
                "longer). Use trainer.precision=32-true on this machine.",
                precision,
            )
    if options.get("sync_batchnorm") and not uses_cuda(options.get("accelerator", "auto")):
        say_once(
            "trainer.sync_batchnorm is off: SyncBatchNorm needs CUDA GPUs and the accelerator is "
            "%s; each process normalises with its own batch statistics.",
            options.get("accelerator", "auto"),
        )
        options["sync_batchnorm"] = False
    showing_progress = options.get("enable_progress_bar") is not False
    if showing_progress and not any(isinstance(c, ProgressBar) for c in callbacks):
        if not console_is_interactive():
            callbacks = [*callbacks, EpochLines()]
    try:
        return L.Trainer(
            **options,
            default_root_dir=str(run_dir),
            callbacks=callbacks,
            logger=TensorBoardLogger(str(run_dir), name="tensorboard", version=""),
        )
    except TypeError as err:  # an argument lightning.Trainer does not take
        raise NervusInputError(
            f"trainer options: {err}. See lightning.Trainer's arguments."
        ) from None
    except (ValueError, MisconfigurationException) as err:
        raise NervusInputError(f"trainer options {options}: {err}") from None


#: Room for what a run writes besides checkpoints (logs, predictions, report, figures).
OUTPUT_MARGIN_BYTES = 100 * 2**20
#: Checkpoint files on disk at once, in multiples of the weights' size: the best checkpoint
#: (weights only: 1), last.ckpt (the weights plus an optimiser's two moments, as Adam keeps: 3)
#: and a new last.ckpt being written beside it (3).
CHECKPOINT_WEIGHTS_AT_ONCE = 7


def check_output_folder(run_dir: Path, module: L.LightningModule) -> None:
    """Stop before the first epoch, not after hours, when the run folder cannot take the run's
    files: it must be writable, and its disk must have room for the checkpoints kept at once
    plus a margin.
    """
    checkpoints = run_dir / "checkpoints"
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=checkpoints, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise NervusInputError(
            f"the output folder {run_dir} is not writable ({err.strerror or err}); nothing was "
            "trained. Fix its permissions, or choose another folder with hydra.run.dir=PATH."
        ) from None
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    checkpoints_bytes = CHECKPOINT_WEIGHTS_AT_ONCE * weights
    needed = checkpoints_bytes + OUTPUT_MARGIN_BYTES
    free = shutil.disk_usage(checkpoints).free
    if free < needed:
        mib = 2**20
        raise NervusInputError(
            f"the output folder {run_dir} has {free / mib:.0f} MiB free, and this run needs "
            f"about {needed / mib:.0f} MiB ({checkpoints_bytes / mib:.0f} MiB for the best "
            f"checkpoint and last.ckpt, written anew, plus {OUTPUT_MARGIN_BYTES / mib:.0f} MiB "
            "for logs and outputs); nothing was trained. Free some space, or choose a folder "
            "on another disk with hydra.run.dir=PATH."
        )


def record_kept_models(
    checkpoint: ModelCheckpoint,
    start_path: Path,
    start_choice: StartChoice | None,
    policy: str,
) -> None:
    """Record in each kept checkpoint why it was kept, and remove the one that lost:
    ``checkpoint=best`` keeps one model (the linear start or the best epoch's, as
    :func:`~nervus_lightning.start_choice.choose_start` chose), ``checkpoint=each``
    every model that was the best when it was made, the start too. ``start_choice`` is None
    when the run saved no start."""
    keep_losers = policy != "best"
    start_kept = start_choice is not None and start_choice.kept
    summary = start_choice.summary() if start_choice is not None else None
    monitor, mode, best = checkpoint.monitor, checkpoint.mode, checkpoint.best_model_path
    if not start_kept or keep_losers:
        # The comparison with the start is about the best epoch only.
        others = {p: s for p, s in checkpoint.best_k_models.items() if p != best}
        record_checkpoint_choice(others, monitor, mode)
        best_kept = {best: checkpoint.best_k_models[best]}
        record_checkpoint_choice(best_kept, monitor, mode, start_choice=summary)
    if start_choice is not None and (start_kept or keep_losers):
        record_checkpoint_choice(
            {str(start_path): start_choice.start_loss},
            monitor,
            mode,
            linear_start=True,
            start_choice=summary,
        )
    if not keep_losers:
        loser = Path(best) if start_kept else start_path
        loser.unlink(missing_ok=True)


@quiet_lightning()
def train(
    settings: TrainSettings, run_dir: str | Path, callbacks: Sequence[L.Callback] = ()
) -> float:
    """Fit, test with the best checkpoint, and write every output into ``run_dir``.

    Every option is checked before the first epoch (data, model, optimiser, task, evaluation).
    After training, on the training accelerator: the task's post-training state is fitted with
    each kept checkpoint's own weights (thresholds on val, survival baseline on train), then the
    best model predicts every case, and the evaluation report and ``metrics.json`` are written
    from the same computation. ``callbacks`` are added to the run's own (checkpoints, random
    states, learning curve).

    ``settings.ckpt_path`` (e.g. ``.../checkpoints/last.ckpt``) resumes: with the same
    configuration the run ends with the same weights as one that was never interrupted (in
    deterministic mode), because the checkpoint carries the position in the epoch and the random
    states.

    Lightning's warnings that do not apply to this recipe are not printed
    (:data:`~nervus_lightning.console.KNOWN_WARNINGS`, each with its reason).
    """
    run_dir = Path(run_dir)
    L.seed_everything(settings.seed, workers=True)
    evaluation = evaluation_options(settings)
    datamodule = build_datamodule(settings)
    module = build_module(settings, datamodule.schema, evaluation)
    check_explain_options(settings.explain, module, datamodule)

    checkpoint, last = build_checkpoint_callbacks(
        settings.checkpoint_policy, run_dir / "checkpoints", settings.every_n_train_steps
    )
    start = LinearStartCheckpoint(run_dir / "checkpoints")
    run_callbacks = [checkpoint, last, start, RandomStates(), LearningCurve(run_dir), *callbacks]
    stopping = build_early_stopping(settings.early_stopping)
    if stopping is not None:
        run_callbacks.append(stopping)
    # An explicit ckpt_path, else (a requeued SLURM job) the newest checkpoint of the run.
    resume = resume_checkpoint(settings.ckpt_path, run_dir)
    if resume:
        check_checkpoint(resume, "ckpt_path")
    # Trainer options are checked first: a typo must not leave a checkpoints folder behind.
    trainer = build_trainer(settings.trainer, run_dir, run_callbacks)
    check_output_folder(run_dir, module)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    best_path = checkpoint.best_model_path
    if not best_path:
        raise RuntimeError("training produced no checkpoint (did validation run?)")
    best_score = float(checkpoint.best_model_score)
    device = trainer.strategy.root_device
    start_choice = choose_start(start.path, best_path, datamodule.eval_dataloader(VAL), device)
    start_kept = start_choice is not None and start_choice.kept
    if start_choice is not None:
        kept = "the linear start, before training" if start_kept else Path(best_path).name
        log.info("kept %s: %s", kept, start_choice.describe())
    if start_kept:
        best_path, best_score = str(start.path), start_choice.start_loss
    if (datamodule.frame["split"] == TEST).any():
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path)
    if not trainer.is_global_zero:
        return best_score

    record_kept_models(checkpoint, start.path, start_choice, settings.checkpoint_policy)
    log.info("post-training work (thresholds, baseline hazard, predictions) on %s", device)
    best = NervusModule.load_from_checkpoint(best_path, map_location=device)
    best.shrink_to_validation(datamodule, device)
    if best.task.post_training_splits:
        # Every kept checkpoint gets the state fitted with its own weights (calibration slope,
        # baseline hazard, thresholds), so that any of them alone is enough to predict.
        for path in Path(checkpoint.dirpath).glob("*.ckpt"):
            if str(path) != best_path:
                kept = NervusModule.load_from_checkpoint(path, map_location=device)
                if path.name != LAST_CHECKPOINT:  # last.ckpt resumes training: weights as trained
                    kept.shrink_to_validation(datamodule, device)
                kept.finalize(datamodule, str(path), device=device)
    outputs = best.infer(datamodule.predict_dataloader(), device)
    best.finalize(datamodule, best_path, outputs=outputs)
    write_predictions(best, datamodule, run_dir, outputs)
    write_model_summary(
        run_dir,
        model_summary(
            best,
            epochs_run=trainer.current_epoch,
            best_epoch=torch.load(best_path, map_location="cpu", weights_only=True).get("epoch"),
            monitor=str(checkpoint.monitor),
            mode=str(checkpoint.mode),
            best_score=best_score,
            checkpoint=best_path,
            stopped_early=stopping.patience if stopping and stopping.stopped_epoch else None,
            linear_start=start_kept,
            start_choice=start_choice.summary() if start_choice is not None else None,
        ),
    )
    explain_after_training(settings.explain, best, datamodule, run_dir, device)
    table = evaluate_run(run_dir / PREDICTIONS, **evaluation)
    metrics = write_metrics_json(run_dir, table)
    objective = best_score
    # Written last: its presence says the run finished.
    write_json(
        run_dir / "summary.json",
        {
            "best_checkpoint": best_path,
            "best_val_loss": objective,
            "metrics": metrics,
            # The run diagnostics' findings (also atop the report): empty when none.
            "warnings": list(table.attrs.get("warnings", [])),
        },
    )
    log.info("best checkpoint %s (val_loss %.4f); outputs in %s", best_path, objective, run_dir)
    return objective
