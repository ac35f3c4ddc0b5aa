"""Lightning callbacks of a run: checkpoint policies, the random states that make a resumed run
continue exactly, and the learning curve."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from nervus_lightning.errors import NervusInputError
from nervus_lightning.evaluation.plots import MARKED_EPOCHS
from nervus_lightning.options import check_keys, check_number
from nervus_lightning.outputs import atomic_write, write_csv

CHECKPOINT_POLICIES = ("best", "each")
#: File name, in the checkpoints folder, of the checkpoint that resumes training
#: (:class:`ResumeCheckpoint`); never changed after training.
LAST_CHECKPOINT = "last.ckpt"
#: Seconds of training after which an epoch's end rewrites ``last.ckpt``
#: (:class:`ResumeCheckpoint`).
RESUME_EVERY_S = 60.0
#: Seconds after which an epoch's end rewrites ``learning_curve.csv`` (:class:`LearningCurve`).
CURVE_EVERY_S = 5.0
#: File name, in the checkpoints folder, of the model as it starts (:class:`LinearStartCheckpoint`).
LINEAR_START_CHECKPOINT = "linear_start.ckpt"


class ImprovementCheckpoint(ModelCheckpoint):
    """Save a new checkpoint every time the monitored value improves; never delete older ones."""

    def __init__(self, **kwargs) -> None:
        super().__init__(save_top_k=-1, **kwargs)

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None or torch.isnan(current):
            return False
        if self.best_model_score is None:
            improved = True
        else:
            op = torch.lt if self.mode == "min" else torch.gt
            improved = bool(op(current, self.best_model_score.to(current.device)))
        return trainer.strategy.reduce_boolean_decision(improved)


def build_checkpoint_callbacks(
    policy: str, dirpath: str | os.PathLike, every_n_train_steps: int | None = None
) -> tuple[ModelCheckpoint, ResumeCheckpoint]:
    """The run's two checkpoint writers: ``(best, last)``.

    ``best`` keeps the lowest-val_loss checkpoint (``policy="best"``) or every improvement
    (``"each"``) with the weights, hyperparameters and what the model stores itself (schema,
    scaler, survival aggregates): all that predict, export and explain read, and no optimiser
    state (a ResNet18 checkpoint is then a third of the size). ``last`` writes ``last.ckpt``
    with the full training state (optimiser, scheduler, loops, random states) that
    ``ckpt_path=`` needs to resume (:class:`ResumeCheckpoint`).
    """
    options = dict(
        dirpath=str(dirpath),
        monitor="val_loss",
        mode="min",
        save_weights_only=True,
        filename="epoch{epoch:03d}-val_loss{val_loss:.4f}",
        auto_insert_metric_name=False,
    )
    if policy == "best":
        best = ModelCheckpoint(save_top_k=1, **options)
    elif policy == "each":
        best = ImprovementCheckpoint(**options)
    else:
        raise NervusInputError(
            f"checkpoint policy '{policy}' is not one of {list(CHECKPOINT_POLICIES)}."
        )
    return best, ResumeCheckpoint(dirpath, every_n_train_steps=every_n_train_steps)


def build_early_stopping(options: dict[str, Any] | None) -> EarlyStopping | None:
    """Stop training once ``val_loss`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs in a row (``early_stopping.*``; ``patience: null`` trains every one of
    ``trainer.max_epochs``). The kept checkpoint is the lowest-val_loss one either way: early
    stopping only saves the epochs that could no longer change it much."""
    options = dict(options or {})
    check_keys("early_stopping", options, ("patience", "min_delta"))
    patience = options.get("patience")
    if patience is None:
        return None
    check_number("early_stopping.patience", patience, low=1, integer=True)
    min_delta = check_number("early_stopping.min_delta", options.get("min_delta", 0.0), low=0)
    return EarlyStopping(
        monitor="val_loss",
        mode="min",
        patience=int(patience),
        min_delta=float(min_delta),
        # Lightning's own message would print twice (its logger and Hydra's); model_summary.json
        # and the report say when training stopped early.
        verbose=False,
    )


class ResumeCheckpoint(Checkpoint):
    """``last.ckpt``: the whole training state (weights, optimiser, scheduler, the loops'
    position, every callback's state) that ``ckpt_path=`` resumes from.

    Written at the end of an epoch when at least ``every_s`` seconds have passed since it was
    last written (so after every epoch of a run whose epochs take that long), at the end of the
    last epoch and when training ends, and, with ``every_n_train_steps``, after every that many
    optimiser steps (inside an epoch: the loader resumes at the saved batch). A killed run
    loses at most the epoch in progress and the ``every_s`` seconds before it. A full-batch
    tabular run trains hundreds of epochs of a few milliseconds each; writing the optimiser's
    state after every one of them would cost as much time as the training.

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)``, which wrote this file before,
    writes ``last.ckpt`` since Lightning 2.6 only beside a top-k checkpoint saved at the same
    step: with none kept, a killed run had no ``last.ckpt`` at all. Being a
    :class:`~lightning.pytorch.callbacks.Checkpoint`, this callback runs after the others at
    an epoch's end (Lightning's order), so the file holds their state of that epoch.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_train_steps: int | None = None,
        every_s: float | None = None,
    ) -> None:
        if every_n_train_steps is not None and (
            isinstance(every_n_train_steps, bool)
            or not isinstance(every_n_train_steps, int)
            or every_n_train_steps < 1
        ):
            raise NervusInputError(
                f"checkpoint.every_n_train_steps must be a positive integer or null, got "
                f"{every_n_train_steps!r}."
            )
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_train_steps = every_n_train_steps
        self.every_s = RESUME_EVERY_S if every_s is None else float(every_s)
        self._saved_step: int | None = None
        self._saved_at = time.monotonic()

    def _may_save(self, trainer: L.Trainer) -> bool:
        return (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
            and trainer.global_step != self._saved_step  # nothing new since the last write
        )

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_at = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        every = self.every_n_train_steps
        if every and trainer.global_step % every == 0 and self._may_save(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._may_save(trainer):
            return
        due = time.monotonic() - self._saved_at >= self.every_s
        max_epochs = trainer.max_epochs
        final = trainer.should_stop or (
            max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
        )
        # Saving is collective (every process writes its part or waits at a barrier): the
        # processes take the first one's decision, whatever their own clocks say.
        if trainer.strategy.broadcast(due or final, src=0):
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training that ends inside an epoch (trainer.max_steps, max_time) or after an epoch
        # end that did not save.
        if self._may_save(trainer):
            self._save(trainer)


class LinearStartCheckpoint(L.Callback):
    """Save the model as it starts, before the first training step, when it starts as a
    penalised linear model: every head's linear term at its fit, the network's path adding
    nothing (:mod:`nervus_lightning.models.linear_start`).

    After training, this start competes with the epochs' best checkpoint on the validation loss
    (:func:`nervus_lightning.start_choice.choose_start`): on small or nearly linear data the
    epochs after the start mostly fit noise, and the lowest val_loss over many epochs is an
    optimistic estimate, so the start is kept unless the best epoch beat it by more than one
    standard error. A resumed run (a global step above 0) keeps the file its first part wrote.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.path = Path(dirpath) / LINEAR_START_CHECKPOINT

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0 and getattr(pl_module, "linear_choices", None):
            trainer.save_checkpoint(self.path, weights_only=True)


class RandomStates(L.Callback):
    """Store the global random states (Python, NumPy, torch CPU and CUDA) in every checkpoint
    and put them back when training resumes, so that dropout and augmentation draw what an
    uninterrupted run would have drawn. (Lightning restores the loops, optimiser and callbacks
    but not these.)

    The states are put back when training starts, after the sanity validation, whose data
    loader draws from them too. Stored as tensors and plain values, so ``torch.load(...,
    weights_only=True)`` still reads the checkpoint.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np_state = state["numpy"]
        np.random.set_state(
            (
                np_state["kind"],
                np_state["keys"].numpy().astype(np.uint32),
                np_state["pos"],
                np_state["has_gauss"],
                np_state["cached_gaussian"],
            )
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class LearningCurve(L.Callback):
    """One row per epoch (``epoch``, ``train_loss``, ``val_loss``, per-label losses and val
    metrics) in ``learning_curve.csv``, rewritten at the end of an epoch when ``every_s``
    seconds have passed since it was last written (after every epoch of a run whose epochs take
    that long), when training ends or fails; ``learning_curve.png`` at the end, with the epoch
    of the lowest ``val_loss`` (the checkpoint kept) marked. A full-batch tabular run's epochs
    take milliseconds, and rewriting the whole table after each cost as much as the epoch."""

    def __init__(self, out_dir: str | os.PathLike, every_s: float | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.every_s = CURVE_EVERY_S if every_s is None else float(every_s)
        self.rows: list[dict[str, float]] = []
        self._written = 0  # rows in the file
        self._written_at = time.monotonic()

    # A resumed run continues the curve of the epochs before the checkpoint.
    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation has already run for this epoch when the training epoch ends.
        metrics = trainer.callback_metrics
        if "val_loss" not in metrics:
            return
        row = {"epoch": trainer.current_epoch}
        for key in sorted(metrics):
            if key.startswith(("train_", "val_")):
                row[key] = float(metrics[key])
        self.rows.append(row)
        if time.monotonic() - self._written_at >= self.every_s:
            self.write()

    def write(self) -> None:
        """Rewrite ``learning_curve.csv`` with every row so far (if any is new)."""
        if len(self.rows) != self._written:
            write_csv(self.out_dir / "learning_curve.csv", self.frame())
            self._written = len(self.rows)
        self._written_at = time.monotonic()

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        first = [c for c in ("epoch", "train_loss", "val_loss") if c in frame.columns]
        return frame[first + [c for c in frame.columns if c not in first]]

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write()

    @rank_zero_only
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.write()

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.rows:
            plot_learning_curve(self.frame(), self.out_dir / "learning_curve.png")


def plot_learning_curve(frame: pd.DataFrame, path: Path) -> Path:
    """Train and val loss per epoch; a dashed line at the (first) epoch of the lowest val_loss,
    the one whose checkpoint the ``val_loss`` checkpoint policies keep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # A marker per epoch shows a short run's epochs; hundreds of them only thicken the line.
    marker = "o" if len(frame) <= MARKED_EPOCHS else None
    for col in ("train_loss", "val_loss"):
        if col in frame.columns:
            ax.plot(frame["epoch"], frame[col], marker=marker, label=col.replace("_", " "))
    if "val_loss" in frame.columns and frame["val_loss"].notna().any():
        best = int(frame.loc[frame["val_loss"].idxmin(), "epoch"])
        ax.axvline(best, color="black", ls="--", lw=1, label=f"lowest val loss (epoch {best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (sum over labels)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
