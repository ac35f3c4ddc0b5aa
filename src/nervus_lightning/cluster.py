"""Running under SLURM: Lightning's SLURM plugin and resuming a requeued job.

This module owns what a training run does differently inside a SLURM allocation:

* :func:`trainer_options` turns the ``trainer.*`` options into ``lightning.Trainer`` arguments:
  it removes the ``slurm`` block (``auto_requeue``, ``requeue_signal``; no Trainer argument) and,
  when the process runs as a SLURM task, adds Lightning's ``SLURMEnvironment`` plugin with them.
  On the requeue signal (``SIGUSR1`` by default; ``conf/hydra/launcher/slurm.yaml`` asks SLURM
  to send it ``signal_delay_s`` seconds before a time limit or preemption) Lightning saves
  ``hpc_ckpt_<n>.ckpt`` in the run folder and requeues the job with ``scontrol requeue``.
* :func:`resume_checkpoint` chooses what a requeued job (``SLURM_RESTART_COUNT`` > 0) resumes
  from when no ``ckpt_path`` was given: the newest of those ``hpc_ckpt_<n>.ckpt`` files and
  ``checkpoints/last.ckpt`` in its run folder (a job that died without the signal, e.g. on a node
  failure, still has ``last.ckpt``).

Outside SLURM both are no-ops, so they are always called.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment

from nervus_lightning.errors import NervusInputError

log = logging.getLogger(__name__)

SLURM_KEY = "slurm"
DEFAULT_REQUEUE_SIGNAL = "SIGUSR1"


def running_under_slurm() -> bool:
    """True in a SLURM batch task (Lightning's rule: ``SLURM_NTASKS`` set, not an interactive
    ``srun --pty bash`` session)."""
    return SLURMEnvironment.detect()


def _signal(name: Any) -> signal.Signals:
    text = str(name).upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return signal.Signals[text]
    except KeyError:
        raise NervusInputError(
            f"trainer.slurm.requeue_signal={name} is no signal name; use SIGUSR1 (the signal "
            "conf/hydra/launcher/slurm.yaml asks SLURM to send) or another, e.g. SIGUSR2."
        ) from None


def trainer_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``lightning.Trainer`` arguments from ``trainer.*``, with the SLURM plugin under SLURM.

    Args:
        options: the plain ``trainer`` config; its optional ``slurm`` block holds
            ``auto_requeue`` (default true) and ``requeue_signal`` (default ``SIGUSR1``).

    Returns:
        A copy without ``slurm``; under SLURM with ``plugins=[SLURMEnvironment(...)]`` added,
        unless ``plugins`` was given.
    """
    options = dict(options)
    slurm = dict(options.pop(SLURM_KEY, None) or {})
    unknown = set(slurm) - {"auto_requeue", "requeue_signal"}
    if unknown:
        raise NervusInputError(
            f"trainer.slurm has unknown keys {sorted(unknown)}; it takes auto_requeue and "
            "requeue_signal."
        )
    requeue_signal = _signal(slurm.get("requeue_signal") or DEFAULT_REQUEUE_SIGNAL)
    if running_under_slurm() and not options.get("plugins"):
        auto_requeue = bool(slurm.get("auto_requeue", True))
        options["plugins"] = [
            SLURMEnvironment(auto_requeue=auto_requeue, requeue_signal=requeue_signal)
        ]
        log.info(
            "SLURM job %s: Lightning's SLURM plugin, auto-requeue %s",
            os.environ.get("SLURM_JOB_ID"),
            f"on {requeue_signal.name}" if auto_requeue else "off",
        )
    return options


def resume_checkpoint(ckpt_path: str | None, run_dir: str | os.PathLike) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    An explicit ``ckpt_path`` wins. Otherwise, in a requeued SLURM job, the newest of
    ``<run_dir>/hpc_ckpt_*.ckpt`` (saved by Lightning on the requeue signal) and
    ``<run_dir>/checkpoints/last.ckpt``; ``None`` (train from scratch) everywhere else.
    """
    if ckpt_path:
        return str(ckpt_path)
    if not running_under_slurm() or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    run_dir = Path(run_dir)
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        log.warning("requeued SLURM job without a checkpoint in %s: training from scratch", run_dir)
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime_ns)
    log.info(
        "requeued SLURM job (restart %s): resuming from %s",
        os.environ["SLURM_RESTART_COUNT"],
        newest,
    )
    return str(newest)
