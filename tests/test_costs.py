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
