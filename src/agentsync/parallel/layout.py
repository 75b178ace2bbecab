"""Where every rank of a P × W grid sits: the one place that knows the parallel layout.

Global ranks are stage-major. Stage ``s`` owns the contiguous block ``[s·G, (s+1)·G)`` with
``G = W (+ S servers)``: its W data-parallel replicas first, then its own parameter servers where
the strategy has them (*servers per stage*). Inside a stage every rank keeps the local number the
strategy already expects (workers 0..W−1, servers W..W+S−1), so a strategy sees only its stage's
group and never knows there are other stages. Replica ``r``'s pipeline is the rank of worker ``r``
in every stage. With ``stages == 1`` the layout is the plain job every strategy has always run.

Example::

    layout = Layout(stages=2, workers=2, servers_per_stage=0)
    layout.rank(stage=1, replica=0)      # 2
    layout.stage_ranks(1)                # [2, 3]: stage 1's data-parallel group
    layout.pipeline_ranks(0)             # [0, 2]: replica 0's pipeline
"""
from __future__ import annotations

import dataclasses

from agentsync.options import Options, check, choice

SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"}
"""Schedule names and the ``torch.distributed.pipelining`` class each one is. The interleaved
schedules are left out: on gloo they have hung (PiPPy#1130), and no test here shows them finishing."""


@dataclasses.dataclass(kw_only=True)
class ParallelConfig(Options):
    stages: int = 1
    """Pipeline stages P: the model is cut into P parts on P processes (1: every worker holds the whole model)."""
    schedule: str = "gpipe"
    """Pipeline schedule: gpipe (all forwards, then all backwards) or 1f1b (one forward, one backward)."""
    microbatches: int = 4
    """Microbatches M each worker's batch is cut into when stages > 1; must divide task.batch_size."""

    def validate(self, section: str) -> None:
        check(self.stages >= 1, f"{section}.stages", ">= 1", self.stages)
        choice(self.schedule, f"{section}.schedule", SCHEDULES)
        check(self.microbatches >= 1, f"{section}.microbatches", ">= 1", self.microbatches)


@dataclasses.dataclass(frozen=True)
class Layout:
    stages: int
    """Pipeline stages P."""
    workers: int
    """Data-parallel replicas W of every stage."""
    servers_per_stage: int = 0
    """Parameter servers of each stage (0 for strategies without servers)."""

    @property
    def group_size(self) -> int:
        """Ranks of one stage: its workers, then its servers."""
        return self.workers + self.servers_per_stage

    @property
    def world_size(self) -> int:
        return self.stages * self.group_size

    def rank(self, stage: int, local: int) -> int:
        """The global rank of a stage's local rank (a worker index, or W + a server index)."""
        return stage * self.group_size + local

    def stage_of(self, rank: int) -> int:
        return rank // self.group_size

    def local_of(self, rank: int) -> int:
        """The rank within its stage's group: what the stage's strategy calls it."""
        return rank % self.group_size

    def is_worker(self, rank: int) -> bool:
        return self.local_of(rank) < self.workers

    def stage_ranks(self, stage: int) -> list[int]:
        """Stage ``stage``'s group: its W replicas and its servers (the strategy's comm)."""
        return [self.rank(stage, i) for i in range(self.group_size)]

    def pipeline_ranks(self, replica: int) -> list[int]:
        """Replica ``replica``'s pipeline: that worker of every stage, stage order."""
        return [self.rank(s, replica) for s in range(self.stages)]

    @property
    def reporter_local(self) -> int:
        """The local rank that writes a stage's report: worker 0, or server 0 where there are servers."""
        return self.workers if self.servers_per_stage else 0

    def reporter_ranks(self) -> list[int]:
        """Each stage's reporter; the first is the job's (it writes checkpoint.pt and summary.json)."""
        return [self.rank(s, self.reporter_local) for s in range(self.stages)]
