"""``gossip``: local steps, then pairwise mixing θ_i ← α θ_i + (1 − α) θ_j with a partner.

Three separate pieces, as in SGP: the topology (who, :mod:`agentsync.sync.topology`), the mixing
weight α (how much), and the exchange (a symmetric point-to-point swap of the flattened
parameters, so both sides update and the global mean is conserved). Floating-point buffers are
mixed with the same weight in the same round; integer ones are left alone.

Under ``comm.compression`` the exchange is CHOCO-SGD's (:func:`~agentsync.sync.compressed.choco_exchange`):
each pair keeps public copies x̂ of both sides, sends compressed differences x − x̂, and mixes
x_i ← x_i + γ(1 − α)(x̂_j − x̂_i) (γ: ``consensus_step``), which still conserves the global mean.
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.compress import is_none
from agentsync.errors import ConfigError
from agentsync.options import check, choice
from agentsync.comm import Comm
from agentsync.sync.averaging import Decentralized, flatten, floating_buffer_groups, unflatten_
from agentsync.sync.base import StrategyConfig, check_unit_interval
from agentsync.sync.compressed import choco_exchange
from agentsync.sync.topology import TOPOLOGIES, Topology


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
    consensus_step: float = 1.0
    """CHOCO-SGD's γ in (0, 1] under ``comm.compression``: x_i ← x_i + γ(1 − α)(x̂_j − x̂_i); a sparse codec
    needs γ well below 1 to reach consensus (only with a codec: without one there are no public copies)."""

    def validate(self, section: str) -> None:
        check_unit_interval(self.alpha, f"{section}.alpha")
        check(0.0 < self.consensus_step <= 1.0, f"{section}.consensus_step", "in (0, 1]", self.consensus_step)
        choice(self.topology, f"{section}.topology", TOPOLOGIES)
        check(self.period >= 1, f"{section}.period", ">= 1", self.period)

    def validate_run(self, run) -> None:
        if self.consensus_step != 1.0 and is_none(run.comm.compression):
            raise ConfigError(f"strategy.consensus_step={self.consensus_step:g} needs comm.compression (CHOCO gossip's "
                              "public copies); without a codec gossip mixes the parameters themselves")


class Gossip(Decentralized):
    """Decentralized averaging: no all-to-all traffic, each round costs one model each way."""

    Config = GossipConfig
    regroups = True
    fixed_workers = "each worker's replica and its place in the topology are its own"
    description = "local steps, then pairwise mixing with a partner from a topology (ring, random, exponential)"
    supports_compression = True
    refused_codecs = {"randk": "its indices come from a generator every rank advances in step, and a rank "
                               "without a partner in a round does not"}
    refused_options = {"decay": "CHOCO's error feedback is the pair's public copies, equal on both sides; "
                                "there is no residual to decay"}

    def __init__(self, config: GossipConfig, comm: Comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.topology: Topology = TOPOLOGIES[config.topology](comm.world_size, config.seed)
        self.rounds = 0
        """Mixing rounds done: the topology's clock, checkpointed so a resumed run pairs as the original."""

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
        self._mix_with_(partner, list(self.model.parameters()), "params")
        for i, group in enumerate(floating_buffer_groups(self.model)):
            self._mix_with_(partner, group, f"buffers{i}")

    def _mix_with_(self, partner: int, tensors: list[torch.Tensor], key: str) -> None:
        """x_i ← α x_i + (1 − α) x_partner for ``tensors`` (one dtype), swapped as one flat message;
        compressed, x_i ← x_i + (1 − α)(x̂_partner − x̂_i) over the pair's public copies."""
        mine = flatten(tensors)
        if self.compression is not None:
            difference = choco_exchange(self.comm, self.compression, key, mine, partner)
            unflatten_(tensors, mine.add_(difference, alpha=self.config.consensus_step * (1 - self.config.alpha)))
            return
        theirs = torch.empty_like(mine)
        self.comm.exchange(mine, theirs, partner)
        unflatten_(tensors, mine.mul_(self.config.alpha).add_(theirs, alpha=1 - self.config.alpha))

    def _regrouped(self) -> None:
        """The topology over the survivors, at the round every one of them has reached."""
        self.topology = TOPOLOGIES[self.config.topology](self.comm.world_size, self.config.seed)
        self.rounds = self.steps // self.config.period

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rounds = int(state["rounds"])
