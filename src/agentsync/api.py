"""The bring-your-own-loop API: ``init`` joins the job, ``make_strategy`` builds a strategy for it."""
from __future__ import annotations

import atexit
from typing import Any

from agentsync.comm import Comm, CommConfig
from agentsync.config import build_config
from agentsync.errors import ConfigError
from agentsync.sync import Strategy, build_strategy

_comm: Comm | None = None

NEUTRAL_OPTIMIZER = {"name": "sgd", "momentum": 0.0}
"""The optimizer of the config a strategy's options are validated in: the caller's own optimizer is
not known yet, and :meth:`Strategy.setup` checks it (DGC's momentum correction refuses momentum)."""


def init(**comm_options: Any) -> Comm:
    """Join the job from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun's variables).

    Args:
        comm_options: fields of :class:`~agentsync.comm.CommConfig` (``timeout_s=30``, ``backend="gloo"``...).
    Returns:
        The process group's :class:`~agentsync.comm.Comm`, also kept for :func:`make_strategy`.
    """
    global _comm
    if _comm is None:
        config = CommConfig(**comm_options)
        config.validate("comm")
        _comm = Comm.from_env(config)
        atexit.register(shutdown)
    return _comm


def make_strategy(name: str, *, workers: int | None = None, servers: int = 1, **options: Any) -> Strategy:
    """A strategy for the job joined by :func:`init`, options validated as on the command line.

    Args:
        name: a registry name (``allreduce``, ``gossip``...).
        workers: how many ranks train (default: all ranks but the servers a strategy needs).
        servers: parameter-server ranks, for the parameter-server strategies.
        options: the strategy's options, e.g. ``alpha=0.5, topology="ring"``.
    """
    if _comm is None:
        raise RuntimeError("call agentsync.init() before agentsync.make_strategy()")
    if workers is None:
        workers = _comm.world_size - (servers if _needs_servers(name, servers) else 0)
    return strategy_for_group(name, _comm, workers=workers, servers=servers, **options)


def strategy_for_group(name: str, comm: Comm, *, workers: int, servers: int, **options: Any) -> Strategy:
    """A strategy over ``comm`` (the whole job, or one pipeline stage's group), options validated
    together with the codec in use."""
    cfg = build_config({"workers": workers, "servers": servers, "strategy": {"name": name, **options},
                        "comm": {"compression": comm.config.compression},
                        "optimizer": NEUTRAL_OPTIMIZER})
    if cfg.world_size != comm.world_size:
        raise ConfigError(f"strategy {name!r} with {workers} workers needs {cfg.world_size} processes, "
                          f"but the group has {comm.world_size}")
    return build_strategy(cfg.strategy, comm, num_workers=workers)


def _needs_servers(name: str, servers: int) -> bool:
    from agentsync.sync import strategy_class
    return strategy_class(name).world_size(1, servers) > 1


def shutdown() -> None:
    """Leave the process group (registered to run at exit)."""
    global _comm
    if _comm is not None:
        _comm.close()
        _comm = None
