"""What a training run prints: Lightning's messages that say nothing to a nervus_lightning user
are silenced at their source, one by one and each with its reason; without a terminal (a SLURM
log, ``> run.log``) progress is one line per epoch instead of a progress bar.

Everything here is scoped: :func:`quiet_lightning` restores the warning filters and logging
filters it changed when the ``with`` block ends, so a user's own Lightning code in the same
process keeps all of its messages.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


@dataclass(frozen=True)
class KnownWarning:
    """One warning that Lightning or torch emits on every run and that does not apply here."""

    message: str  # a regular expression matched at the start of the warning's text
    category: type[Warning]
    module: str  # the module the warning is attributed to (a regular expression)
    why: str


KNOWN_WARNINGS = (
    KnownWarning(
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
        "torch deprecated LeafSpec; Lightning's own _pytree helper still uses it on every batch "
        "transfer. Nothing a user can change; it goes once Lightning updates.",
    ),
    KnownWarning(
        r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        FutureWarning,
        r"lightning\.fabric\.utilities\.distributed",
        "LightningModule.all_gather (which NervusModule uses to gather the evaluation cases and "
        "the Cox loss's global batch) calls this torch function; Lightning offers no other "
        "gather. Nothing a user can change; it goes once Lightning updates.",
    ),
    KnownWarning(
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        PossibleUserWarning,
        r"lightning\.pytorch\.loops\.fit_loop",
        "every value NervusModule logs is an epoch value (on_step=False), which is logged at "
        "the end of every epoch whatever log_every_n_steps says.",
    ),
    KnownWarning(
        r"Precision bf16-mixed is not supported by the model summary",
        UserWarning,
        r"lightning\.pytorch\.utilities\.model_summary",
        "under bf16-mixed the weights stay 32-bit (autocast lowers the activations only), so "
        "the summary's size, which it computes with 32 bits, is right.",
    ),
    KnownWarning(
        r"Using `DistributedSampler` with the dataloaders\. During `trainer\.test\(\)`",
        PossibleUserWarning,
        r"lightning\.pytorch\.trainer\.connectors\.data_connector",
        "it recommends devices=1 because the sampler repeats cases to even out the processes' "
        "shares; NervusModule gathers every process's cases and drops the repeats "
        "(nervus_lightning.distributed.gather_cases), so every test case counts once.",
    ),
)

#: Lightning's advertisement for its cloud logger, printed by every Trainer whose loggers do
#: not include LitLogger (Lightning offers no switch for it).
ADVERTISEMENT = "💡 Tip: For seamless cloud logging"
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENT)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, :data:`KNOWN_WARNINGS` and Lightning's litlogger advertisement are not
    printed; every other warning and message is, once.

    ``import lightning`` gives its logger a console handler of its own (``INFO: ...``) and lets
    it propagate too; where the root logger has handlers (Hydra's console and ``.log`` file, or a
    user's own logging set-up) every Lightning line was printed twice. Within the block Lightning's
    own handler is set aside and its lines go through the root logger alone.
    """
    drop = _DropAdvertisement()
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    lightning_logger = logging.getLogger("lightning")
    set_aside = list(lightning_logger.handlers) if _root_prints(lightning_logger) else []
    with warnings.catch_warnings():
        for known in KNOWN_WARNINGS:
            warnings.filterwarnings(
                "ignore", message=known.message, category=known.category, module=known.module
            )
        for logger in loggers:
            logger.addFilter(drop)
        for handler in set_aside:
            lightning_logger.removeHandler(handler)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)
            for handler in set_aside:
                lightning_logger.addHandler(handler)


def _root_prints(logger: logging.Logger) -> bool:
    """Whether ``logger``'s records reach handlers of the root logger as well as its own."""
    return logger.propagate and bool(logging.getLogger().handlers)


def console_is_interactive() -> bool:
    """Whether a person watches the output live: stdout and stderr are terminals, or this is a
    Jupyter kernel (where Lightning's progress bars draw widgets)."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and hasattr(ipython, "get_ipython"):
        if type(ipython.get_ipython()).__name__ == "ZMQInteractiveShell":
            return True
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


class EpochLines(ProgressBar):
    """Progress for a log file: one line per epoch, and one line every ``every_s`` seconds
    within a long epoch, written to stdout by the first process only.

    A progress bar redraws itself with carriage returns, which a file keeps: TQDM's bar became
    one line of many thousand characters, Rich's showed the last epoch only. The line::

        epoch 3 [4/10] train_loss 0.4120 val_loss 0.3980 (12.3 s)

    counts epochs from 0 as checkpoint names and ``learning_curve.csv`` do; the bracket is the
    epoch's number out of ``trainer.max_epochs``.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._enabled = True
        self._epoch_start = 0.0
        self._last_line = 0.0
        self._batches = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _write(self, text: str) -> None:
        if self.is_enabled:
            print(text, flush=True)
            self._last_line = time.monotonic()

    def _epoch_label(self, trainer: L.Trainer) -> str:
        epoch = trainer.current_epoch
        total = trainer.max_epochs
        return f"epoch {epoch} [{epoch + 1}/{total}]" if total and total > 0 else f"epoch {epoch}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_line = time.monotonic()
        self._batches = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._batches += 1
        now = time.monotonic()
        if now - self._last_line < self.every_s:
            return
        total = self.total_train_batches
        of = f"/{total}" if isinstance(total, int) else ""
        rate = self._batches / max(now - self._epoch_start, 1e-9)
        self._write(f"{self._epoch_label(trainer)} batch {i + 1}{of} ({rate:.2f} batches/s)")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation of this epoch has run: its values are among the metrics.
        values = [
            f"{name} {value:.4f}"
            for name, value in sorted(self.get_metrics(trainer, pl_module).items())
            if isinstance(value, float)
        ]
        seconds = time.monotonic() - self._epoch_start
        self._write(" ".join([self._epoch_label(trainer), *values, f"({seconds:.1f} s)"]))
