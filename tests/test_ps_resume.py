"""``--resume`` of parameter-server runs: they continue, count on from where they stopped, and a
resume that fails never passes for a finished run."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import agentsync, train

ASYNC_SGD = ["--set", "optimizer.lr=0.1"]
VARIANTS = {"ps-sync": [], "ps-async": ASYNC_SGD, "ssp": ASYNC_SGD + ["--set", "strategy.staleness=1"],
            "easgd": ["--set", "strategy.tau=2"]}
COMMON = ["--workers", "2", "--set", "eval_every=0"]


def resume(run_dir, steps: int, *args: str):
    return agentsync("train", "--resume", str(run_dir), "--steps", str(steps), *args)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_resumed_run_continues_and_counts_on(tmp_path, name):
    args = ["--strategy", name, *COMMON, *VARIANTS[name]]
    first = train(tmp_path / "run", *args, "--steps", "10")
    result = resume(tmp_path / "run", 20)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 20 and first["steps"] == 10  # a fresh summary, of the new budget
    assert summary["lost_ranks"] == [] and summary["nonfinite_skipped"] == 0
    if name == "easgd":  # one exchange every tau = 2 steps per worker
        assert summary["updates"] == 2 * 20 // 2
    elif name == "ps-sync":
        assert summary["updates"] == 20
    else:  # one update per push, every push counted once; the histogram counts them all
        assert summary["updates"] == 2 * 20
        assert sum(summary["staleness"]["histogram"].values()) == 2 * 20
    # every rank's traffic goes on from its saved counters: training pushes and pulls only
    for rank in summary["comm_per_rank"]:
        before = next(r for r in first["comm_per_rank"] if r["rank"] == rank["rank"])
        assert rank["messages"] == 2 * before["messages"] and rank["bytes_sent"] == 2 * before["bytes_sent"]


@pytest.mark.timeout(300)
def test_a_resumed_ps_sync_run_equals_the_uninterrupted_one(tmp_path):
    """Parameters and every cumulative counter, exactly (ps-sync with 2 servers is deterministic)."""
    args = ["--strategy", "ps-sync", "--servers", "2", *COMMON, "--set", "comm.fault=0:nan@13"]
    whole = train(tmp_path / "whole", *args, "--steps", "20")
    train(tmp_path / "run", *args, "--steps", "10")
    assert resume(tmp_path / "run", 20).returncode == 0
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("updates", "nonfinite_skipped", "dropped_gradients", "lost_ranks", "steps"):
        assert resumed[key] == whole[key], key
    assert resumed["nonfinite_skipped"] == 1
    for a, b in zip(whole["comm_per_rank"], resumed["comm_per_rank"]):
        assert {k: a[k] for k in ("rank", "bytes_sent", "bytes_received", "messages")} == \
               {k: b[k] for k in ("rank", "bytes_sent", "bytes_received", "messages")}
    ours, reference = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("run", "whole"))
    for key, value in reference.items():
        assert torch.allclose(ours[key], value, atol=1e-6, rtol=0), key


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["ps-sync", "ps-async"])
def test_a_resume_whose_workers_all_die_fails_though_an_old_summary_exists(tmp_path, name):
    args = ["--strategy", name, *COMMON, *VARIANTS[name], "--set", "comm.timeout_s=20"]
    train(tmp_path / "run", *args, "--steps", "10")
    old = (tmp_path / "run" / "summary.json").read_text()
    result = resume(tmp_path / "run", 20, "--set", "comm.fault=0:kill@14,1:kill@14")
    assert result.returncode != 0, result.stdout
    assert "agentsync" in result.stderr and "rank" in result.stderr
    assert (tmp_path / "run" / "summary.json").read_text() == old  # nothing claims the run finished


@pytest.mark.timeout(300)
def test_a_crashed_ps_async_run_resumes_from_the_middle(tmp_path):
    """The whole job is killed once it has checkpointed past half its steps; --resume goes on from
    that checkpoint, and every rank's metrics continue from its step, each step logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from agentsync.checkpoint import load_checkpoint
    from agentsync.errors import ConfigError
    from conftest import ENV, ROOT, read_jsonl

    run = tmp_path / "run"
    args = ["--strategy", "ps-async", "--workers", "2", "--steps", "200", "--set", "checkpoint_every=25",
            "--set", "log_every=10", "--set", "eval_every=0", *ASYNC_SGD]
    job = subprocess.Popen([sys.executable, "-m", "agentsync", "train", "--out", str(run), *args], cwd=ROOT, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    step, deadline = 0, time.monotonic() + 200
    while step < 100 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            step = load_checkpoint(run)["step"]
        except ConfigError:  # not written yet
            pass
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert 100 <= step < 200, f"the job was not caught mid-run (checkpoint at step {step})"
    result = resume(run, 200)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ok"] and summary["updates"] == 2 * 200  # every push of both halves applied once
    for rank in (0, 1):
        logged = [e["step"] for e in read_jsonl(run / "metrics.jsonl") if e["event"] == "train" and e["rank"] == rank]
        assert logged == list(range(10, 201, 10)), (rank, logged)
