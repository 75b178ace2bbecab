"""Parameter-server family: equivalence with allreduce, backup workers, staleness, faults, bytes."""
from __future__ import annotations

import pytest
import torch

from agentsync.comm import Comm, CommConfig
from agentsync.sync.ps_async import PSAsync
from agentsync.sync.base import StrategyConfig
from conftest import read_jsonl, train

MODEL_BYTES = (64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10) * 4  # the digits MLP, float32
PLAIN_SGD = ["--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.05", "--set", "optimizer.momentum=0"]
ASYNC_SGD = ["--set", "optimizer.lr=0.1", "--set", "log_every=1"]  # ps-async/ssp prefer momentum 0


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def allreduce_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ar") / "run"
    train(run, "--strategy", "allreduce", "--workers", "2", "--steps", "50", *PLAIN_SGD)
    return final_model(run)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("servers", [1, 2])
def test_ps_sync_with_all_replicas_equals_allreduce(tmp_path, allreduce_reference, servers):
    summary = train(tmp_path / "run", "--strategy", "ps-sync", "--workers", "2", "--servers", str(servers),
                    "--steps", "50", "--set", "log_every=1", *PLAIN_SGD)
    ours = final_model(tmp_path / "run")
    for key, value in allreduce_reference.items():
        assert torch.allclose(ours[key], value, atol=1e-5, rtol=0), key
    assert summary["updates"] == 50 and summary["servers"] == servers
    # push the gradient, pull the parameters: 2 x model bytes per worker per step (+ 32-byte headers)
    for rank in range(2):
        events = [e for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if e["event"] == "train" and e["rank"] == rank]
        for before, after in zip(events, events[1:]):
            moved = (after["bytes_sent"] - before["bytes_sent"]) + (after["bytes_received"] - before["bytes_received"])
            assert moved == pytest.approx(2 * MODEL_BYTES, rel=0.05)


@pytest.mark.timeout(240)
def test_backup_workers_take_the_straggler_off_the_critical_path(tmp_path):
    """Rank 1 sleeps 0.2 s per step. Aggregating all 3 replicas waits for it every step
    (20 steps >= 4 s); aggregating 2 lets the others go on and drops its late gradients."""
    args = ["--strategy", "ps-sync", "--workers", "3", "--steps", "20", "--straggler", "1:0.2"]
    waiting = train(tmp_path / "r3", *args, "--set", "strategy.replicas_to_aggregate=3")
    backup = train(tmp_path / "r2", *args, "--set", "strategy.replicas_to_aggregate=2")
    assert waiting["updates"] == backup["updates"] == 20
    assert waiting["dropped_gradients"] == 0 and backup["dropped_gradients"] >= 1
    # Training-loop time per step, averaged over the 3 workers (start-up excluded: it varies by
    # seconds on a loaded machine). Waiting for all 3, every worker's step lasts >= 0.2 s; with 2,
    # workers 0 and 2 stop waiting, so the mean is about (0.2 + 2 ε) / 3: less than half.
    assert waiting["step_time_s"] >= 0.2
    assert backup["step_time_s"] < 0.5 * waiting["step_time_s"]


@pytest.fixture(scope="module")
def async_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("async")
    runs = {
        "ps-async": ["--strategy", "ps-async"],
        "ssp": ["--strategy", "ssp", "--set", "strategy.staleness=2", "--straggler", "2:0.02"],
        "ps-async-straggler": ["--strategy", "ps-async", "--straggler", "2:0.03", "--steps", "100"],
    }
    return {name: (base / name, train(base / name, "--workers", "3", "--steps", "200", *ASYNC_SGD, *args))
            for name, args in runs.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["ps-async", "ssp"])
def test_async_strategies_reach_accuracy(async_runs, name):
    assert async_runs[name][1]["metrics"]["accuracy"] >= 0.93


@pytest.mark.timeout(300)
def test_ssp_never_exceeds_its_staleness_bound(async_runs):
    run_dir, summary = async_runs["ssp"]
    gaps = [e["clock_gap"] for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "train"]
    assert len(gaps) == 3 * 200 and max(gaps) <= summary["staleness_bound"] == 2
    assert max(gaps) == 2  # with a straggler the fast workers do run up to the bound


@pytest.mark.timeout(300)
def test_a_straggler_makes_ps_async_staleness_grow(async_runs):
    """While the fast ranks run, each push of the slow rank 2 (30 ms per step) lands after several
    of theirs: the histogram grows a tail past anything the calm run records, at least twice its
    maximum. (Once the fast ranks finish their budget the straggler runs alone at staleness 0,
    so the mean is not the signal.)"""
    calm, slow = async_runs["ps-async"][1]["staleness"], async_runs["ps-async-straggler"][1]["staleness"]
    assert sum(calm["histogram"].values()) == 3 * 200
    assert slow["max"] >= 2 * calm["max"]
    assert sum(n for k, n in slow["histogram"].items() if int(k) > calm["max"]) >= 5


@pytest.mark.timeout(240)
def test_ps_async_survives_a_killed_worker(tmp_path):
    summary = train(tmp_path / "run", "--strategy", "ps-async", "--workers", "3", "--steps", "200",
                    "--set", "comm.fault=1:kill@40", "--set", "comm.timeout_s=20", *ASYNC_SGD)
    assert summary["ok"] is True
    assert [lost["rank"] for lost in summary["lost_ranks"]] == [1]
    assert summary["metrics"]["accuracy"] >= 0.9
    assert sorted(r["rank"] for r in summary["comm_per_rank"]) == [0, 2, 3]  # the survivors reported


@pytest.mark.timeout(200)
def test_a_nan_gradient_is_counted_and_never_applied(tmp_path):
    summary = train(tmp_path / "run", "--strategy", "ps-async", "--workers", "2", "--steps", "50",
                    "--set", "comm.fault=1:nan@5", *ASYNC_SGD)
    assert summary["nonfinite_skipped"] == 1 and summary["updates"] == 2 * 50 - 1
    assert all(torch.isfinite(t).all() for t in final_model(tmp_path / "run").values())


def test_server_update_skips_a_nonfinite_gradient_and_applies_a_finite_one():
    """The server's own update function, on a one-tensor shard (no process group needed)."""
    server = PSAsync(StrategyConfig(name="ps-async"), Comm(0, 1, CommConfig()), num_workers=1)
    param = torch.nn.Parameter(torch.ones(3))
    server.shard, server.server_optimizer, server.nonfinite = [param], torch.optim.SGD([param], lr=0.5), 0
    assert not server.apply_gradient_(torch.tensor([1.0, float("nan"), 1.0]))
    assert torch.equal(param.detach(), torch.ones(3)) and server.nonfinite == 1 and server.version == 0
    assert server.apply_gradient_(torch.zeros(3)) is True
    assert server.apply_gradient_(torch.tensor([2.0, 2.0, 2.0]))
    assert torch.equal(param.detach(), torch.zeros(3)) and server.version == 2
