"""The linear start against the trained network: the simpler model is kept unless training
beat it by more than one standard error on the validation rows.

A net with linear terms starts as a penalised linear model (:mod:`nervus_lightning.models.
linear_start`), saved before the first step (:class:`~nervus_lightning.callbacks.
LinearStartCheckpoint`). After training it competes with the epoch of lowest ``val_loss``.
That lowest value is the minimum over a hundred noisy estimates, so it flatters the epoch
chosen; with few validation events (ten in a 200-patient survival study) a network that fitted
noise wins that comparison about as often as one that learned something. The rule that glmnet
(``lambda.1se``) and CART pruning use settles it: the network is kept only when its validation
loss is lower than the start's by more than one standard error of the difference, and the start
(fewer effective parameters) otherwise. The standard error comes from resampling the
validation cases with replacement and recomputing both models' losses on each resample, the
same loss as ``val_loss`` (a Cox loss has risk sets shared between cases, so it does not split
into independent per-case terms). Every number is of the validation rows, never of the test
rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from nervus_lightning.distributed import concat_records
from nervus_lightning.module import INPUT_KEYS, NervusModule

#: Resamples of the validation cases for the standard error of the loss difference: its
#: relative error is about 1 / sqrt(2 x 200) = 5 %, and 400 loss evaluations of a few thousand
#: precomputed outputs take well under a second.
RESAMPLES = 200
#: Seed of the resampling, its own generator: the choice is the same on every run and process.
RESAMPLING_SEED = 0
_OUTPUT = "output"


@dataclass(frozen=True)
class StartChoice:
    """The linear start (``start_loss``) against the best epoch (``best_loss``) on the
    validation rows: ``se`` is the bootstrap standard error of ``start_loss - best_loss``
    (``resamples`` resamples); ``kept`` says whether the start was kept."""

    start_loss: float
    best_loss: float
    se: float
    resamples: int
    kept: bool

    @property
    def gain(self) -> float:
        """How much lower the best epoch's validation loss is than the start's."""
        return self.start_loss - self.best_loss

    def summary(self) -> dict[str, Any]:
        """Plain numbers for checkpoints and ``model_summary.json`` (no patient data)."""
        return asdict(self)

    def describe(self, monitor: str = "val_loss") -> str:
        """One sentence for the model table: why the kept model was kept."""
        if self.gain <= 0:
            return f"no epoch had a lower {monitor} than the linear start ({self.start_loss:.4g})"
        verdict = "less" if self.kept else "more"
        return (
            f"the best epoch's {monitor} ({self.best_loss:.4g}) was below the linear start's "
            f"({self.start_loss:.4g}) by {self.gain:.3g}, {verdict} than one standard error "
            f"({self.se:.3g}, {self.resamples} resamples of the validation rows)"
        )


@torch.no_grad()
def validation_outputs(
    module: NervusModule, loader: Any, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Raw outputs of every case of ``loader`` (keys ``output0``, ``output1``, ... per label)
    beside the cases' targets, times and indices, in evaluation mode and float32: what the
    loss of :meth:`NervusModule.validation_step` sees."""
    module.to(device).eval()
    records = []
    for batch in loader:
        batch = move_data_to_device(batch, device)
        record = {k: v for k, v in batch.items() if k not in INPUT_KEYS and torch.is_tensor(v)}
        record.update({f"{_OUTPUT}{j}": out.float() for j, out in enumerate(module(batch))})
        records.append(record)
    return {k: v.cpu() for k, v in concat_records(records).items()}


def split_loss(module: NervusModule, cases: dict[str, torch.Tensor]) -> float:
    """``val_loss`` of ``cases`` (from :func:`validation_outputs`): the task's loss of each
    label, summed over labels, as the module logs it."""
    n_labels = len(module.schema.labels)
    outputs = [cases[f"{_OUTPUT}{j}"] for j in range(n_labels)]
    return float(sum(module.task.loss(out, cases, j) for j, out in enumerate(outputs)))


def loss_difference_se(
    start: NervusModule,
    start_cases: dict[str, torch.Tensor],
    best_cases: dict[str, torch.Tensor],
    resamples: int = RESAMPLES,
    seed: int = RESAMPLING_SEED,
) -> float:
    """Bootstrap standard error of (start's loss - best's loss) over the same cases: both
    losses are recomputed on each resample of the cases, drawn with replacement."""
    n = len(start_cases["index"])
    generator = torch.Generator().manual_seed(seed)
    differences = []
    for _ in range(resamples):
        rows = torch.randint(n, (n,), generator=generator)
        on_start = {k: v[rows] for k, v in start_cases.items()}
        on_best = {k: v[rows] for k, v in best_cases.items()}
        differences.append(split_loss(start, on_start) - split_loss(start, on_best))
    return float(torch.tensor(differences, dtype=torch.float64).std())


def choose_start(
    start_path: Path, best_path: str, loader: Any, device: torch.device | str
) -> StartChoice | None:
    """Compare the linear start saved at ``start_path`` with the best epoch's checkpoint on
    the validation cases of ``loader``; None when the run saved no start (no linear terms).
    The start is kept when the best epoch's loss is not lower by more than one standard
    error (ties go to the start)."""
    if not start_path.is_file():
        return None
    start = NervusModule.load_from_checkpoint(start_path, map_location=device)
    best = NervusModule.load_from_checkpoint(best_path, map_location=device)
    start_cases = validation_outputs(start, loader, device)
    best_cases = validation_outputs(best, loader, device)
    start_loss, best_loss = split_loss(start, start_cases), split_loss(start, best_cases)
    se = loss_difference_se(start, start_cases, best_cases) if start_loss > best_loss else 0.0
    kept = start_loss - best_loss <= se
    return StartChoice(start_loss, best_loss, se, RESAMPLES, kept)
