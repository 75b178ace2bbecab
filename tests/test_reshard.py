"""``--resume`` on another worker count: the checkpoint's state is resharded over the new workers."""
from __future__ import annotations

import json

import pytest

from agentsync.checkpoint import source_rank
from conftest import agentsync, read_jsonl, train

ACCURACY = 0.9
"""The bar of the kill-a-worker tests: 100 steps on 2 workers then 200 on 4 reach 0.95-0.975 here."""


def test_each_new_rank_takes_a_saved_state():
    assert [source_rank(r, workers=2, saved_workers=2, saved_ranks=[0, 1]) for r in (0, 1)] == [0, 1]
    assert [source_rank(r, workers=4, saved_workers=2, saved_ranks=[0, 1]) for r in range(4)] == [0, 1, 0, 1]
    assert [source_rank(r, workers=1, saved_workers=3, saved_ranks=[0, 1, 2]) for r in range(1)] == [0]
    # parameter servers after the workers: server j is saved server j; a lost worker has no state
    assert [source_rank(r, workers=4, saved_workers=2, saved_ranks=[0, 1, 2]) for r in range(5)] == [0, 1, 0, 1, 2]
    assert [source_rank(r, workers=3, saved_workers=3, saved_ranks=[0, 2, 3]) for r in range(4)] == [0, None, 2, 3]
    assert [source_rank(r, workers=2, saved_workers=3, saved_ranks=[0, 2, 3]) for r in range(3)] == [0, 2, 3]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["allreduce", "local-sgd", "diloco", "ps-sync", "ps-async"])
def test_a_run_written_by_two_workers_resumes_on_four(tmp_path, strategy):
    run = tmp_path / "run"
    before = train(run, "--task", "digits", "--strategy", strategy, "--workers", "2", "--steps", "100",
                   "--set", "eval_every=50")
    result = agentsync("train", "--resume", str(run), "--workers", "4", "--steps", "300")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["workers"] == 4 and summary["metrics"]["accuracy"] >= ACCURACY
    assert summary["samples"] == before["samples"] + 4 * 200 * 32  # cumulative: the old workers' samples carry on
    evals = [e["step"] for e in read_jsonl(run / "metrics.jsonl") if e["event"] == "eval"]
    assert evals == [0, 50, 150, 200, 250]  # metrics go on from the checkpoint's step (100)


@pytest.mark.parametrize("args,reason", [
    (["--strategy", "gossip"], "each worker's replica and its place in the topology are its own"),
    (["--strategy", "ensemble"], "each ensemble member is a model of its own"),
    (["--task", "frozenlake-q", "--strategy", "allreduce"], "each worker's environments, statistics and replay are its own"),
    (["--strategy", "allreduce", "--set", "optimizer.lr_scaling=linear"],
     "optimizer.lr_scaling=linear scaled the learning rate for 2 averaged gradients"),
])
def test_where_state_is_per_worker_another_count_is_refused(tmp_path, args, reason):
    run = tmp_path / "run"
    train(run, *args, "--workers", "2", "--steps", "10", "--set", "eval_every=0")
    result = agentsync("train", "--resume", str(run), "--workers", "3", "--steps", "20")
    assert result.returncode == 2
    line, = result.stderr.strip().splitlines()
    assert line.startswith("agentsync: error: --resume cannot change workers under ") and reason in line


def test_resume_refuses_optimizer_settings_its_saved_state_would_override(tmp_path):
    """The optimizer's state_dict carries lr (and momentum, ...): a new value at --resume would be
    silently replaced by the saved one, so it is refused."""
    run = tmp_path / "run"
    train(run, "--workers", "2", "--steps", "10", "--set", "eval_every=0")
    result = agentsync("train", "--resume", str(run), "--steps", "20", "--set", "optimizer.lr=0.2")
    assert result.returncode == 2
    line, = result.stderr.strip().splitlines()
    assert line.startswith("agentsync: error: --resume cannot change optimizer.lr: ")
