"""``easgd``: elastic averaging SGD, asynchronous form (Zhang, Choromanska & LeCun, 2015).

Workers take local optimizer steps; every ``tau`` steps a worker sends θ_i and the server, which
holds the center θ̃, computes d = α (θ_i − θ̃), moves the center θ̃ ← θ̃ + d and answers d, which the
worker subtracts: θ_i ← θ_i − d. The elastic force pulls workers toward the center and the
center toward the workers; the final model is the center.
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.options import check
from agentsync.sync.base import StepCost, check_unit_interval
from agentsync.sync.ps import Kind, Message, ParameterServer, ServerConfig, flat, unflat_


@dataclasses.dataclass(kw_only=True)
class EASGDConfig(ServerConfig):
    name: str = "easgd"
    alpha: float = 0.25
    """Moving rate α in [0, 1]: the share of the difference between worker and center each exchange removes."""
    tau: int = 4
    """Local steps between exchanges with the center."""

    def validate(self, section: str) -> None:
        check_unit_interval(self.alpha, f"{section}.alpha")
        check(self.tau >= 1, f"{section}.tau", ">= 1", self.tau)


class EASGD(ParameterServer):
    """Local steps, and an elastic pull between each worker and a center variable on the servers."""

    Config = EASGDConfig
    description = "elastic averaging: local steps, every tau steps an elastic exchange with a center on the servers"

    @classmethod
    def step_cost(cls, config, net, model_bytes, workers, servers) -> StepCost:
        return ParameterServer.step_cost(config, net, model_bytes, workers, servers).every(
            config.tau, f"elastic exchange with the center every {config.tau} steps")

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.tau == 0:
            self.exchange_(Kind.PUSH)

    def worker_payload(self, server: int) -> torch.Tensor:
        return flat(self.shard_tensors(server))

    @torch.no_grad()
    def apply_reply_(self, server: int, reply: torch.Tensor) -> None:
        if self._pulling_final:
            unflat_(self.shard_tensors(server), reply)
        else:
            unflat_(self.shard_tensors(server), flat(self.shard_tensors(server)) - reply)

    _pulling_final = False

    def pull_final_(self) -> None:
        self._pulling_final = True
        super().pull_final_()

    @torch.no_grad()
    def on_push(self, msg: Message) -> None:
        center = self.shard_vector()
        if not torch.isfinite(msg.payload).all():
            self.nonfinite += 1
            self.answer(msg.worker, torch.zeros_like(center))
            return
        move = self.config.alpha * (msg.payload - center)
        unflat_(self.shard, center + move)
        self.version += 1
        self.answer(msg.worker, move)
