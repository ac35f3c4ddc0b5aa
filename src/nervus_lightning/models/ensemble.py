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

    def member_nets(self) -> list[nn.Module]:
        return list(self.members)

    def image_extractors(self) -> list[nn.Module]:
        """Every member's image extractors, member after member."""
        return [e for member in self.members for e in member.image_extractors()]

    def modalities(self) -> list[str]:
        return self.members[0].modalities()

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
    return net.member_nets() if isinstance(net, EnsembleNet) else [net]


# -- combining raw outputs (used by the tasks' ``combine``) ----------------------------------


def mean_probability_logits(outputs: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Logits whose softmax over ``dim`` is the mean of the members' softmaxes: the log of the
    mean probabilities, computed in log space."""
    logs = torch.stack([torch.log_softmax(o.float(), dim=dim) for o in outputs])
    return torch.logsumexp(logs, dim=0) - torch.log(torch.tensor(float(len(outputs))))


def padded_mean_probability_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
    """As :func:`mean_probability_logits` for heads whose softmax runs over their outputs and a
    fixed zero logit appended (pycox's PMF and DeepHit): the returned ``(n, m)`` logits, with
    the zero appended again, give the mean of the members' ``m + 1`` probabilities."""
    padded = [
        torch.cat([o.float(), torch.zeros_like(o[:, :1], dtype=torch.float32)], 1) for o in outputs
    ]
    logits = mean_probability_logits(padded)
    return logits[:, :-1] - logits[:, -1:]


def mean_survival_hazard_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Logistic-hazard logits ``(n, m)`` whose survival curve ``prod(1 - sigmoid)`` is the mean
    of the members' curves: with the mean curve ``S``, each interval's hazard is
    ``1 - S_k / S_(k-1)``, i.e. ``log(1 - h_k) = -d_k`` with ``d_k = log S_(k-1) - log S_k``,
    and its logit is ``log(expm1(d_k))``."""
    log_surv = torch.stack(
        [torch.cumsum(torch.nn.functional.logsigmoid(-o.float()), dim=1) for o in outputs]
    )
    mean_log = torch.logsumexp(log_surv, dim=0) - torch.log(torch.tensor(float(len(outputs))))
    previous = torch.cat([torch.zeros_like(mean_log[:, :1]), mean_log[:, :-1]], dim=1)
    # The mean of non-increasing curves is non-increasing; the floor keeps the log finite
    # where an interval's mean hazard is 0 to float precision.
    drop = (previous - mean_log).clamp_min(1e-12)
    return torch.log(torch.expm1(drop))
