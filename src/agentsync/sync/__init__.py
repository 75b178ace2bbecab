"""Strategies by name. A new strategy is one module plus one line in ``STRATEGIES``."""
from __future__ import annotations

from agentsync.comm import Comm
from agentsync.errors import ConfigError
from agentsync.sync.allreduce import AllReduce
from agentsync.sync.base import Strategy, StrategyConfig
from agentsync.sync.none import NoSync

STRATEGIES: dict[str, type[Strategy]] = {
    "none": NoSync,
    "allreduce": AllReduce,
}


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}") from None


def build_strategy(config: StrategyConfig, comm: Comm, *, num_workers: int | None = None) -> Strategy:
    return strategy_class(config.name)(config, comm, num_workers=num_workers)


__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "build_strategy", "strategy_class"]
