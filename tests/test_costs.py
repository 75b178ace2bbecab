"""advise's cost table beside the strategies: complete, and the closed forms it claims."""
from __future__ import annotations

import pytest

from agentsync.config import load_config
from agentsync.netsim import NetSim
from agentsync.report.costs import COSTS, step_cost
from agentsync.sync import STRATEGIES
from agentsync.sync.ps_protocol import HEADER_BYTES

NET = NetSim(latency_s=0.01, bandwidth_Bps=1e8)
MODEL = 1_000_000


def cost(name: str, workers: int = 4, servers: int = 1, *overrides: str):
    cfg = load_config(flags={"strategy.name": name, "workers": workers, "servers": servers}, overrides=list(overrides))
    return step_cost(cfg.strategy, NET, MODEL, workers, servers)


def test_every_strategy_has_a_cost_model():
    assert set(COSTS) == set(STRATEGIES)


def test_closed_forms():
    ring = 2 * 3 * (0.01 + MODEL / 4 / 1e8)  # 2 (W-1) rounds of a 1/W chunk
    assert cost("allreduce").seconds == pytest.approx(ring)
    assert cost("local-sgd", 4, 1, "strategy.period=8").seconds == pytest.approx(ring / 8)
    assert cost("ps-sync", 4, 2).seconds == pytest.approx(2 * (0.01 + (MODEL / 2 + HEADER_BYTES) / 1e8))
    assert cost("gossip").bytes_sent == MODEL and cost("none").seconds == 0.0


def test_two_workers_all_reduce_a_small_model_in_one_exchange():
    """As comm sums it: up to 256 KiB between two workers, one round of the whole model (the ring's
    bytes, half its latencies); a larger model, or more workers, the ring."""
    small, large = 256 * 1024, 256 * 1024 + 4
    exchange = step_cost(load_config(flags={"workers": 2}).strategy, NET, small, 2, 1)
    assert exchange.seconds == pytest.approx(0.01 + small / 1e8) and exchange.bytes_sent == small
    ring = step_cost(load_config(flags={"workers": 2}).strategy, NET, large, 2, 1)
    assert ring.seconds == pytest.approx(2 * (0.01 + large / 2 / 1e8)) and ring.bytes_sent == large
    assert exchange.note.endswith(": 1 latency") and ring.note.endswith(": 2 latencies")
    three = step_cost(load_config(flags={"workers": 3}).strategy, NET, small, 3, 1)
    assert three.seconds == pytest.approx(4 * (0.01 + small / 3 / 1e8))
