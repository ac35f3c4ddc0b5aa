"""``EnsembleNet``: several independently initialised :class:`NervusNet` members in one module
(``model.ensemble=N``), whose outputs are combined into the output of one model.

Every member is a whole network (extractors, mixer, heads) with its own starting weights. In
training each member gets its own loss on the same batch (the module sums them: the members'
weights are disjoint, so each learns exactly as if it were trained alone on those batches);
in validation, prediction, explanation and export the network is the combined model: its
``forward`` returns, per label, one raw output that the task turns into the members' averaged
prediction (:meth:`~nervus_lightning.tasks.base.Task.combine`: probabilities averaged for
classification, values for regression, log hazards for Cox, curves for discrete-time survival).
So a checkpoint holds every member, and whatever reads a model's outputs reads the ensemble's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

#: ``combine(member_outputs, j)``: the members' raw outputs of label ``j`` -> one raw output.
Combine = Callable[[list[torch.Tensor], int], torch.Tensor]


class EnsembleNet(nn.Module):
    """Members with the same architecture, combined by ``combine`` (see the module docstring).

    Args:
        members: the member networks (:class:`~nervus_lightning.models.net.NervusNet`), at least 2.
        combine: the task's :meth:`~nervus_lightning.tasks.base.Task.combine`.
    """

    def __init__(self, members: Sequence[nn.Module], combine: Combine) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def image_extractors(self) -> list[nn.Module]:
        """Every member's image extractors, member after member."""
        return [e for member in self.members for e in member.image_extractors()]

    def member_outputs(
        self,
        image: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
    ) -> list[list[torch.Tensor]]:
        """Each member's raw outputs (one tensor per label), member after member."""
        return [
            member(image=image, tabular=tabular, view_mask=view_mask) for member in self.members
        ]

    def forward(
        self,
        image: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        per_member = self.member_outputs(image, tabular, view_mask)
        return [
            self.combine([outs[j] for outs in per_member], j) for j in range(len(per_member[0]))
        ]


def member_nets(net: nn.Module) -> list[nn.Module]:
    """The member networks of an ensemble, or ``[net]`` for a single network."""
    return list(net.members) if isinstance(net, EnsembleNet) else [net]


# -- combining raw outputs (the tasks' ``combine``; survival curves: survival.discrete) -------


def mean_probability_logits(outputs: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Logits whose softmax over ``dim`` is the mean of the members' softmaxes: the log of the
    mean probabilities, computed in log space."""
    logs = torch.stack([torch.log_softmax(o.float(), dim=dim) for o in outputs])
    return torch.logsumexp(logs, dim=0) - torch.log(torch.tensor(float(len(outputs))))
