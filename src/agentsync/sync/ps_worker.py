"""A parameter-server worker: push a shard to every server, take each answer; pull the final model.

The worker's side of the protocol in :mod:`agentsync.sync.ps_protocol`. Variants override what
is pushed (:meth:`WorkerRole.payload`) and how an answer is taken (:meth:`WorkerRole.take_`).
Under ``strategy.pull_compression`` an answer is the change since the worker's copy, which is its
model (:mod:`agentsync.sync.ps_pull`).
The end-of-run exchange (DONE, answered with the final shard) is not counted in the byte
counters: it delivers the result, and a resumed run must count what an uninterrupted one does.
"""
from __future__ import annotations

import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.compress import Compression, is_none
from agentsync.sync.compressed import Channel
from agentsync.sync.ps_pull import PullReceiver
from agentsync.sync.ps_protocol import HEADER, Kind, Layout, flat, pack, unflat_, unpack
from agentsync.update import local_norm


class WorkerRole:
    """One worker's state: the version of the parameters it holds and the pushes it has sent.

    Args:
        comm: the job's process group.
        layout: ranks and shards.
        params: the model's trainable parameters (what the shards index).
        buffers: the model's floating-point buffers, sent to server 0 with DONE to be averaged.
        state: this role's saved state on a resumed run.
        compression: the codec stage of every push (its error feedback lives here), or None.
        pull: the codec of the answers (``strategy.pull_compression``); ``none``: dense answers.
        local_clip: DGC's local clipping threshold on the whole gradient, before its shards are
            encoded (0: off).
    """

    def __init__(self, comm: Comm, layout: Layout, params: list[nn.Parameter], buffers: list[torch.Tensor],
                 state: dict | None = None, *, compression: Compression | None = None, pull: str = "none",
                 local_clip: float = 0.0) -> None:
        self.comm, self.layout, self.params, self.buffers = comm, layout, params, buffers
        self.local_clip = local_clip
        self.channels = None if compression is None else [Channel(compression, n, comm.device) for n in layout.numels]
        self.pull = None if is_none(pull) else PullReceiver(pull, layout.numels, comm.device, comm.stats)
        self.held: list[torch.Tensor] | None = None
        """Under compressed pulls, the copy this worker held before the final pull replaced it (checkpointed)."""
        self.version = 0
        """The server version of the parameters this worker holds."""
        self.clock = 0
        """Pushes sent."""
        self.clock_gap = 0
        """Own pushes minus the slowest live worker's, as the last answer said."""
        self.own_buffers = [b.detach().clone() for b in buffers]
        """This worker's buffers as its own training left them (the final model gets the workers' mean)."""
        if state:
            self.version, self.clock = int(state["version"]), int(state["clock"])
            self.own_buffers = [b.to(comm.device) for b in state["buffers"]]
            with torch.no_grad():  # a resumed worker goes on with its own statistics, not the mean
                for b, own in zip(buffers, self.own_buffers):
                    b.copy_(own)
                for s, held in enumerate(state.get("held") or []):  # and with its copy, not the final model
                    unflat_(self.shard(s), held.to(comm.device))

    def shard(self, server: int) -> list[nn.Parameter]:
        return [self.params[i] for i in self.layout.shards[server]]

    def grads(self, server: int) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.shard(server)]

    # -- what variants change ------------------------------------------------------------------
    def payload(self, server: int) -> torch.Tensor:
        """What this worker pushes to ``server``: its gradient shard."""
        return flat(self.grads(server), self.comm.device)

    def take_(self, server: int, reply: torch.Tensor) -> None:
        """Take the server's answer to a push: the fresh parameters of its shard, or their change."""
        if self.pull is None:
            unflat_(self.shard(server), reply)
        else:
            self.pull.take_(server, self.shard(server), reply)

    def encode(self, server: int, payload: torch.Tensor) -> torch.Tensor:
        """The push through the codec stage: the gradient shard with its error feedback."""
        return self.channels[server].encode(f"push{server}", payload)

    # -- the exchanges -----------------------------------------------------------------------------
    def send(self, server: int, kind: Kind, payload: torch.Tensor) -> None:
        header = [int(kind), self.comm.rank, self.version, payload.numel()]
        self.comm.send(pack(header, payload), self.layout.server_rank(server))

    def receive(self, server: int, numel: int) -> torch.Tensor:
        message = torch.empty(HEADER + numel, device=self.comm.device)
        self.comm.recv(message, self.layout.server_rank(server))
        (version, min_clock, *_), reply = unpack(message)
        self.version, self.clock_gap = version, self.clock - min_clock
        return reply

    def push_(self) -> None:
        """Push to every server, then take every answer (all sends first: the servers work in parallel)."""
        servers = range(self.layout.servers)
        if self.local_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.local_clip)  # it skips parameters without a gradient
        for s in servers:
            payload = self.payload(s)
            self.send(s, Kind.PUSH, payload if self.channels is None else self.encode(s, payload))
        self.clock += 1
        for s in servers:
            self.take_(s, self.receive(s, self.layout.numels[s] if self.pull is None else self.pull.slots(s)))

    @torch.no_grad()
    def pull_final_(self) -> None:
        """DONE to every server (with this worker's buffers to server 0); every answer is a final shard,
        and server 0's also carries the workers' mean buffers. Uncounted: end-of-run delivery."""
        self.own_buffers = [b.detach().clone() for b in self.buffers]
        if self.pull is not None:
            self.held = self.copies()
        mine = flat(self.buffers, self.comm.device)
        empty = torch.zeros(0, device=self.comm.device)
        with self.comm.uncounted():
            for s in range(self.layout.servers):
                self.send(s, Kind.DONE, mine if s == 0 else empty)
            for s in range(self.layout.servers):
                reply = self.receive(s, self.layout.numels[s] + (mine.numel() if s == 0 else 0))
                unflat_(self.shard(s), reply[: self.layout.numels[s]])
                if s == 0:
                    unflat_(self.buffers, reply[self.layout.numels[s]:])

    def snapshot(self, payload: bytes) -> None:
        """Wait in a mid-run checkpoint: SNAPSHOT to every server (server 0 gets this worker's statistics: its state is on disk),
        then every server's release (see :mod:`agentsync.sync.ps_server`). Uncounted."""
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.zeros(0, dtype=torch.uint8)
        empty = torch.zeros(0, device=self.comm.device)
        with self.comm.uncounted():
            for s in range(self.layout.servers):
                size = len(payload) if s == 0 else 0
                self.comm.send(pack([int(Kind.SNAPSHOT), self.comm.rank, self.version, size], empty),
                               self.layout.server_rank(s))
                if size:
                    self.comm.send(data.to(self.comm.device), self.layout.server_rank(s))
            for s in range(self.layout.servers):
                self.comm.recv(torch.empty(HEADER, device=self.comm.device), self.layout.server_rank(s))

    def copies(self) -> list[torch.Tensor]:
        """Each server's shard as this worker holds it."""
        return [flat(self.shard(s), self.comm.device) for s in range(self.layout.servers)]

    def state_dict(self) -> dict:
        state = {"version": self.version, "clock": self.clock, "buffers": [b.cpu() for b in self.own_buffers]}
        if self.pull is not None:  # the servers' copies of this worker's shards must meet it again on resume
            state["held"] = [c.cpu() for c in (self.held or self.copies())]
        return state


class ClippingWorker(WorkerRole):
    """Clips its own gradient by its global norm before pushing (ps-async, ssp: no server sees the
    whole gradient, and none waits for the others to combine a norm). A non-finite gradient is
    pushed as NaN on every shard, so every server skips the same push."""

    def __init__(self, *args, max_grad_norm: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def push_(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = local_norm(grads)
        if not torch.isfinite(norm):
            scale = float("nan")
        elif self.max_grad_norm:
            scale = min(1.0, self.max_grad_norm / (float(norm) + 1e-6))  # clip_grad_norm_'s rule
        else:
            scale = 1.0
        if scale != 1.0:
            for g in grads:
                g.mul_(scale)
        super().push_()
