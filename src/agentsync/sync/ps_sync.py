"""``ps-sync``: synchronous parameter server with backup workers (TF's SyncReplicasOptimizer).

Each step, every server shard averages the first ``replicas_to_aggregate`` gradients tagged
with the current version, applies the optimizer and answers those workers; a gradient that
arrives for a version already applied comes from a backup worker and is dropped (counted), and
that worker simply gets the fresh parameters. With fewer replicas than workers, the slowest
workers no longer set the pace, and one of them may die without stopping the job.
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.errors import JobFailed
from agentsync.options import check
from agentsync.sync.ps import Message, ParameterServer, ServerConfig


@dataclasses.dataclass(kw_only=True)
class PSSyncConfig(ServerConfig):
    name: str = "ps-sync"
    replicas_to_aggregate: int | None = None
    """Gradients averaged per step (default: all workers); the other workers are backups."""

    def validate_run(self, run) -> None:
        super().validate_run(run)
        r = self.replicas_to_aggregate
        check(r is None or 1 <= r <= run.workers, "strategy.replicas_to_aggregate", f"in [1, workers={run.workers}]", r)


class PSSync(ParameterServer):
    """One update per step from the first R gradients; everyone continues from the same version."""

    Config = PSSyncConfig
    description = "synchronous parameter server; replicas_to_aggregate < W makes the slowest workers backups"
    cost_note = "push and pull; waits for replicas_to_aggregate gradients"
    dropped = 0

    @property
    def replicas(self) -> int:
        return self.config.replicas_to_aggregate or self.num_workers

    @property
    def finished(self) -> bool:
        """Steps count globally: a backup worker stops when the servers reach the last step."""
        return self.max_steps is not None and self.version >= self.max_steps

    def on_push(self, msg: Message) -> None:
        if msg.version < self.version:
            self.dropped += 1
            self.answer(msg.worker, self.shard_vector())
            return
        if not hasattr(self, "arrived"):
            self.arrived, self.total, self.finite = [], torch.zeros_like(msg.payload), 0
        self.arrived.append(msg.worker)
        if torch.isfinite(msg.payload).all():
            self.total += msg.payload
            self.finite += 1
        else:
            self.nonfinite += 1
        self.release()

    def release(self) -> None:
        arrived = getattr(self, "arrived", [])
        if not arrived or len(arrived) < min(self.replicas, len(self.live - self.done)):
            return
        if self.finite:
            self.apply_gradient_(self.total / self.finite)
        else:
            self.version += 1
        del self.arrived
        for w in arrived:
            if w in self.live:
                self.answer(w, self.shard_vector())

    def on_lost(self, worker: int) -> None:
        if len(self.live) < self.replicas:
            lost = self.lost[-1]
            raise JobFailed(f"rank {worker} was lost ({lost['reason']}); ps-sync needs {self.replicas} replicas per "
                            f"step and only {len(self.live)} workers remain")

    def summary(self) -> dict:
        return {**super().summary(), "replicas_to_aggregate": self.replicas, "dropped_gradients": self.dropped}
