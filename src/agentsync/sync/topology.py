"""Who a gossip worker mixes with at each round: perfect matchings, the same on every rank.

Each topology maps (rank, round) to a partner rank or None (no partner this round, possible
when W is odd or not a power of two). Pairings are symmetric — if i's partner is j, j's is i —
so a mixing round conserves the global mean.
"""
from __future__ import annotations

import abc

import numpy as np


class Topology(abc.ABC):
    def __init__(self, world_size: int, seed: int = 0) -> None:
        self.world_size, self.seed = world_size, seed

    @abc.abstractmethod
    def partner(self, rank: int, round_: int) -> int | None:
        ...

    def pairs(self, round_: int) -> list[tuple[int, int]]:
        """Every pair (i, j), i < j, that mixes in ``round_``."""
        return [(i, j) for i in range(self.world_size) if (j := self.partner(i, round_)) is not None and i < j]


class Ring(Topology):
    """Alternately the right and the left neighbour: pairs (0,1),(2,3),… then (1,2),(3,4),…,(W−1,0)."""

    def partner(self, rank: int, round_: int) -> int | None:
        n = self.world_size
        if n == 1:
            return None
        shift = round_ % 2
        if n % 2 and (rank - shift) % n == n - 1:  # odd ring: one worker sits out each round
            return None
        right = (rank - shift) % 2 == 0
        return (rank + 1) % n if right else (rank - 1) % n


class RandomPairs(Topology):
    """A fresh random perfect matching every round, drawn from (seed, round) on every rank alike."""

    def partner(self, rank: int, round_: int) -> int | None:
        order = np.random.default_rng([self.seed, round_]).permutation(self.world_size)
        position = int(np.nonzero(order == rank)[0][0])
        mate = position ^ 1
        return int(order[mate]) if mate < self.world_size else None


class Exponential(Topology):
    """Partner at distance 2^k (hypercube: rank XOR 2^k), k cycling over 0 … ⌈log2 W⌉ − 1."""

    def partner(self, rank: int, round_: int) -> int | None:
        levels = max(1, (self.world_size - 1).bit_length())
        mate = rank ^ (1 << (round_ % levels))
        return mate if mate < self.world_size else None


TOPOLOGIES: dict[str, type[Topology]] = {"ring": Ring, "random": RandomPairs, "exponential": Exponential}


def mixing_matrix(topology: Topology, round_: int, alpha: float) -> np.ndarray:
    """The doubly stochastic W×W matrix of one round: x ← M x with M_ii = α, M_ij = 1 − α for pairs."""
    m = np.eye(topology.world_size)
    for i, j in topology.pairs(round_):
        m[i, i] = m[j, j] = alpha
        m[i, j] = m[j, i] = 1 - alpha
    return m
