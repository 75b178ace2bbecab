"""``ensemble``: independent training on disjoint shards, results aggregated at the end.

No message while training. ``finalize`` gathers every member and returns an
:class:`EnsembleModule` whose output is the mean of the members' outputs (mean logits for a
classifier, mean reconstruction for the autoencoder). The parameter-averaged model is reported
beside it, to show why averaging independently trained weights is not the same thing.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from agentsync.sync.averaging import Decentralized, flat_params, set_flat_params_
from agentsync.sync.base import StepCost


class EnsembleModule(nn.Module):
    """M_f(x) = mean_i M_i(x)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.stack([m(*args, **kwargs) for m in self.members]).mean(0)


class Ensemble(Decentralized):
    """Train W models independently; combine their outputs."""

    description = "independent training on disjoint shards; outputs of the members averaged at the end"

    def _step(self) -> None:
        self.update()

    @classmethod
    def step_cost(cls, config, net, model_bytes, workers, servers) -> StepCost:
        return StepCost(note="no communication until the end")

    @classmethod
    def final_module(cls, build_model, num_workers: int) -> nn.Module:
        return EnsembleModule([build_model() for _ in range(num_workers)])

    @torch.no_grad()
    def _aggregate(self) -> nn.Module:
        members = []
        for theta in self.comm.all_gather(flat_params(self.model)):
            member = copy.deepcopy(self.model)
            set_flat_params_(member, theta)
            members.append(member)
        self.param_average = super()._aggregate()
        return EnsembleModule(members)

    def report_models(self) -> dict[str, nn.Module]:
        return {"param_average": self.param_average}
