"""``local-sgd``: local steps, and every ``period`` steps θ_i ← mean_j θ_j over all workers.

PyTorch's ``PeriodicModelAverager`` does the same but calls ``torch.distributed`` itself; here
the average is one counted all-reduce of the flattened parameters through comm.
"""
from __future__ import annotations

import dataclasses
import warnings

from agentsync.options import check
from agentsync.sync.averaging import Decentralized, average_params_
from agentsync.sync.base import StrategyConfig


@dataclasses.dataclass(kw_only=True)
class LocalSGDConfig(StrategyConfig):
    name: str = "local-sgd"
    period: int = 8
    """Average parameters every this many local steps (1: every step, which equals allreduce for plain SGD)."""

    def validate(self, section: str) -> None:
        check(self.period >= 1, f"{section}.period", ">= 1", self.period)
        if self.period == 1:
            warnings.warn("local-sgd with period 1 averages every step; allreduce does the same and overlaps "
                          "communication with backward", stacklevel=2)


class LocalSGD(Decentralized):
    """Periodic model averaging: 1/period of allreduce's traffic, replicas drift in between."""

    Config = LocalSGDConfig
    description = "local steps, parameters averaged over all workers every `period` steps"

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.period == 0:
            average_params_(self.comm, self.model)
