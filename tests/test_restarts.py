"""Elastic restarts: a job whose rank dies starts again by itself from its latest checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import agentsync, read_jsonl, train

DIGITS = ["--task", "digits", "--workers", "3", "--set", "eval_every=0", "--set", "comm.timeout_s=20"]


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def assert_same_parameters(run_dir, reference_dir) -> None:
    ours, reference = final_model(run_dir), final_model(reference_dir)
    for key, value in reference.items():
        assert torch.allclose(ours[key], value, atol=1e-6, rtol=0), key


@pytest.mark.timeout(300)
def test_allreduce_restarts_from_its_checkpoint_and_ends_as_if_never_interrupted(tmp_path):
    """Rank 1 is killed at step 45; with checkpoints every 20 steps the job restarts from step 40
    (5 steps redone, fewer than checkpoint_every) and ends with the uninterrupted run's parameters."""
    args = [*DIGITS, "--steps", "60", "--set", "checkpoint_every=20", "--set", "log_every=5"]
    train(tmp_path / "whole", *args)
    result = agentsync("train", "--out", str(tmp_path / "run"), *args, "--set", "comm.fault=1:kill@45",
                       "--max-restarts", "1")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "restart 1 of 1" in line]
    assert len(said) == 1 and said[0].startswith("agentsync: rank 1 was killed by SIGKILL; the job stopped")
    assert said[0].endswith("; restart 1 of 1 from the checkpoint at step 40"), said
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["restarts"] == 1 and summary["steps"] == 60
    assert_same_parameters(tmp_path / "run", tmp_path / "whole")
    for rank in (0, 1, 2):  # metrics read as one run: every logged step once
        steps = [e["step"] for e in read_jsonl(tmp_path / "run" / "metrics.jsonl")
                 if e["event"] == "train" and e["rank"] == rank]
        assert steps == list(range(5, 61, 5)), (rank, steps)


@pytest.mark.timeout(300)
def test_ps_sync_restarts_from_its_midrun_snapshot_and_ends_as_if_never_interrupted(tmp_path):
    """Parameter servers checkpoint mid-run too (a consistent cut of servers and workers): killed at
    step 45, the job restarts from step 40 and ends with the uninterrupted run's parameters (the
    servers sum the workers' gradients in arrival order: equal up to float rounding)."""
    args = [*DIGITS, "--strategy", "ps-sync", "--steps", "60", "--set", "checkpoint_every=20"]
    train(tmp_path / "whole", *args)
    result = agentsync("train", "--out", str(tmp_path / "run"), *args, "--set", "comm.fault=1:kill@45",
                       "--max-restarts", "1")
    assert result.returncode == 0, result.stderr
    assert "restart 1 of 1 from the checkpoint at step 40" in result.stderr
    assert_same_parameters(tmp_path / "run", tmp_path / "whole")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["allreduce", "ps-sync"])
def test_without_restarts_left_the_job_fails_naming_the_rank(tmp_path, strategy):
    result = agentsync("train", "--out", str(tmp_path / "run"), *DIGITS, "--strategy", strategy, "--steps", "60",
                       "--set", "comm.fault=1:kill@10")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("agentsync: error: rank 1 was killed by SIGKILL")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_max_restarts_is_refused_outside_the_local_launcher(tmp_path):
    result = agentsync("train", "--out", str(tmp_path / "run"), "--launcher", "ray", "--max-restarts", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "agentsync: error: launch.max_restarts must be used only by the local launcher (under torchrun pass "
        "torchrun's --max-restarts) (got 1)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(300)
def test_torchrun_max_restarts_resumes_from_the_checkpoint(tmp_path):
    """Under ``torchrun --max-restarts 1`` the restarted attempt resumes from the run's checkpoint
    instead of refusing the non-empty folder, and ends as if never interrupted."""
    import subprocess
    import sys

    from conftest import ENV, ROOT

    args = [*DIGITS, "--workers", "2", "--steps", "60", "--set", "checkpoint_every=20"]
    train(tmp_path / "whole", *args)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1", "-m", "agentsync", "train", "--launcher", "torchrun",
                             "--out", str(tmp_path / "run"), *args, "--set", "comm.fault=1:kill@45"],
                            capture_output=True, text=True, timeout=240, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["restarts"] == 1
    assert_same_parameters(tmp_path / "run", tmp_path / "whole")
