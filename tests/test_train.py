"""End-to-end training runs through the real CLI: accuracy, resume, the three supervised tasks,
torchrun, and a killed worker."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from agentsync.tasks.charlm import stdlib_text
from conftest import ENV, ROOT, agentsync, read_jsonl, train, train_in_subprocess


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The issue's reference run, shared: digits, allreduce, 2 workers, 400 steps."""
    run = tmp_path_factory.mktemp("digits") / "run"
    return run, train(run, "--task", "digits", "--strategy", "allreduce", "--workers", "2", "--steps", "400")


@pytest.mark.timeout(180)
def test_digits_allreduce_reaches_accuracy_and_writes_outputs(tmp_path, digits_run):
    run, summary = digits_run
    assert summary["metrics"]["accuracy"] >= 0.95
    assert summary["ok"] is True and summary["steps"] == 400 and summary["workers"] == 2
    assert {"wall_time_s", "comm", "throughput", "seed", "task", "strategy"} <= summary.keys()
    assert {p.name for p in run.iterdir()} >= {"config.toml", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    events = read_jsonl(run / "metrics.jsonl")
    assert {e["rank"] for e in events if e["event"] == "train"} == {0, 1}
    assert [e["step"] for e in events if e["event"] == "eval"] == [0, 100, 200, 300]
    # `evaluate` recomputes the final metrics from the checkpoint alone
    result = agentsync("evaluate", str(run), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["metrics"]["accuracy"], abs=1e-6)
    # the written config re-runs as is
    assert agentsync("train", "--config", str(run / "config.toml"), "--steps", "1",
                     "--out", str(tmp_path / "again")).returncode == 0


@pytest.mark.timeout(240)
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, digits_run):
    """SGD with momentum, so the optimizer state must be restored too, and the data order must continue."""
    train(tmp_path / "split", "--task", "digits", "--strategy", "allreduce", "--workers", "2", "--steps", "200")
    result = agentsync("train", "--resume", str(tmp_path / "split"), "--steps", "400")
    assert result.returncode == 0, result.stderr
    whole, resumed = final_model(digits_run[0]), final_model(tmp_path / "split")
    for key in whole:
        assert torch.allclose(whole[key], resumed[key], atol=1e-6, rtol=0), key
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["steps"] == 400


@pytest.mark.timeout(240)
def test_charlm_learns_more_than_character_frequencies(tmp_path):
    """Held-out loss below the bigram conditional entropy of the training text (about 2.3 nats):
    only a model that uses more than the previous character can get there. Uniform guessing
    over 128 codes scores ln 128 = 4.85 nats, the unigram entropy is about 3.2."""
    text = stdlib_text(400_000)
    train_text = text[: int(0.9 * len(text))]
    pairs = torch.zeros(128, 128)
    pairs.index_put_((train_text[:-1], train_text[1:]), torch.ones(len(train_text) - 1), accumulate=True)
    joint, conditional = pairs / pairs.sum(), pairs / pairs.sum(1, keepdim=True).clamp(min=1)
    seen = joint > 0
    bigram_entropy = -(joint[seen] * conditional[seen].log()).sum().item()

    summary = train(tmp_path / "run", "--task", "charlm", "--workers", "2", "--steps", "300")
    assert summary["metrics"]["loss"] < bigram_entropy


@pytest.mark.timeout(180)
def test_autoencoder_halves_reconstruction_error(tmp_path):
    summary = train(tmp_path / "run", "--task", "autoencoder", "--workers", "2", "--steps", "400")
    evals = [e for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if e["event"] == "eval"]
    initial = evals[0]["reconstruction_error"]
    assert evals[0]["step"] == 0
    assert summary["metrics"]["reconstruction_error"] <= 0.5 * initial


LAUNCHER_ARGS = ["--task", "digits", "--workers", "2", "--steps", "100", "--seed", "3"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    return train(tmp_path_factory.mktemp("local") / "run", *LAUNCHER_ARGS)


def assert_same_run(summary: dict, reference: dict) -> None:
    for key, value in reference["metrics"].items():
        assert summary["metrics"][key] == pytest.approx(value, abs=1e-6)
    assert summary["comm"]["bytes_sent"] == reference["comm"]["bytes_sent"]


@pytest.mark.timeout(240)
def test_torchrun_launcher_matches_local_launcher(tmp_path, local_run):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "agentsync", "train", "--launcher", "torchrun", "--out", str(tmp_path / "tr"),
                             *LAUNCHER_ARGS], capture_output=True, text=True, timeout=180, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert_same_run(json.loads((tmp_path / "tr" / "summary.json").read_text()), local_run)


@pytest.mark.timeout(240)
def test_torchrun_parameter_server_run_is_reported_once_by_the_rank_that_wrote_it(tmp_path):
    """Under ``ps-*`` server 0 (rank W) writes the summary: it prints the table, after writing it,
    and worker 0 does not print (it could race ahead of the file, or show a resumed run's old one)."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                             "-m", "agentsync", "train", "--launcher", "torchrun", "--out", str(tmp_path / "ps"),
                             "--task", "digits", "--strategy", "ps-sync", "--workers", "2", "--steps", "20"],
                            capture_output=True, text=True, timeout=180, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run folder:") == 1 and "2 workers · 20 steps" in result.stdout, result.stdout
    assert json.loads((tmp_path / "ps" / "summary.json").read_text())["steps"] == 20


@pytest.mark.timeout(240)
def test_ray_launcher_matches_local_launcher(tmp_path, local_run):
    """One Ray task per rank on a local Ray instance bound to 127.0.0.1."""
    assert_same_run(train_in_subprocess(tmp_path / "ray", "--launcher", "ray", *LAUNCHER_ARGS), local_run)


@pytest.mark.timeout(180)
def test_killed_worker_stops_the_job_naming_the_rank(tmp_path):
    timeout_s = 20
    start = time.monotonic()
    result = agentsync("train", "--out", str(tmp_path / "run"), "--steps", "400",
                       "--set", "comm.fault=1:kill@30", "--set", f"comm.timeout_s={timeout_s}")
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("agentsync: error: rank 1 was killed by SIGKILL"), result.stderr
    # bounded by the collective timeout plus the launcher's grace period, never a hang
    assert elapsed < timeout_s + 10 + 30
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("asked, expected", [(None, 0), (3, 3)])
def test_leaving_after_exit_handlers_runs_every_handler_and_keeps_the_code(asked, expected):
    """The CLI's quick exit (agentsync.leave) skips only the interpreter's teardown: an exit handler
    registered after agentsync's still runs and still sees its output flushed, and the code is the one
    asked for. A program that never asks exits as usual."""
    ask = f"leave.leave_after_exit_handlers({asked})" if asked is not None else "pass"
    program = ("import atexit, sys\nfrom agentsync import leave\n"
               "atexit.register(lambda: sys.stdout.write('handler ran'))\n"
               f"sys.stdout.write('unflushed ')\n{ask}\n")
    buffered = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # stdout to a pipe: block-buffered
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=50, env=buffered)
    assert (result.returncode, result.stdout, result.stderr) == (expected, "unflushed handler ran", "")
