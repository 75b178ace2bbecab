"""``ps-sync``: synchronous parameter server with backup workers (TF's SyncReplicasOptimizer).

Each step, every server shard averages the first ``replicas_to_aggregate`` gradients tagged
with the current version, applies one update and answers those workers; a gradient that
arrives for a version already applied comes from a backup worker and is dropped (counted), and
that worker simply gets the fresh parameters. With fewer replicas than workers, the slowest
workers no longer set the pace, and one of them may die without stopping the job.

The update is the step contract's, on the averaged gradient: its global norm — over every
shard, the servers all-reduce their squared norms, as they all update in lockstep — decides
the non-finite skip (the version still advances, so the workers go on) and the clipping.
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.errors import JobFailed
from agentsync.options import check
from agentsync.sync.ps import ParameterServer, PullConfig
from agentsync.sync.ps_protocol import Message
from agentsync.sync.ps_server import ServerRole
from agentsync.update import local_norm


@dataclasses.dataclass(kw_only=True)
class PSSyncConfig(PullConfig):
    name: str = "ps-sync"
    replicas_to_aggregate: int | None = None
    """Gradients averaged per step (default: all workers); the other workers are backups."""

    def validate_run(self, run) -> None:
        r = self.replicas_to_aggregate
        check(r is None or 1 <= r <= run.workers, "strategy.replicas_to_aggregate", f"in [1, workers={run.workers}]", r)

    def averaged_gradients(self, workers: int) -> int:
        return self.replicas_to_aggregate or workers


class SyncServer(ServerRole):
    """Sums the current round's gradients; one update once ``replicas`` of them have arrived."""

    def __init__(self, *args, replicas: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replicas = replicas
        self.arrived: list[int] = []
        """Workers whose gradient is in this round's sum."""
        self.total = torch.zeros(self.layout.numels[self.index], device=self.comm.device)

    def on_push(self, msg: Message) -> None:
        if msg.version < self.version:
            self.dropped += 1
            self.answer_shard(msg.worker)
            return
        self.arrived.append(msg.worker)
        self.total += msg.payload

    def release(self) -> None:
        if not self.arrived or len(self.arrived) < min(self.replicas, len(self.live - self.done)):
            return
        self.apply_(self.total / len(self.arrived))  # a non-finite average is skipped inside, on every server
        self.version += 1
        arrived, self.arrived = self.arrived, []
        self.total.zero_()
        for w in arrived:
            if w in self.live:
                self.answer_shard(w)

    def on_lost(self, worker: int) -> None:
        if len(self.live) < self.replicas:
            lost = self.lost[-1]
            raise JobFailed(f"rank {worker} was lost ({lost['reason']}); ps-sync needs {self.replicas} replicas per "
                            f"step and only {len(self.live)} workers remain")

    def summary(self) -> dict:
        return {**super().summary(), "replicas_to_aggregate": self.replicas, "dropped_gradients": self.dropped}


class PSSync(ParameterServer):
    """One update per step from the first R gradients; everyone continues from the same version."""

    Config = PSSyncConfig
    Server = SyncServer
    supports_compression = True
    description = "synchronous parameter server; replicas_to_aggregate < W makes the slowest workers backups"

    @property
    def replicas(self) -> int:
        return self.config.replicas_to_aggregate or self.num_workers

    @property
    def finished(self) -> bool:
        """Steps count globally: a backup worker stops when the servers reach the last step."""
        return self.max_steps is not None and self.worker.version >= self.max_steps

    def server_options(self) -> dict:
        return {"replicas": self.replicas}

    def server_norm(self, servers_comm):
        if self.num_servers == 1:
            return local_norm

        def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
            squared = (local_norm(grads).to(self.comm.device) ** 2).reshape(1)
            return servers_comm.all_reduce_(squared).sqrt()[0]
        return global_norm
