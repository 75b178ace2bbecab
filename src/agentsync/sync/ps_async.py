"""``ps-async`` (Downpour) and ``ssp`` (stale synchronous parallel).

ps-async applies each gradient the moment it arrives and answers with fresh parameters; the
staleness of an update — server version minus the version the gradient was computed on, in
server updates — is recorded as a histogram. ssp is the same, except that a worker more than
``staleness`` pushes ahead of the slowest live worker gets its answer only once that worker
catches up, so its clock gap (in pushes) never exceeds the bound; the summary's
``clock_gap_max`` is the largest gap any answer reported.

Step contract: each gradient is clipped by its own global norm on the worker before the push
(no server sees the whole gradient, and none may wait for the others to combine a norm); a
non-finite gradient is pushed as NaN on every shard, so every server skips it and counts it.
The learning-rate schedule runs on the servers over steps × workers updates.
"""
from __future__ import annotations

import dataclasses

from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.sync.ps import ParameterServer, PullConfig
from agentsync.sync.ps_protocol import Message
from agentsync.sync.ps_server import ServerRole
from agentsync.sync.ps_worker import ClippingWorker
from agentsync.update import UpdateRule


class AsyncServer(ServerRole):
    """Applies every push at once; answers unless :meth:`may_run_ahead` says wait."""

    def on_push(self, msg: Message) -> None:
        staleness = self.version - msg.version
        if self.apply_(msg.payload):
            self.version += 1
            self.staleness[staleness] += 1
            self.staleness_by_rank[msg.worker].append(staleness)
        self.waiting[msg.worker] = self.clocks[msg.worker]

    def may_run_ahead(self, worker: int) -> bool:
        return True

    def release(self) -> None:
        for w in [w for w in self.waiting if self.may_run_ahead(w)]:
            del self.waiting[w]
            self.answer_shard(w)


class PSAsync(ParameterServer):
    """Hogwild on a server: no worker ever waits for another."""

    Config = PullConfig
    Worker = ClippingWorker
    Server = AsyncServer
    supports_compression = True
    description = "asynchronous parameter server: each gradient applied on arrival (Downpour)"
    # Asynchrony already acts as momentum (Mitliagkas et al., 2016); SGD momentum on top diverges.
    preferred_optimizer = OptimizerConfig(momentum=0.0)

    def worker_options(self) -> dict:
        return {"max_grad_norm": self.rule.max_grad_norm}

    def server_rule(self) -> UpdateRule:
        return dataclasses.replace(self.rule, max_grad_norm=0.0)  # clipped on the worker already

    def server_updates(self) -> int | None:
        return None if self.max_steps is None else self.max_steps * self.num_workers


@dataclasses.dataclass(kw_only=True)
class SSPConfig(PullConfig):
    name: str = "ssp"
    staleness: int = 3
    """How many pushes a worker may be ahead of the slowest live worker (0: lockstep)."""

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.staleness >= 0, f"{section}.staleness", ">= 0", self.staleness)


class SSPServer(AsyncServer):
    """Holds the answer to a worker more than ``bound`` pushes ahead of the slowest running one."""

    def __init__(self, *args, bound: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bound = bound

    def may_run_ahead(self, worker: int) -> bool:
        running = self.live - self.done
        slowest = min((self.clocks[w] for w in running), default=self.clocks[worker])
        return self.clocks[worker] - slowest <= self.bound

    def summary(self) -> dict:
        return {**super().summary(), "staleness_bound": self.bound, "clock_gap_max": self.clock_gap_max}


class SSP(PSAsync):
    """Asynchronous, with a bound on how far the fastest worker runs ahead."""

    Config = SSPConfig
    Server = SSPServer
    description = "stale synchronous parallel: ps-async with at most `staleness` steps between fastest and slowest"

    def server_options(self) -> dict:
        return {"bound": self.config.staleness}
