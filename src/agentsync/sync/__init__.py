"""Strategies by name. A new strategy is one module plus one line in ``STRATEGIES``."""
from __future__ import annotations

from agentsync.comm import Comm
from agentsync.registry import Registry
from agentsync.sync.base import Strategy, StrategyConfig

STRATEGIES: Registry[Strategy] = Registry("strategy", {
    "none": "agentsync.sync.none:NoSync",
    "allreduce": "agentsync.sync.allreduce:AllReduce",
    "gossip": "agentsync.sync.gossip:Gossip",
    "local-sgd": "agentsync.sync.local_sgd:LocalSGD",
    "diloco": "agentsync.sync.diloco:DiLoCo",
    "ensemble": "agentsync.sync.ensemble:Ensemble",
    "ps-sync": "agentsync.sync.ps_sync:PSSync",
    "ps-async": "agentsync.sync.ps_async:PSAsync",
    "ssp": "agentsync.sync.ps_async:SSP",
    "easgd": "agentsync.sync.easgd:EASGD",
})


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES[name]


def build_strategy(config: StrategyConfig, comm: Comm, *, num_workers: int | None = None) -> Strategy:
    return strategy_class(config.name)(config, comm, num_workers=num_workers)


__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "build_strategy", "strategy_class"]
