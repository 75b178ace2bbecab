"""``gossip``: local steps, then pairwise mixing θ_i ← α θ_i + (1 − α) θ_j with a partner.

Three separate pieces, as in SGP: the topology (who, :mod:`agentsync.sync.topology`), the mixing
weight α (how much), and the exchange (a symmetric point-to-point swap of the flattened
parameters, so both sides update and the global mean is conserved).
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.options import check, choice
from agentsync.sync.averaging import Decentralized, flat_params, set_flat_params_
from agentsync.sync.base import StepCost, StrategyConfig, check_unit_interval
from agentsync.sync.topology import TOPOLOGIES


@dataclasses.dataclass(kw_only=True)
class GossipConfig(StrategyConfig):
    name: str = "gossip"
    alpha: float = 0.5
    """Weight a worker keeps on its own parameters when mixing, in [0, 1] (0.5: the pair's mean)."""
    topology: str = "ring"
    """Partner choice: ring (alternating neighbours), random (perfect matching per round), exponential (distance 2^k)."""
    period: int = 1
    """Mix every this many local steps."""
    seed: int = 0
    """Seed of the random topology's matchings (shared by all ranks)."""

    def validate(self, section: str) -> None:
        check_unit_interval(self.alpha, f"{section}.alpha")
        choice(self.topology, f"{section}.topology", TOPOLOGIES)
        check(self.period >= 1, f"{section}.period", ">= 1", self.period)


class Gossip(Decentralized):
    """Decentralized averaging: no all-to-all traffic, each round costs one model each way."""

    Config = GossipConfig
    description = "local steps, then pairwise mixing with a partner from a topology (ring, random, exponential)"

    rounds = 0  # mixing rounds done; restored from a checkpoint before setup

    @classmethod
    def step_cost(cls, config, net, model_bytes, workers, servers) -> StepCost:
        return StepCost(net.message(model_bytes), model_bytes).every(config.period, "one model swap with one partner per round")

    def _setup(self) -> None:
        super()._setup()
        self.topology = TOPOLOGIES[self.config.topology](self.comm.world_size, self.config.seed)

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.period == 0:
            self.mix_()

    @torch.no_grad()
    def mix_(self) -> None:
        partner = self.topology.partner(self.comm.rank, self.rounds)
        self.rounds += 1
        if partner is None:
            return
        mine = flat_params(self.model)
        theirs = torch.empty_like(mine)
        self.comm.exchange(mine, theirs, partner)
        set_flat_params_(self.model, mine.mul_(self.config.alpha).add_(theirs, alpha=1 - self.config.alpha))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rounds = int(state.get("rounds", 0))
