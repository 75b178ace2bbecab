"""What a learner answers an actor, as tensors: go on, take these weights, or stop.

The first message of every actor–learner pair is the learner's weights; after that the actor
sends a segment (:class:`~agentsync.agents.segments.SegmentChannel`) and waits for one reply,
an int64 header ``(kind, version)``, followed by the flat weights when ``kind`` is WEIGHTS. The
weights are the model's parameters and floating-point buffers (observation statistics) in
``state_dict`` order, float32: both ends build the same model, so the size is known.
"""
from __future__ import annotations

import enum

import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.sync.averaging import flatten, unflatten_

TAG = 8  # replies and weights, apart from segments (7) and the strategies' messages


class Reply(enum.IntEnum):
    CONTINUE = 0
    WEIGHTS = 1
    STOP = 2


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What an actor needs to act as the learner would: parameters and floating-point buffers."""
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def flat_weights(model: nn.Module) -> torch.Tensor:
    """A float32 copy of :func:`weight_tensors`, on the CPU (where the listeners send from)."""
    return flatten(t.float() for t in weight_tensors(model)).cpu()


def send_reply(comm: Comm, actor: int, kind: Reply, version: int, weights: torch.Tensor | None = None) -> None:
    comm.send(torch.tensor([int(kind), version], dtype=torch.int64, device=comm.device), actor, tag=TAG)
    if kind == Reply.WEIGHTS:
        comm.send(weights.to(comm.device), actor, tag=TAG)


def recv_reply(comm: Comm, learner: int, model: nn.Module) -> tuple[Reply, int]:
    """The learner's answer; new weights are loaded into ``model`` before this returns."""
    header = torch.empty(2, dtype=torch.int64, device=comm.device)
    comm.recv(header, learner, tag=TAG)
    kind, version = (int(v) for v in header.cpu())
    if kind == Reply.WEIGHTS:
        tensors = weight_tensors(model)
        flat = torch.empty(sum(t.numel() for t in tensors), dtype=torch.float32, device=comm.device)
        comm.recv(flat, learner, tag=TAG)
        unflatten_(tensors, flat)
    return Reply(kind), version
