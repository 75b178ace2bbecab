"""``diloco``: H inner steps of the run's optimizer, then an outer Nesterov-SGD step on the
averaged pseudo-gradient Δ = θ_start − mean_i θ_i (Douillard et al., 2023).

The inner optimizer is the run's ``optimizer`` section (AdamW unless set: the strategy's
preferred optimizer); the outer one lives here and is checkpointed with the strategy.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.sync.averaging import Decentralized, flat_params, set_flat_params_
from agentsync.sync.base import StepCost, StrategyConfig


@dataclasses.dataclass(kw_only=True)
class DiLoCoConfig(StrategyConfig):
    name: str = "diloco"
    inner_steps: int = 20
    """Local steps H between outer steps."""
    outer_lr: float = 0.7
    """Outer SGD learning rate."""
    outer_momentum: float = 0.9
    """Outer Nesterov momentum."""

    def validate(self, section: str) -> None:
        check(self.inner_steps >= 1, f"{section}.inner_steps", ">= 1", self.inner_steps)
        check(self.outer_lr > 0, f"{section}.outer_lr", "> 0", self.outer_lr)
        check(0 <= self.outer_momentum < 1, f"{section}.outer_momentum", "in [0, 1)", self.outer_momentum)


class DiLoCo(Decentralized):
    """Local SGD with an outer optimizer: the averaged model update is treated as a gradient."""

    Config = DiLoCoConfig
    description = "inner optimizer for H steps, outer Nesterov SGD on the averaged pseudo-gradient"
    preferred_optimizer: ClassVar[OptimizerConfig] = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01)

    @classmethod
    def step_cost(cls, config, net, model_bytes, workers, servers) -> StepCost:
        return StepCost.all_reduce(net, model_bytes, workers, "").every(
            config.inner_steps, f"one all-reduce every {config.inner_steps} inner steps")

    def _setup(self) -> None:
        super()._setup()
        self.start = torch.nn.Parameter(flat_params(self.model).clone())
        self.outer = torch.optim.SGD([self.start], lr=self.config.outer_lr, momentum=self.config.outer_momentum,
                                     nesterov=True)
        if getattr(self, "_outer_state", None):
            self.start.data.copy_(self._outer_state["start"])
            self.outer.load_state_dict(self._outer_state["outer"])

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.inner_steps == 0:
            self.outer_step_()

    @torch.no_grad()
    def outer_step_(self) -> None:
        mean = self.comm.average_(flat_params(self.model).clone())
        self.start.grad = self.start.detach() - mean
        self.outer.step()
        set_flat_params_(self.model, self.start.detach())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "start": self.start.detach().clone(), "outer": self.outer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._outer_state = state  # applied in _setup, once the parameters exist
