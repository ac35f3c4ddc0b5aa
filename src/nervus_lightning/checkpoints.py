"""Checkpoint files: written atomically, and checked before they are read.

A run killed while writing a checkpoint, or a checkpoint half-copied to another machine, must
never be read as if it were whole, nor end in a pickle traceback. Every checkpoint is written
to a temporary file in the same folder, flushed to disk and renamed into place
(:class:`AtomicCheckpointIO`), so that the name always holds a complete file; and every
checkpoint given by a user (``predict``, ``export``, ``ckpt_path=`` to resume) is checked first
(:func:`check_checkpoint`): a truncated or corrupt file is a user error that names the file and
the newest intact checkpoint in the same folder.
"""

from __future__ import annotations

import errno
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nervus_lightning.data.datamodule import NervusDataModule
from nervus_lightning.errors import NervusInputError
from nervus_lightning.files import temporary_sibling
from nervus_lightning.module import NervusModule

CHECKPOINT_SUFFIX = ".ckpt"


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a whole PyTorch checkpoint, or None when it is.

    ``torch.save`` writes a zip archive whose directory sits at the end of the file and whose
    entries carry CRC-32 checksums: a truncated file has no directory, a corrupted one fails a
    checksum. Reading every entry costs about as much as loading the checkpoint.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return "it is truncated or not a PyTorch checkpoint (no zip directory at its end)"
    except (OSError, EOFError, ValueError, RuntimeError) as err:  # unreadable, or corrupt data
        return f"it cannot be read ({err})"
    if bad is not None:
        return f"it is corrupt (checksum of its entry '{bad}' does not match)"
    return None


def previous_good_checkpoint(path: str | os.PathLike) -> Path | None:
    """The newest other intact ``.ckpt`` file in the folder of ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return None
    others = [p for p in path.parent.glob(f"*{CHECKPOINT_SUFFIX}") if p.resolve() != path.resolve()]
    for candidate in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        if checkpoint_problem(candidate) is None:
            return candidate
    return None


def check_checkpoint(path: str | os.PathLike, option: str = "ckpt") -> Path:
    """``path`` if it is an existing, intact checkpoint; else a ``NervusInputError`` that names
    it, says what is wrong and points to the previous good checkpoint of its folder."""
    path = Path(path)
    if not path.is_file():
        raise NervusInputError(
            f"{option}: checkpoint not found: {path}. Pass the path of a .ckpt file."
        )
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    previous = previous_good_checkpoint(path)
    advice = (
        f"The previous good checkpoint in the same folder is {previous}: pass {option}={previous}."
        if previous is not None
        else "No other intact checkpoint is in the same folder; copy the file again or retrain."
    )
    raise NervusInputError(
        f"{option}: checkpoint {path} cannot be used: {problem} (a run killed while writing it, "
        f"or an incomplete copy). {advice}"
    )


def load_trained(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """The :class:`~nervus_lightning.module.NervusModule` of a checkpoint, after
    :func:`check_checkpoint` (so a truncated file is a clear error, not a pickle traceback):
    what ``predict``, ``explain`` and ``export`` start from."""
    return NervusModule.load_from_checkpoint(check_checkpoint(path), map_location=map_location)


def checkpoint_datamodule(module: Any, csv: str | os.PathLike, **loader: Any) -> Any:
    """A data module reading ``csv`` as ``module`` was trained to (its schema, image size and
    channels); ``loader`` holds ``batch_size`` / ``num_workers``."""
    return NervusDataModule(
        csv,
        schema=module.schema,
        image_size=module.hparams.image_size,
        in_channels=module.hparams.in_channels,
        **loader,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: the checkpoint goes to a temporary file in
    the target folder, is flushed to disk, then renamed over the target name (``os.replace``
    is atomic on one file system). A kill at any moment leaves either the old file or the new
    one, never a truncated file under the checkpoint's name."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomically(checkpoint, path)


def save_atomically(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a flushed temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_sibling(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = (
            f"{path.name} still holds the previous checkpoint"
            if path.exists()
            else "no earlier checkpoint was kept under that name"
        )
        raise NervusInputError(
            f"the disk of {path.parent} filled up while a checkpoint was written to "
            f"{path.name} ({err.strerror}); {kept}. Free some space and resume with "
            "ckpt_path=PATH, or choose a folder on another disk with hydra.run.dir=PATH."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


#: Key of a kept checkpoint's own record of why it was kept (monitor, mode, score): a
#: weights-only checkpoint carries no callback state to read it from.
CHOICE_KEY = "checkpoint_choice"


def record_checkpoint_choice(
    kept: Mapping[str, Any],
    monitor: str,
    mode: str,
    linear_start: bool = False,
    start_choice: Mapping[str, Any] | None = None,
) -> None:
    """Write into each checkpoint of ``kept`` (path -> monitored value, as a ModelCheckpoint's
    ``best_k_models``) the value it was kept for, so that the checkpoint alone says how it was
    chosen (``predict``'s model summary reads it). ``linear_start``: the checkpoints are the
    model as it started, before training (:class:`nervus_lightning.callbacks.
    LinearStartCheckpoint`). ``start_choice``: the comparison of that start with the best
    epoch (:class:`nervus_lightning.start_choice.StartChoice`, as plain numbers)."""
    for path, score in kept.items():
        if not Path(path).is_file():
            continue
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint[CHOICE_KEY] = {"monitor": monitor, "mode": mode, "score": float(score)}
        if linear_start:
            checkpoint[CHOICE_KEY]["linear_start"] = True
        if start_choice is not None:
            checkpoint[CHOICE_KEY]["start_choice"] = dict(start_choice)
        save_atomically(checkpoint, path)
