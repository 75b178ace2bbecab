"""``ensemble``: independent training on disjoint shards, results aggregated at the end.

No message while training. ``finalize`` gathers every member — its parameters and its own
buffers (observation statistics, BatchNorm statistics) — and returns an :class:`EnsembleModule`
whose output is the mean of the members' outputs: mean logits for a classifier, mean
reconstruction for the autoencoder, mean Q-values for a Q-network, (mean logits, mean values)
for an actor-critic. The parameter-averaged model is reported beside it, to show why averaging
independently trained weights is not the same thing.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from agentsync.sync.averaging import Decentralized, flatten, unflatten_


def mean_output(outputs: list):
    """The element-wise mean of the members' outputs: a tensor, or a tuple/list of tensors."""
    if isinstance(outputs[0], (tuple, list)):
        return type(outputs[0])(mean_output(list(parts)) for parts in zip(*outputs))
    return torch.stack(outputs).mean(0)


class EnsembleModule(nn.Module):
    """M_f(x) = mean_i M_i(x), averaged element-wise where the members return tuples.

    Example::

        ensemble = EnsembleModule([actor_critic_a, actor_critic_b])
        logits, values = ensemble(obs)   # each the mean over the two members
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *args, **kwargs):
        return mean_output([m(*args, **kwargs) for m in self.members])


def state_groups(model: nn.Module) -> list[list[torch.Tensor]]:
    """Every parameter and buffer of ``model``, grouped by dtype: what a member is made of."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        groups.setdefault(tensor.dtype, []).append(tensor)
    return list(groups.values())


class Ensemble(Decentralized):
    """Train W models independently; combine their outputs."""

    fixed_workers = "each ensemble member is a model of its own"
    description = "independent training on disjoint shards; outputs of the members averaged at the end"

    def __init__(self, config, comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.param_average: nn.Module | None = None  # built by finalize, reported beside the ensemble

    def _step(self) -> None:
        self.update()

    @classmethod
    def final_module(cls, build_model, num_workers: int) -> nn.Module:
        return EnsembleModule([build_model() for _ in range(num_workers)])

    @torch.no_grad()
    def _aggregate(self) -> nn.Module:
        members = [copy.deepcopy(self.model) for _ in range(self.comm.world_size)]
        for index, group in enumerate(state_groups(self.model)):
            for member, flat in zip(members, self.comm.all_gather(flatten(group))):
                unflatten_(state_groups(member)[index], flat)
        self.param_average = super()._aggregate()
        return EnsembleModule(members)

    def report_models(self) -> dict[str, nn.Module]:
        return {"param_average": self.param_average}
