"""A parameter server: holds one shard of the model, applies updates to it, answers the workers.

The server's side of the protocol in :mod:`agentsync.sync.ps_protocol`. One listener thread per
worker does blocking receives (a dead worker's socket closes and is noticed at once) and feeds a
queue that the main thread handles in order. A variant says what a push does
(:meth:`ServerRole.on_push`) and when a deferred answer goes out (:meth:`ServerRole.release`).

Updates go through an :class:`~agentsync.update.Update` over the shard's optimizer, so the
step contract holds on the servers: skip a non-finite gradient (counted), clip, schedule the
learning rate over the updates this server makes, step.

Under ``strategy.pull_compression`` the answer to a push is the shard's change since the worker's copy,
compressed (:mod:`agentsync.sync.ps_pull`); the server keeps one copy of its shard per worker.

Bytes: a PUSH and its answer are counted (header + shard each way); the end-of-run DONE exchange,
the COLLECT gather and the servers' final all-gather are not (they deliver the result), nor are
mid-run snapshots (checkpoints).

**Mid-run checkpoints** are a consistent cut at one version. A worker due to checkpoint writes its
state, sends SNAPSHOT to every server (to server 0 with its statistics) and waits. A server holds the SNAPSHOTs
until every live worker has sent one: then no push is in flight, every one sent before has been
applied, and the servers' shards, optimizer states and counters and the workers' states all
belong to the same moment. The servers take their snapshot (each writes its state, server 0
gathers the servers' statistics and writes the manifest through :attr:`ServerRole.checkpoint`), then release the
workers. The price: ``checkpoint_every`` steps, asynchronous workers wait for the slowest once.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import Counter

import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.compress import Compression, is_none
from agentsync.errors import JobFailed
from agentsync.sync.compressed import Channel
from agentsync.sync.ps_protocol import (HEADER_BYTES, Kind, Layout, Message, flat, listen, listener_comm,
                                        pack, unflat_)
from agentsync.sync.ps_pull import PullSender
from agentsync.update import Update


class ServerRole:
    """Server ``index``'s state, all of it checkpointed by :meth:`state_dict`.

    Args:
        comm: the job's process group; ``servers_comm`` the servers' sub-group.
        layout: ranks and shards.
        params: the whole model's trainable parameters (every server ends holding the final model).
        buffers: the model's floating-point buffers (server 0 sets the workers' mean into them).
        optimizer: this shard's optimizer; ``update`` the step contract over it.
        state: this role's saved state on a resumed run.
        compression: the codec the workers push through (decoded here), or None.
        pull: the codec of the answers to pushes (``strategy.pull_compression``); ``none``: the dense shard.
    """

    def __init__(self, comm: Comm, servers_comm: Comm | None, layout: Layout, index: int,
                 params: list[nn.Parameter], buffers: list[torch.Tensor], optimizer: torch.optim.Optimizer | None,
                 update: Update | None, timeout_s: float, state: dict | None = None, *,
                 compression: Compression | None = None, pull: str = "none") -> None:
        self.comm, self.servers_comm, self.layout, self.index = comm, servers_comm, layout, index
        self.channel = None if compression is None else Channel(compression, layout.numels[index], comm.device)
        self.params, self.buffers = params, buffers
        self.shard = [params[i] for i in layout.shards[index]]
        self.optimizer, self.update, self.timeout_s = optimizer, update, timeout_s
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.live: set[int] = set(range(layout.workers))
        self.done: set[int] = set()
        self.final_buffers: dict[int, torch.Tensor] = {}
        """Each finished worker's buffers (server 0)."""
        self.waiting: dict[int, int] = {}
        """Worker -> the clock it pushed at, for answers a variant defers."""
        self.start_time = time.time()
        # counters, continued on resume
        self.version = 0
        """Updates applied to this shard (ps-sync: also steps skipped as non-finite)."""
        self.clocks: Counter[int] = Counter({w: 0 for w in range(layout.workers)})
        self.clock_gap_max = 0
        """The largest clock gap an answer to a push told its worker (pushes ahead of the slowest live one)."""
        self.staleness: Counter[int] = Counter()
        self.staleness_by_rank: dict[int, list[int]] = {w: [] for w in range(layout.workers)}
        self.dropped = 0
        """Late gradients of backup workers (ps-sync)."""
        self.rejected = 0
        """Non-finite pushes refused outside an optimizer update (easgd's θ_i)."""
        self.lost: list[dict] = []
        self.snapshots: dict[int, bytes] = {}
        """Workers waiting in a mid-run checkpoint, with their states (server 0)."""
        self.checkpoint = lambda: None
        """Called once every live worker waits in a snapshot: the runtime's mid-run checkpoint (servers' side)."""
        self.pull = None if is_none(pull) else PullSender(
            pull, self.shard_vector(), layout.workers, seed_base=comm.world_size * (1 + index), stats=comm.stats)
        """Per worker, the copy of this shard it holds (compressed pulls); seeded apart from every push's stream."""
        if state:
            self.load_state_dict(state)

    # -- the loop ----------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer the workers until every one is done or lost, then deliver the final shards."""
        listening = listener_comm(self.comm)
        push = self.layout.numels[self.index] if self.channel is None else max(self.layout.numels[self.index],
                                                                                self.channel.slots)
        capacity = push + (self.buffer_numel if self.index == 0 else 0)
        for w in range(self.layout.workers):
            threading.Thread(target=listen, args=(listening, w, capacity, self.inbox), daemon=True,
                             name=f"ps-listen-{w}").start()
        while self.live - self.done:
            self.handle(self.next_message())
            self.release()
            self.take_snapshot()
        if not self.live:
            reasons = "; ".join(f"rank {x['rank']}: {x['reason']}" for x in self.lost)
            raise JobFailed(f"every worker was lost ({reasons}); no final model")
        self.deliver_final_()

    @property
    def buffer_numel(self) -> int:
        return sum(b.numel() for b in self.buffers)

    def next_message(self) -> Message:
        try:
            return self.inbox.get(timeout=self.timeout_s)
        except queue.Empty:  # nobody spoke for a whole timeout: whoever is not done is hung
            hung = sorted(self.live - self.done)
            return Message(hung[0], error=f"no message for {self.timeout_s:g} s (hung)")

    def handle(self, msg: Message) -> None:
        if msg.error:
            self.drop(msg.worker, msg.error)
        elif msg.kind == Kind.PUSH:
            self.count_received(msg.payload)
            if self.channel is not None:
                msg.payload = self.channel.decode(msg.payload)
            self.clocks[msg.worker] += 1
            self.on_push(msg)
        elif msg.kind == Kind.DONE:
            self.done.add(msg.worker)
            self.final_buffers[msg.worker] = msg.payload
        elif msg.kind == Kind.SNAPSHOT:
            self.snapshots[msg.worker] = bytes(msg.payload.cpu().numpy().tobytes())

    def count_received(self, payload: torch.Tensor) -> None:
        """The listener's buffer is the largest message's size: count what this one carried."""
        self.comm.stats.bytes_received += HEADER_BYTES + payload.numel() * 4  # main thread: the only writer

    def drop(self, worker: int, reason: str) -> None:
        """A worker is gone: go on without it, or stop if the variant cannot (ps-sync, too few replicas)."""
        if worker not in self.live:
            return
        self.live.discard(worker)
        self.waiting.pop(worker, None)
        self.snapshots.pop(worker, None)
        self.lost.append({"rank": worker, "version": self.version, "time_s": round(time.time() - self.start_time, 3),
                          "reason": reason})
        self.on_lost(worker)

    # -- what variants change ------------------------------------------------------------------
    def on_push(self, msg: Message) -> None:
        """Apply (or hold) a pushed gradient and answer when the variant's rule allows."""
        raise NotImplementedError

    def release(self) -> None:
        """Answer workers whose answer was deferred, once their condition holds (SSP, sync rounds)."""

    def on_lost(self, worker: int) -> None:
        """A worker was lost; a variant that cannot go on raises :class:`JobFailed`."""

    # -- updates and answers -------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self, gradient: torch.Tensor) -> bool:
        """One update of this shard through the step contract; False when it was skipped (non-finite)."""
        for p, g in zip(self.shard, self.split(gradient)):
            p.grad = g.clone()
        return self.update()

    def split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 0
        for p in self.shard:
            out.append(vector[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def answer(self, worker: int, payload: torch.Tensor) -> None:
        """Send ``payload`` with this server's version and the slowest live worker's clock."""
        min_clock = min((self.clocks[w] for w in self.live - self.done), default=self.clocks[worker])
        self.clock_gap_max = max(self.clock_gap_max, self.clocks[worker] - min_clock)
        self.comm.send(pack([self.version, min_clock], payload), worker)

    def answer_shard(self, worker: int) -> None:
        """Answer a push with this shard as it is now: dense, or its change since ``worker``'s copy."""
        shard = self.shard_vector()
        self.answer(worker, shard if self.pull is None else self.pull.encode(worker, shard))

    def shard_vector(self) -> torch.Tensor:
        return flat(self.shard, self.comm.device)

    # -- mid-run checkpoints ---------------------------------------------------------------------
    def take_snapshot(self) -> None:
        """Once every live worker waits in a snapshot: the servers share the whole current model,
        checkpoint, and release the workers (uncounted: a checkpoint is not the strategy's cost)."""
        if not self.snapshots or set(self.snapshots) < self.live - self.done:
            return
        with self.comm.uncounted():
            self.gather_model_()
            self.checkpoint()
            for w in sorted(self.snapshots):
                self.comm.send(pack([self.version, 0], torch.zeros(0, device=self.comm.device)), w)
        self.snapshots = {}

    # -- end of run ----------------------------------------------------------------------------
    @torch.no_grad()
    def deliver_final_(self) -> None:
        """Answer every DONE with the final shard (server 0 adds the workers' mean buffers), then give
        every server the whole final model. Uncounted: it delivers the result."""
        finishing = sorted(self.done & self.live)
        if self.index == 0 and self.buffers:
            mean = torch.stack([self.final_buffers[w] for w in finishing]).mean(0)
            unflat_(self.buffers, mean)
        extra = flat(self.buffers, self.comm.device) if self.index == 0 else torch.zeros(0, device=self.comm.device)
        with self.comm.uncounted():
            for w in finishing:
                self.answer(w, torch.cat([self.shard_vector(), extra]))
            self.gather_model_()

    def gather_model_(self) -> None:
        """Every server ends with the whole final model (server 0 reports it)."""
        if self.servers_comm is None or self.layout.servers == 1:
            return
        numels = self.layout.numels
        mine = torch.zeros(max(numels), device=self.comm.device)
        mine[: numels[self.index]] = self.shard_vector()
        for s, vector in enumerate(self.servers_comm.all_gather(mine)):
            unflat_([self.params[i] for i in self.layout.shards[s]], vector[: numels[s]])

    def collect(self, payload: bytes) -> list[bytes] | None:
        """Every live rank's ``payload`` at server 0 (workers send theirs with COLLECT); uncounted."""
        with self.comm.uncounted():
            servers = self.servers_comm.gather_bytes(payload, dst=0)
            if self.index != 0:
                return None
            return self.collect_from_workers() + servers

    def collect_from_workers(self) -> list[bytes]:
        if self.snapshots:  # a mid-run checkpoint: the states came with the workers' SNAPSHOTs
            return [self.snapshots[w] for w in sorted(self.snapshots)]
        received: dict[int, bytes] = {}
        while set(received) < self.live:
            msg = self.next_message()
            if msg.error:
                self.drop(msg.worker, msg.error)
            elif msg.kind == Kind.COLLECT:
                received[msg.worker] = bytes(msg.payload.cpu().numpy().tobytes())
        return [received[w] for w in sorted(received)]

    # -- reporting and state -------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        return (self.update.skipped if self.update is not None else 0) + self.rejected

    def summary(self) -> dict:
        out = {"servers": self.layout.servers, "updates": self.version, "nonfinite_skipped": self.skipped,
               "lost_ranks": self.lost}
        if self.staleness:
            total = sum(self.staleness.values())
            out["staleness"] = {"histogram": {str(k): v for k, v in sorted(self.staleness.items())},
                                "mean": sum(k * v for k, v in self.staleness.items()) / total,
                                "max": max(self.staleness),
                                "mean_by_rank": {str(w): sum(s) / len(s) for w, s in self.staleness_by_rank.items() if s}}
        return out

    def state_dict(self) -> dict:
        return {"version": self.version, "clocks": dict(self.clocks), "clock_gap_max": self.clock_gap_max,
                "staleness": dict(self.staleness), "staleness_by_rank": self.staleness_by_rank,
                "dropped": self.dropped, "rejected": self.rejected, "lost": self.lost,
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "update": self.update.state_dict() if self.update is not None else None,
                "pull": self.pull.state_dict() if self.pull is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Continue every counter, the shard's optimizer state and the learning-rate schedule's clock."""
        self.version, self.clock_gap_max = int(state["version"]), int(state["clock_gap_max"])
        self.clocks = Counter({int(w): int(c) for w, c in state["clocks"].items()})
        self.staleness = Counter({int(k): int(v) for k, v in state["staleness"].items()})
        self.staleness_by_rank = {int(w): list(s) for w, s in state["staleness_by_rank"].items()}
        self.dropped, self.rejected, self.lost = int(state["dropped"]), int(state["rejected"]), list(state["lost"])
        if len(self.clocks) != self.layout.workers:  # resumed on another worker count: one clock for all
            clock = max(self.clocks.values(), default=0)
            self.clocks = Counter({w: clock for w in range(self.layout.workers)})
            self.staleness_by_rank = {w: self.staleness_by_rank.get(w, []) for w in range(self.layout.workers)}
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.update is not None and state["update"] is not None:
            self.update.load_state_dict(state["update"])
        if self.pull is not None:
            self.pull.load_state_dict(state["pull"])
