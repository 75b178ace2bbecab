"""``diloco``: H inner steps of the run's optimizer, then an outer step on the averaged
pseudo-gradient Δ = θ_start − mean_i θ_i (Douillard et al., 2023).

The inner optimizer is the run's ``optimizer`` section (the strategy prefers AdamW; see
:func:`agentsync.config.choose_optimizer` for how that meets the task's and the user's settings).
Its state is kept across outer steps, as in DiLoCo. The outer optimizer — Nesterov SGD, or plain
SGD when ``outer_momentum`` is 0 — steps θ_start, a tensor of its own that every replica copies
after each outer step, so all replicas and all ranks' θ_start are identical at that point. θ_start
and the outer optimizer's state are checkpointed with the strategy. Under ``comm.compression`` each
replica sends θ_start − θ_i through the codec stage, with error feedback, instead of θ_i.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.sync.averaging import (Decentralized, average_buffers_, average_pseudo_gradient, flat_params,
                                      set_flat_params_)
from agentsync.sync.base import StrategyConfig


@dataclasses.dataclass(kw_only=True)
class DiLoCoConfig(StrategyConfig):
    name: str = "diloco"
    inner_steps: int = 20
    """Local steps H between outer steps."""
    outer_lr: float = 0.7
    """Outer SGD learning rate."""
    outer_momentum: float = 0.9
    """Outer Nesterov momentum, in [0, 1) (0: plain SGD)."""

    def validate(self, section: str) -> None:
        check(self.inner_steps >= 1, f"{section}.inner_steps", ">= 1", self.inner_steps)
        check(self.outer_lr > 0, f"{section}.outer_lr", "> 0", self.outer_lr)
        check(0 <= self.outer_momentum < 1, f"{section}.outer_momentum", "in [0, 1)", self.outer_momentum)


class DiLoCo(Decentralized):
    """Local SGD with an outer optimizer: the averaged model update is treated as a gradient."""

    Config = DiLoCoConfig
    regroups = True
    description = "inner optimizer for H steps, outer Nesterov SGD on the averaged pseudo-gradient"
    preferred_optimizer: ClassVar[OptimizerConfig] = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01)
    supports_compression = True

    def __init__(self, config: DiLoCoConfig, comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.start: torch.nn.Parameter | None = None  # θ_start: the outer optimizer's parameter
        self.outer: torch.optim.SGD | None = None

    def _setup(self) -> None:
        super()._setup()
        momentum = self.config.outer_momentum
        self.start = torch.nn.Parameter(flat_params(self.model))
        self.outer = torch.optim.SGD([self.start], lr=self.config.outer_lr, momentum=momentum,
                                     nesterov=momentum > 0)
        if self._restored is not None:
            with torch.no_grad():
                self.start.copy_(self._restored["start"])
            self.outer.load_state_dict(self._restored["outer"])

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.inner_steps == 0:
            self.outer_step_()

    @torch.no_grad()
    def outer_step_(self) -> None:
        """Δ = θ_start − mean_i θ_i; θ_start ← outer step; every replica ← θ_start (by value)."""
        if self.compression is None:
            mean = self.comm.average_(flat_params(self.model))
            self.start.grad = self.start.detach() - mean
        else:  # each replica's θ_start − θ_i sent compressed, with error feedback
            self.start.grad = average_pseudo_gradient(self.comm, self.compression, self.start.detach(), self.model)
        self.outer.step()
        set_flat_params_(self.model, self.start.detach())
        average_buffers_(self.comm, self.model)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "start": self.start.detach().clone(), "outer": self.outer.state_dict()}
