"""``local-sgd``: local steps, and every ``period`` steps θ_i ← mean_j θ_j over all workers.

PyTorch's ``PeriodicModelAverager`` does the same but calls ``torch.distributed`` itself; here
the average is one counted all-reduce of the flattened parameters through comm. Under
``comm.compression`` the replicas send the pseudo-gradient anchor − θ_i instead (the anchor: the
last synchronised parameters, equal on every rank), compressed with error feedback, and every
replica becomes anchor − mean_i(anchor − θ_i).
"""
from __future__ import annotations

import dataclasses
import warnings

import torch

from agentsync.options import check
from agentsync.sync.averaging import (Decentralized, average_buffers_, average_params_, average_pseudo_gradient,
                                      flat_params, set_flat_params_)
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
    supports_compression = True
    sums_compressed = True
    regroups = True

    def __init__(self, config: LocalSGDConfig, comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.anchor: torch.Tensor | None = None  # last synchronised parameters (compressed runs only)

    def _setup(self) -> None:
        super()._setup()
        if self.compression is not None:
            restored = self._restored is not None and "anchor" in self._restored
            self.anchor = self._restored["anchor"].clone() if restored else flat_params(self.model)

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.period == 0:
            if self.compression is None:
                average_params_(self.comm, self.model)
            else:
                self._average_compressed()

    @torch.no_grad()
    def _average_compressed(self) -> None:
        """θ_i ← anchor − mean_j(anchor − θ_j); the result is the new anchor."""
        self.anchor.sub_(average_pseudo_gradient(self.comm, self.compression, self.anchor, self.model))
        set_flat_params_(self.model, self.anchor)
        average_buffers_(self.comm, self.model)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.anchor is not None:
            state["anchor"] = self.anchor.clone()
        return state
