"""Parameter (and buffer) averaging and consensus distance, shared by every strategy whose replicas can differ.

Parameters are always written back by copying values into the existing tensors, never by
re-pointing ``param.data`` at a new tensor (what ``torch.nn.utils.vector_to_parameters`` does):
a flat vector that outlives the call — an outer optimizer's θ_start, a received message — must
not become the model's storage, or every later step would move it too.

Buffers follow the design's rule for averaging strategies: floating-point buffers (BatchNorm
statistics, observation normalisation) are averaged, or mixed, at the same sync points as the
parameters; integer buffers (``num_batches_tracked``) are counters, left as they are.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.compress import Compression
from agentsync.sync.base import Strategy
from agentsync.sync.compressed import average_compressed_


def flat_params(model: nn.Module) -> torch.Tensor:
    """A new vector holding every parameter (a copy: writing to it never changes the model)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """One new vector holding ``tensors`` (all of one dtype), in order."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@torch.no_grad()
def unflatten_(tensors: Iterable[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat``'s values into ``tensors`` in place (the inverse of :func:`flatten`)."""
    offset = 0
    for tensor in tensors:
        n = tensor.numel()
        tensor.copy_(flat[offset:offset + n].view_as(tensor))
        offset += n


def set_flat_params_(model: nn.Module, flat: torch.Tensor) -> None:
    """θ ← ``flat`` by value: ``flat`` stays a separate tensor."""
    unflatten_(model.parameters(), flat)


def floating_buffer_groups(model: nn.Module) -> list[list[torch.Tensor]]:
    """``model``'s floating-point buffers, grouped by dtype (one collective per group)."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in model.buffers():
        if buffer.is_floating_point():
            groups.setdefault(buffer.dtype, []).append(buffer)
    return list(groups.values())


@torch.no_grad()
def average_buffers_(comm: Comm, model: nn.Module) -> None:
    """b_i ← mean_j b_j for every floating-point buffer; integer buffers are left alone."""
    for group in floating_buffer_groups(model):
        unflatten_(group, comm.average_(flatten(group)))


@torch.no_grad()
def average_params_(comm: Comm, model: nn.Module) -> None:
    """θ_i ← mean_j θ_j, in one all-reduce of the flattened parameters; buffers averaged alongside."""
    set_flat_params_(model, comm.average_(flat_params(model)))
    average_buffers_(comm, model)


@torch.no_grad()
def average_pseudo_gradient(comm: Comm, compression: Compression, anchor: torch.Tensor,
                            model: nn.Module) -> torch.Tensor:
    """mean_i (anchor − θ_i), each rank's part sent compressed with error feedback: what a
    compressed parameter average sends instead of θ_i, whose values do not shrink as training goes."""
    return average_compressed_(comm, compression, "pseudo_gradient", anchor - flat_params(model))


@torch.no_grad()
def consensus_distance(comm: Comm, model: nn.Module) -> float:
    """mean_i ||θ_i − θ̄||, a measurement: its traffic is not counted as the strategy's cost."""
    with comm.uncounted():
        theta = flat_params(model)
        mean = comm.average_(theta.clone())
        distance = torch.linalg.vector_norm((theta - mean).double()).reshape(1)
        return comm.average_(distance).item()


class Decentralized(Strategy):
    """Base of the strategies without a server: replicas drift apart between synchronisations,
    so they report consensus distance and ``finalize`` returns the average of the replicas.

    The final aggregation is a one-off, like the initial broadcast, and is not counted as the
    strategy's traffic: a run resumed from a finished run's checkpoint would count it twice.
    """

    replicas_differ = True

    def __init__(self, config, comm: Comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.final_distance: float | None = None  # consensus distance at finalize

    def measure(self) -> dict:
        return {"consensus_distance": consensus_distance(self.comm, self.model)}

    def finalize(self) -> nn.Module:
        self.final_distance = consensus_distance(self.comm, self.model)
        with self.comm.uncounted():
            return self._aggregate()

    def _aggregate(self) -> nn.Module:
        """The result of training: here a copy holding the replicas' average (the local model stays)."""
        consensus = copy.deepcopy(self.model)
        average_params_(self.comm, consensus)
        return consensus

    def summary(self) -> dict:
        return {"consensus_distance": self.final_distance}
