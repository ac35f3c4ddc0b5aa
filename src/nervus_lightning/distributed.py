"""Evaluation with several processes: every case of a split counted exactly once.

With ``N`` processes, Lightning gives each one a ``DistributedSampler`` share of the validation
and test cases, padded by repeating cases so that every share has the same length. Metrics
computed per process and averaged would count the repeated cases twice and weight the shares
unequally. :func:`gather_cases` instead collects every process's per-case records, drops the
repeats by case index and returns them in dataset order, so that each process holds the whole
split exactly as one process would have seen it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

#: Gathers a tensor of the same shape from every process: (world_size, *shape).
AllGather = Callable[[torch.Tensor], torch.Tensor]


def concat_records(records: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batches of per-case tensors (first dimension = cases) concatenated key by key."""
    return {key: torch.cat([r[key] for r in records]) for key in records[0]}


def gather_cases(
    cases: dict[str, torch.Tensor],
    world_size: int,
    all_gather: AllGather | None = None,
    index_key: str = "index",
) -> dict[str, torch.Tensor]:
    """The cases of every process, each once, sorted by ``cases[index_key]`` (dataset order).

    ``cases`` are this process's per-case tensors; ``all_gather`` (e.g. a LightningModule's
    ``all_gather``) is needed when ``world_size > 1``. Shares of different lengths are padded
    for the collective and trimmed afterwards. A case seen by several processes (the sampler's
    padding) is kept once: its copies hold the same inputs and weights, hence the same values.
    """
    if world_size > 1:
        if all_gather is None:
            raise ValueError("gather_cases needs all_gather with several processes")
        n = cases[index_key].shape[0]
        device = cases[index_key].device
        lengths = all_gather(torch.tensor(n, device=device)).reshape(-1).tolist()
        longest = max(lengths)
        gathered = {}
        for key, value in cases.items():
            padded = torch.cat([value, value.new_zeros((longest - n, *value.shape[1:]))])
            every = all_gather(padded).reshape(world_size, longest, *value.shape[1:])
            gathered[key] = torch.cat([every[r, : lengths[r]] for r in range(world_size)])
        cases = gathered
    index = cases[index_key].detach().cpu().numpy()
    _, first = np.unique(index, return_index=True)  # sorted by index
    keep = torch.as_tensor(first, device=cases[index_key].device)
    return {key: value.index_select(0, keep) for key, value in cases.items()}
