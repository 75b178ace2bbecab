"""Parameter averaging and consensus distance, shared by every strategy whose replicas can differ."""
from __future__ import annotations

import copy

import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.sync.base import Strategy


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


@torch.no_grad()
def set_flat_params_(model: nn.Module, flat: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat, model.parameters())


@torch.no_grad()
def average_params_(comm: Comm, model: nn.Module) -> None:
    """θ_i ← mean_j θ_j, in one all-reduce of the flattened parameters."""
    set_flat_params_(model, comm.average_(flat_params(model).clone()))


@torch.no_grad()
def consensus_distance(comm: Comm, model: nn.Module) -> float:
    """mean_i ||θ_i − θ̄||, a measurement: its traffic is not counted as the strategy's cost."""
    with comm.uncounted():
        theta = flat_params(model)
        mean = comm.average_(theta.clone())
        distance = torch.tensor([torch.linalg.vector_norm(theta - mean).item()], dtype=torch.float64)
        return comm.average_(distance).item()


class Decentralized(Strategy):
    """Base of the strategies without a server: replicas drift apart between synchronisations,
    so they report consensus distance and ``finalize`` returns the average of the replicas."""

    replicas_differ = True

    def measure(self) -> dict:
        return {"consensus_distance": consensus_distance(self.comm, self.model)}

    def finalize(self) -> nn.Module:
        self._final_distance = consensus_distance(self.comm, self.model)
        return self._aggregate()

    def _aggregate(self) -> nn.Module:
        """The result of training: here a copy holding the replicas' average (the local model stays)."""
        consensus = copy.deepcopy(self.model)
        average_params_(self.comm, consensus)
        return consensus

    def summary(self) -> dict:
        return {"consensus_distance": getattr(self, "_final_distance", None)}
