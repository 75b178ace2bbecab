"""``ps-async`` (Downpour) and ``ssp`` (stale synchronous parallel).

ps-async applies each gradient the moment it arrives and answers with fresh parameters; the
staleness of an update — server version minus the version the gradient was computed on — is
recorded as a histogram. ssp is the same, except that a worker more than ``staleness`` pushes
ahead of the slowest live worker gets its answer only once that worker catches up, so its clock
gap never exceeds the bound.
"""
from __future__ import annotations

import dataclasses

from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.sync.ps import Message, ParameterServer, ServerConfig


class PSAsync(ParameterServer):
    """Hogwild on a server: no worker ever waits for another."""

    description = "asynchronous parameter server: each gradient applied on arrival (Downpour)"
    cost_note = "push and pull; never waits for other workers"
    # Asynchrony already acts as momentum (Mitliagkas et al., 2016); SGD momentum on top diverges.
    preferred_optimizer = OptimizerConfig(momentum=0.0)

    def on_push(self, msg: Message) -> None:
        staleness = self.version - msg.version
        if self.apply_gradient_(msg.payload):
            self.staleness[staleness] += 1
            self.staleness_by_rank[msg.worker].append(staleness)
        self.waiting[msg.worker] = self.clocks[msg.worker]
        self.release()

    def may_run_ahead(self, worker: int) -> bool:
        return True

    def release(self) -> None:
        for w in [w for w in self.waiting if self.may_run_ahead(w)]:
            del self.waiting[w]
            self.answer(w, self.shard_vector())


@dataclasses.dataclass(kw_only=True)
class SSPConfig(ServerConfig):
    name: str = "ssp"
    staleness: int = 3
    """How many pushes a worker may be ahead of the slowest live worker (0: lockstep)."""

    def validate(self, section: str) -> None:
        check(self.staleness >= 0, f"{section}.staleness", ">= 0", self.staleness)


class SSP(PSAsync):
    """Asynchronous, with a bound on how far the fastest worker runs ahead."""

    Config = SSPConfig
    description = "stale synchronous parallel: ps-async with at most `staleness` steps between fastest and slowest"

    def may_run_ahead(self, worker: int) -> bool:
        running = self.live - self.done
        slowest = min((self.clocks[w] for w in running), default=self.clocks[worker])
        return self.clocks[worker] - slowest <= self.config.staleness

    def summary(self) -> dict:
        return {**super().summary(), "staleness_bound": self.config.staleness}
