"""The parameter-server machinery behind ``ps-sync``, ``ps-async``, ``ssp`` and ``easgd``.

Ranks 0..W−1 are workers, ranks W..W+S−1 servers. Parameters are sharded over the servers as
whole tensors with balanced bytes; each server runs the optimizer on its shard, so optimizer
state lives there. The wire protocol is one flat float32 tensor per message over comm's
point-to-point calls — never a pickle — whose first five entries are a small integer header
(exact in float32 up to 2^24, so runs of up to 16.7M updates):

    worker → server   [kind, worker, version, extra_hi, extra_lo | shard of a gradient, or of θ_i
                      for easgd; zeros for DONE and COLLECT]; COLLECT is followed by a uint8
                      message of extra = extra_hi·2^20 + extra_lo bytes of end-of-run state
    server → worker   [version, min_clock, 0, 0, 0 | shard of θ, or of an update for easgd]

A server listens to each worker on its own thread (blocking receives: a dead worker's socket
closes and is noticed at once) and handles messages from one queue in its main thread; a
variant decides when to apply and when to answer (:meth:`ParameterServer.on_push`). A worker
that dies, or that nobody hears from for ``comm.timeout_s`` once all others are done, is dropped
and named in the summary; server 0 writes summary and checkpoint, so it survives any worker.
"""
from __future__ import annotations

import dataclasses
import enum
import queue
import threading
import time
from collections import Counter
import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.options import check
from agentsync.sync.base import StepCost, Strategy, StrategyConfig

HEADER = 5
MAX_UPDATES = 1 << 24  # float32 holds every integer up to here exactly: the header's range
IDLE_S = 24 * 3600.0  # a listener waits this long for a worker's next message; death is noticed sooner


class Kind(enum.IntEnum):
    PUSH = 1      # a gradient (or θ_i) shard; answered with parameters (or an update)
    DONE = 2      # the worker finished; answered with the final parameters once every worker is done
    COLLECT = 3   # end-of-run state for the summary and checkpoint, to server 0 only


@dataclasses.dataclass
class Message:
    worker: int
    kind: Kind | None = None
    version: int = 0
    payload: torch.Tensor | None = None
    error: str = ""


def shard_by_size(params: list[nn.Parameter], servers: int) -> list[list[int]]:
    """Parameter indices per server: whole tensors, largest first onto the least-loaded server."""
    shards: list[list[int]] = [[] for _ in range(servers)]
    load = [0] * servers
    for i in sorted(range(len(params)), key=lambda i: -params[i].numel()):
        target = load.index(min(load))
        shards[target].append(i)
        load[target] += params[i].numel()
    return [sorted(s) for s in shards]


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


@torch.no_grad()
def unflat_(tensors: list[torch.Tensor], vector: torch.Tensor) -> None:
    offset = 0
    for t in tensors:
        t.copy_(vector[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def pack(header: list[int], payload: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.tensor(header, dtype=torch.float32), payload.float()])


def unpack(message: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    return [int(x) for x in message[:HEADER]], message[HEADER:]


def listen(comm: Comm, worker: int, payload_numel: int, inbox: queue.Queue) -> None:
    """Forward one worker's messages into the server's inbox until it has sent COLLECT or died."""
    while True:
        message = torch.empty(HEADER + payload_numel)
        try:
            comm.recv(message, worker, timeout_s=IDLE_S)
            (kind, _, version, hi, lo), payload = unpack(message)
            if kind == Kind.COLLECT:
                payload = torch.empty((hi << 20) + lo, dtype=torch.uint8)
                comm.recv(payload, worker, timeout_s=IDLE_S)
            inbox.put(Message(worker, Kind(kind), version, payload))
            if kind == Kind.COLLECT:
                return
        except Exception as e:  # a closed socket: the worker is gone
            inbox.put(Message(worker, error=(str(e).strip().splitlines() or ["lost"])[0][:200]))
            return


@dataclasses.dataclass(kw_only=True)
class ServerConfig(StrategyConfig):
    """Options every parameter-server strategy has."""

    def validate_run(self, run) -> None:
        steps = run.steps or 0  # each worker push makes at most one server update
        check(steps * run.workers < MAX_UPDATES, "steps", f"below {MAX_UPDATES} // workers (the header's exact range)",
              steps)


class ParameterServer(Strategy):
    """Shared worker and server roles; variants override :meth:`on_push` (and the payloads)."""

    Config = ServerConfig
    tolerates_worker_loss = True
    midrun_checkpoints = False
    version = 0   # server: updates applied; worker: the version of the parameters it holds
    clock = 0     # worker: pushes sent
    max_steps: int | None = None

    @classmethod
    def world_size(cls, workers: int, servers: int) -> int:
        return workers + servers

    @classmethod
    def step_cost(cls, config, net, model_bytes, workers, servers) -> StepCost:
        shard = model_bytes / servers + HEADER * 4
        return StepCost(2 * net.message(shard), model_bytes + servers * HEADER * 4, cls.cost_note)

    cost_note = "push gradient, pull parameters (2 messages)"

    @property
    def num_servers(self) -> int:
        return self.comm.world_size - self.num_workers

    @property
    def is_worker(self) -> bool:
        return self.comm.rank < self.num_workers

    @property
    def worker_rank(self) -> int:
        return self.comm.rank if self.is_worker else -1

    @property
    def is_reporter(self) -> bool:
        return self.comm.rank == self.num_workers

    @property
    def finished(self) -> bool:
        return False

    # -- set-up ----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        super()._setup()
        servers = list(range(self.num_workers, self.comm.world_size))
        self.servers_comm = self.comm.split(servers)
        self.shards = shard_by_size(self.params, self.num_servers)
        self.stats_extra: dict = {}
        if not self.is_worker:
            self.server_index = self.comm.rank - self.num_workers
            self.shard = [self.params[i] for i in self.shards[self.server_index]]
            self.server_optimizer = type(self.optimizer)(self.shard, **self.optimizer.defaults)
            if getattr(self, "_server_state", None):
                self.server_optimizer.load_state_dict(self._server_state)
            self.serve()

    def shard_tensors(self, server: int, grads: bool = False) -> list[torch.Tensor]:
        params = [self.params[i] for i in self.shards[server]]
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params] if grads else params

    # -- worker side -------------------------------------------------------------------------------------
    def worker_payload(self, server: int) -> torch.Tensor:
        """What this worker pushes to ``server`` this step: its gradient shard."""
        return flat(self.shard_tensors(server, grads=True))

    def apply_reply_(self, server: int, reply: torch.Tensor) -> None:
        """Take the server's answer: the fresh parameters of its shard."""
        unflat_(self.shard_tensors(server), reply)

    def _step(self) -> None:
        self.exchange_(Kind.PUSH)

    def shard_numel(self, server: int) -> int:
        return sum(self.params[i].numel() for i in self.shards[server])

    def send_to_server(self, server: int, kind: Kind, payload: torch.Tensor | None = None, extra: int = 0) -> None:
        if payload is None:
            payload = torch.zeros(self.shard_numel(server))
        header = [int(kind), self.comm.rank, self.version, extra >> 20, extra & 0xFFFFF]
        self.comm.send(pack(header, payload), self.num_workers + server)

    def exchange_(self, kind: Kind) -> None:
        """Send ``kind`` (with payloads for PUSH) to every server, then take every answer."""
        servers = range(self.num_servers)
        for s in servers:
            self.send_to_server(s, kind, self.worker_payload(s) if kind == Kind.PUSH else None)
        self.clock += kind == Kind.PUSH
        for s in servers:
            message = torch.empty(HEADER + self.shard_numel(s))
            self.comm.recv(message, self.num_workers + s)
            (version, min_clock, *_), reply = unpack(message)
            self.apply_reply_(s, reply)
            self.version = version
            self.stats_extra["clock_gap"] = self.clock - min_clock

    def finalize(self) -> nn.Module:
        if self.is_worker:
            self.pull_final_()
        return self.model

    def pull_final_(self) -> None:
        self.exchange_(Kind.DONE)

    # -- server side -------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer the workers until every one of them is done or lost, then share the final shards."""
        self.inbox: queue.Queue = queue.Queue()
        numel = sum(p.numel() for p in self.shard)
        for w in range(self.num_workers):
            threading.Thread(target=listen, args=(self.comm, w, numel, self.inbox), daemon=True,
                             name=f"ps-listen-{w}").start()
        self.live, self.done, self.lost = set(range(self.num_workers)), set(), []
        self.clocks = Counter({w: 0 for w in range(self.num_workers)})
        self.waiting: dict[int, int] = {}  # worker -> clock it pushed, for deferred answers
        self.start_time = time.time()
        self.staleness: Counter = Counter()
        self.staleness_by_rank: dict[int, list[int]] = {w: [] for w in range(self.num_workers)}
        self.nonfinite = 0
        while self.live - self.done:
            self.handle(self.next_message())
            self.release()
        for w in sorted(self.done & self.live):
            self.answer(w, self.final_shard())
        self.gather_final_model_()

    def next_message(self) -> Message:
        try:
            return self.inbox.get(timeout=self.comm.config.timeout_s)
        except queue.Empty:  # nobody spoke for a whole timeout: whoever is not done is hung
            hung = sorted(self.live - self.done)
            return Message(hung[0], error=f"no message for {self.comm.config.timeout_s:g} s (hung)")

    def handle(self, msg: Message) -> None:
        if msg.error:
            self.drop(msg.worker, msg.error)
        elif msg.kind == Kind.PUSH:
            self.clocks[msg.worker] += 1
            self.on_push(msg)
        elif msg.kind == Kind.DONE:
            self.done.add(msg.worker)

    def drop(self, worker: int, reason: str) -> None:
        """A worker is gone: go on without it, or stop if the variant cannot (ps-sync, too few replicas)."""
        if worker not in self.live:
            return
        self.live.discard(worker)
        self.waiting.pop(worker, None)
        self.lost.append({"rank": worker, "version": self.version, "time_s": round(time.time() - self.start_time, 3),
                          "reason": reason})
        self.on_lost(worker)

    def on_lost(self, worker: int) -> None:
        pass

    def on_push(self, msg: Message) -> None:
        """Apply (or hold) a pushed gradient and answer when the variant's rule allows."""
        raise NotImplementedError

    def release(self) -> None:
        """Answer workers whose answer was deferred once their condition holds (SSP, sync rounds)."""

    def answer(self, worker: int, payload: torch.Tensor) -> None:
        min_clock = min((self.clocks[w] for w in self.live - self.done), default=self.clocks[worker])
        self.comm.send(pack([self.version, min_clock, 0, 0, 0], payload), worker)

    def shard_vector(self) -> torch.Tensor:
        return flat(self.shard)

    def final_shard(self) -> torch.Tensor:
        return self.shard_vector()

    @torch.no_grad()
    def apply_gradient_(self, gradient: torch.Tensor) -> bool:
        """One optimizer step on this shard; a NaN/inf gradient is counted and never applied."""
        if not torch.isfinite(gradient).all():
            self.nonfinite += 1
            return False
        for p, g in zip(self.shard, self._split(gradient)):
            p.grad = g
        self.server_optimizer.step()
        self.version += 1
        return True

    def _split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 0
        for p in self.shard:
            out.append(vector[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def gather_final_model_(self) -> None:
        """Every server ends with the whole final model (server 0 evaluates and reports it)."""
        sizes = [self.shard_numel(s) for s in range(self.num_servers)]
        mine = torch.zeros(max(sizes))
        mine[: sizes[self.server_index]] = self.final_shard()
        for s, vector in enumerate(self.servers_comm.all_gather(mine)):
            unflat_([self.params[i] for i in self.shards[s]], vector[: sizes[s]])

    # -- end of run ---------------------------------------------------------------------------------------
    def collect(self, payload: bytes) -> list[bytes] | None:
        """Workers send their state to server 0 over the protocol; servers gather among themselves."""
        with self.comm.uncounted():
            if self.is_worker:
                self.send_to_server(0, Kind.COLLECT, extra=len(payload))
                self.comm.send(torch.frombuffer(bytearray(payload), dtype=torch.uint8), self.num_workers)
                return None
            servers = self.servers_comm.gather_bytes(payload, dst=0)
            if not self.is_reporter:
                return None
            return self.collect_from_workers() + servers

    def collect_from_workers(self) -> list[bytes]:
        received: dict[int, bytes] = {}
        while set(received) < self.live:
            msg = self.next_message()
            if msg.error:
                self.drop(msg.worker, msg.error)
            elif msg.kind == Kind.COLLECT:
                received[msg.worker] = bytes(msg.payload.numpy().tobytes())
        return [received[w] for w in sorted(received)]

    def summary(self) -> dict:
        out = {"servers": self.num_servers, "updates": self.version, "nonfinite_skipped": self.nonfinite,
               "lost_ranks": self.lost}
        if self.staleness:
            total = sum(self.staleness.values())
            out["staleness"] = {"histogram": {str(k): v for k, v in sorted(self.staleness.items())},
                                "mean": sum(k * v for k, v in self.staleness.items()) / total,
                                "max": max(self.staleness),
                                "mean_by_rank": {str(w): sum(s) / len(s) for w, s in self.staleness_by_rank.items() if s}}
        return out

    @property
    def stats(self) -> dict:
        return {**super().stats, **getattr(self, "stats_extra", {})}

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "version": self.version, "clock": self.clock}
        if not self.is_worker and hasattr(self, "server_optimizer"):
            state["server_optimizer"] = self.server_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.version, self.clock = int(state["version"]), int(state["clock"])
        self._server_state = state.get("server_optimizer")
