"""The parameter-server wire protocol: message kinds, the header, sharding and (un)flattening.

Every message is one flat float32 tensor over comm's point-to-point calls — never a pickle —
that starts with a header of four int64 values, carried bit for bit in eight float32 slots (a
view of their bytes, never converted, so any value up to 2^63 travels exactly):

    worker → server   [kind, worker, version, extra | payload]
    server → worker   [version, min_clock, 0, 0 | payload]

A server's payload is its shard, or under ``strategy.pull_compression`` the encoded change since
the worker's copy (:mod:`~agentsync.sync.ps_pull`); a PUSH's is encoded under ``comm.compression``.
``extra`` is the length of what follows: for PUSH and DONE the float32 payload's, for COLLECT
and SNAPSHOT the byte length of the uint8 message that comes next (the message itself is
header-only; a SNAPSHOT to a server other than server 0 carries no bytes).
A server receives each worker's messages into a buffer
of its largest possible size (gloo delivers a shorter message into it) and counts only the
bytes the header says arrived.
"""
from __future__ import annotations

import dataclasses
import enum
import queue

import torch
from torch import nn

from agentsync.comm import Comm

HEADER_FIELDS = 4
HEADER = 2 * HEADER_FIELDS  # float32 slots: each int64 field travels as the bits of two
HEADER_BYTES = HEADER * 4
IDLE_S = 24 * 3600.0   # a listener waits this long for a worker's next message; death is noticed sooner


class Kind(enum.IntEnum):
    PUSH = 1      # a gradient (or θ_i) shard; answered with parameters (or an update)
    DONE = 2      # the worker finished (to server 0 it carries the worker's float buffers); answered with the final shard
    COLLECT = 3   # end-of-run state for the summary and checkpoint, to server 0 only (header, then bytes)
    SNAPSHOT = 4  # a mid-run checkpoint: the worker waits here; to server 0 it carries the worker's state


@dataclasses.dataclass
class Message:
    """One worker message as a server's main thread sees it (``error`` set when the worker is gone)."""

    worker: int
    kind: Kind | None = None
    version: int = 0
    payload: torch.Tensor | None = None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Who is who: ranks 0..W−1 are workers, W..W+S−1 servers; ``shards[s]`` lists server s's parameters."""

    workers: int
    servers: int
    shards: list[list[int]]
    numels: list[int]
    """Elements of each server's shard."""

    @classmethod
    def build(cls, params: list[nn.Parameter], workers: int, servers: int) -> "Layout":
        shards = shard_by_size(params, servers)
        return cls(workers, servers, shards, [sum(params[i].numel() for i in s) for s in shards])

    def server_rank(self, server: int) -> int:
        return self.workers + server


def shard_by_size(params: list[nn.Parameter], servers: int) -> list[list[int]]:
    """Parameter indices per server: whole tensors, largest first onto the least-loaded server."""
    shards: list[list[int]] = [[] for _ in range(servers)]
    load = [0] * servers
    for i in sorted(range(len(params)), key=lambda i: -params[i].numel()):
        target = load.index(min(load))
        shards[target].append(i)
        load[target] += params[i].numel()
    return [sorted(s) for s in shards]


def float_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers averaged into the final model (observation statistics, BatchNorm's running moments)."""
    return [b for b in model.buffers() if b.is_floating_point()]


def flat(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0, device=device)
    return torch.cat([t.detach().reshape(-1).float() for t in tensors]).to(device)


@torch.no_grad()
def unflat_(tensors: list[torch.Tensor], vector: torch.Tensor) -> None:
    offset = 0
    for t in tensors:
        t.copy_(vector[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def pack(header: list[int], payload: torch.Tensor) -> torch.Tensor:
    """One message: the header's int64 bits as float32 slots, on the payload's device, then the payload."""
    fields = torch.zeros(HEADER_FIELDS, dtype=torch.int64)
    fields[:len(header)] = torch.tensor(header, dtype=torch.int64)
    return torch.cat([fields.view(torch.float32).to(payload.device), payload.float()])


def unpack(message: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    return message[:HEADER].cpu().view(torch.int64).tolist(), message[HEADER:]


def listener_comm(comm: Comm) -> Comm:
    """A view of ``comm`` with counters of its own: a listener posts buffers of the largest size, so
    the server counts what each message really carried itself (:meth:`ServerRole.handle`)."""
    return Comm(comm.rank, comm.world_size, comm.config, group=comm.group, device=comm.device)


def listen(comm: Comm, worker: int, capacity: int, inbox: queue.Queue) -> None:
    """Forward one worker's messages into the server's inbox until it has sent COLLECT or died.

    Args:
        comm: the listener's own view of the process group (:func:`listener_comm`).
        capacity: the longest float payload this worker may send here.
    """
    while True:
        message = torch.empty(HEADER + capacity, device=comm.device)
        try:
            comm.recv(message, worker, timeout_s=IDLE_S)
            (kind, _, version, extra), rest = unpack(message)
            if kind in (Kind.COLLECT, Kind.SNAPSHOT):
                payload = torch.empty(extra, dtype=torch.uint8, device=comm.device)
                if extra:
                    comm.recv(payload, worker, timeout_s=IDLE_S)
            else:
                payload = rest[:extra]
            inbox.put(Message(worker, Kind(kind), version, payload))
            if kind == Kind.COLLECT:
                return
        except Exception as e:  # a closed socket: the worker is gone
            inbox.put(Message(worker, error=(str(e).strip().splitlines() or ["lost"])[0][:200]))
            return
