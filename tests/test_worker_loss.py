"""Kill a worker mid-run: the strategies with no single point of failure finish without it.

Asynchronous parameter servers drop the dead worker; decentralized strategies (gossip, local SGD,
DiLoCo) re-form their process group over the survivors (agentsync.membership). Synchronous ones
stop naming the rank, or restart from their checkpoint with --max-restarts (test_restarts.py).
"""
from __future__ import annotations

import pytest

from agentsync.config import RunConfig, build_config
from agentsync.launch import tolerated_loss
from conftest import read_jsonl, train

STEPS = 300
SURVIVORS_ACCURACY = 0.9
"""The issue's bar. Whole runs of these strategies reach 0.93-0.96 in 300 steps on digits; two
survivors train on two thirds of the data from the loss on, and still pass 0.9 with margin."""
LOSS_TIMEOUT_S = 8
"""Where the survivors are blocked in an operation the dead worker never joins, they learn of the
loss when it times out; a healthy operation here waits well under a second (steps of milliseconds,
digits evaluations of a few hundred), so 8 s leaves a wide margin."""
PS_SGD = ["--set", "optimizer.lr=0.1"]  # ps-async and ssp prefer momentum 0 (as in test_ps.py)
STREAMING = ["--set", "strategy.fragments=2", "--set", "strategy.overlap=3", "--set", "strategy.mix=0.5"]
"""Streaming DiLoCo (H = 20): fragment 0's sync starts after step 59 and is applied after step 62;
worker 1 dies at step 60, so the survivors (as a rule) find the loss waiting for it, and drop it."""
SCATTER_GATHER = ["--set", "comm.compression=qsgd:bits=4", "--set", "comm.compressed_sum=scatter-gather"]
"""DiLoCo's pseudo-gradients summed encoded, chunk by chunk: the survivors' chunks are a half, not
a third, of the payload, so their error-feedback memories (keyed by the group's size) start anew."""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy,lost,options", [
    *[pytest.param(strategy, lost, PS_SGD if strategy in ("ps-async", "ssp") else [], id=f"{strategy}-{lost}")
      for strategy, lost in [("gossip", 1), ("gossip", 0), ("local-sgd", 1), ("diloco", 1), ("ps-async", 1),
                             ("ps-async", 0), ("ssp", 1), ("easgd", 1)]],
    pytest.param("diloco", 1, STREAMING, id="diloco-streaming-1"),
    pytest.param("diloco", 1, SCATTER_GATHER, id="diloco-scatter-gather-1"),
])
def test_a_killed_worker_is_named_and_the_survivors_finish(tmp_path, strategy, lost, options):
    summary = train(tmp_path / "run", "--task", "digits", "--strategy", strategy, "--workers", "3",
                    "--steps", str(STEPS), "--set", f"comm.fault={lost}:kill@60",
                    "--set", f"comm.timeout_s={LOSS_TIMEOUT_S}",
                    *options)
    assert summary["ok"] is True
    assert [entry["rank"] for entry in summary["lost_ranks"]] == [lost]
    assert summary["metrics"]["accuracy"] >= SURVIVORS_ACCURACY
    survivors = sorted(set(range(summary["world_size"])) - {lost})
    assert sorted(r["rank"] for r in summary["comm_per_rank"]) == survivors  # reported by their first rank
    if strategy in ("gossip", "local-sgd", "diloco"):
        entry = summary["lost_ranks"][0]
        assert 60 <= entry["step"] <= 60 + 25  # the survivors went on from the next synchronization
        trained = {e["rank"]: e["step"] for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if e["event"] == "train"}
        assert all(trained[r] == STEPS for r in survivors) and trained[lost] <= 60  # every survivor to the end


def test_which_losses_a_job_goes_on_without():
    def cfg(strategy: str, launcher: str = "local", task: str = "digits") -> RunConfig:
        return build_config({"task": {"name": task}, "strategy": {"name": strategy}, "workers": 3,
                             "launch": {"name": launcher}})

    assert tolerated_loss(cfg("gossip"), 0) and tolerated_loss(cfg("diloco"), 2)
    assert not tolerated_loss(cfg("gossip", "ray"), 1)  # only the local launcher announces losses
    assert not tolerated_loss(cfg("allreduce"), 1) and not tolerated_loss(cfg("ensemble"), 1)
    assert tolerated_loss(cfg("ps-async"), 0) and not tolerated_loss(cfg("ps-async"), 3)  # a server never
