"""Pipeline model parallelism (P stages × W replicas): equal to one process and to data parallel,
every strategy per stage, exact resume, and bad input refused."""
from __future__ import annotations

import json
import os

import pytest
import torch

from agentsync.cli import main
from agentsync.parallel import Layout
from agentsync.parallel.split import balanced_split, stage_keys, stage_module, to_whole_keys
from agentsync.tasks.charlm import CharLM, CharLMConfig
from conftest import agentsync, torchrun_script, train
from test_allreduce import LR, assert_close, single_process_reference

STEPS = 20
SGD = ["--set", "optimizer.name=sgd", "--set", f"optimizer.lr={LR}", "--set", "optimizer.momentum=0"]


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


# -- the split and the layout (one process) -----------------------------------------------------------
def test_balanced_split_minimises_the_largest_stage():
    assert balanced_split([8320, 16512, 1290], 2) == [0, 1, 3]        # digits: 8,320 | 17,802
    assert balanced_split([5, 5, 5, 5], 2) == [0, 2, 4]
    assert balanced_split([1, 1, 1], 3) == [0, 1, 2, 3]
    assert balanced_split([12288, *[49984] * 4, 8448], 2) == [0, 3, 6]  # charlm, 4 blocks: embeddings + 2 | 2 + head


def test_stages_put_back_together_are_the_whole_model():
    task = CharLM(CharLMConfig(layers=3, corpus_chars=20_000), worker_rank=0, num_workers=1, seed=0)
    torch.manual_seed(0)
    whole = task.build_model()
    units = task.pipeline_units(whole)
    stages = [stage_module(units, s, 3) for s in range(3)]
    x, _ = task.pipeline_batch(0)
    h = x
    for stage in stages:
        h = stage(h)
    assert torch.equal(h, whole(x))
    parts = {k: v for s in stages for k, v in to_whole_keys(s.state_dict(), stage_keys(whole, s)).items()}
    assert parts.keys() == whole.state_dict().keys()


def test_layout_stage_groups_and_pipelines():
    grid = Layout(stages=2, workers=2)
    assert grid.stage_ranks(0) == [0, 1] and grid.stage_ranks(1) == [2, 3]
    assert grid.pipeline_ranks(0) == [0, 2] and grid.pipeline_ranks(1) == [1, 3]
    servers = Layout(stages=2, workers=2, servers_per_stage=1)  # servers per stage, after its workers
    assert servers.world_size == 6 and servers.stage_ranks(1) == [3, 4, 5]
    assert servers.pipeline_ranks(1) == [1, 4] and servers.reporter_ranks() == [2, 5]
    assert not servers.is_worker(5) and servers.local_of(4) == 1


def test_parallel_section_is_the_same_in_toml_flags_and_set(tmp_path):
    from agentsync.config import load_config
    (tmp_path / "run.toml").write_text('[task]\nname = "charlm"\nlayers = 10\n\n'
                                       '[parallel]\nstages = 2\nschedule = "1f1b"\nmicrobatches = 8\n')
    from_toml = load_config(tmp_path / "run.toml")
    from_set = load_config(flags={"task.name": "charlm", "parallel.stages": 2}, overrides=[
        "task.layers=10", "parallel.schedule=1f1b", "parallel.microbatches=8"])
    assert from_toml.parallel == from_set.parallel and from_toml.world_size == 4
    (tmp_path / "again.toml").write_text(from_set.to_toml())  # the resolved config re-runs as is
    assert load_config(tmp_path / "again.toml").parallel == from_set.parallel
    assert "[parallel]" not in load_config().to_toml()  # P = 1 configs read as before


# -- bad input ------------------------------------------------------------------------------------------
BAD = {
    "more stages than units": (["--stages", "4"], "parallel.stages must be <= 3"),
    "microbatches not dividing the batch": (["--stages", "2", "--set", "parallel.microbatches=5"],
                                            "parallel.microbatches must be a divisor of task.batch_size (32)"),
    "unknown schedule": (["--stages", "2", "--set", "parallel.schedule=interleaved1f1b"],
                         "parallel.schedule must be one of 1f1b, gpipe"),
    "a task that does not split": (["--task", "frozenlake-q", "--stages", "2"],
                                   "does not split into pipeline stages; tasks that do: digits, charlm"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_pipeline_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    argv, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("agentsync: error: ") and expected in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
def test_bad_pipeline_input_exits_2_from_the_real_cli(tmp_path):
    result = agentsync("train", "--stages", "9", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "parallel.stages must be <= 3" in result.stderr
    assert not (tmp_path / "run").exists()


# -- equivalences (real processes) ----------------------------------------------------------------------
def one_process(workers: int) -> dict:
    """Plain SGD in one process on the concatenation of every replica's batch at each step."""
    return single_process_reference(workers, steps=STEPS)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stages_match_one_process(tmp_path, schedule):
    summary = train(tmp_path / "run", "--workers", "1", "--stages", "2", "--steps", str(STEPS), *SGD,
                    "--set", f"parallel.schedule={schedule}", "--set", "parallel.microbatches=4")
    assert summary["stages"] == 2 and summary["schedule"] == schedule
    assert_close(final_model(tmp_path / "run"), one_process(1), atol=1e-5)
    # activations forward and their gradients back: 4 microbatches × 8 samples × 128 floats each way
    assert summary["pipeline_comm"]["bytes_sent"] == STEPS * 2 * 4 * 8 * 128 * 4
    assert summary["comm"]["bytes_sent"] == 0  # one replica per stage: nothing to synchronize
    assert 0 < summary["bubble"]["measured"] < 1 and summary["bubble"]["schedule"] == pytest.approx(1 / 5)


@pytest.mark.timeout(300)
def test_two_stages_two_replicas_allreduce_match_data_parallel(tmp_path):
    train(tmp_path / "p1", "--workers", "2", "--steps", str(STEPS), *SGD)
    summary = train(tmp_path / "p2", "--workers", "2", "--stages", "2", "--steps", str(STEPS), *SGD)
    assert summary["world_size"] == 4
    assert_close(final_model(tmp_path / "p2"), final_model(tmp_path / "p1"), atol=1e-5)
    assert_close(final_model(tmp_path / "p2"), one_process(2), atol=1e-5)


# -- every strategy, per stage ------------------------------------------------------------------------------
LONGER, ASYNC = ["--steps", "400"], ["--steps", "400", "--set", "optimizer.lr=0.1"]
STRATEGIES = {"none": [], "allreduce": [], "gossip": [], "local-sgd": [], "diloco": LONGER, "ensemble": [],
              "ps-sync": [], "ps-async": ASYNC, "ssp": ASYNC, "easgd": []}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_with_two_stages(tmp_path, name):
    summary = train(tmp_path / "run", "--strategy", name, "--workers", "2", "--stages", "2", "--steps", "200",
                    "--set", "eval_every=0", *STRATEGIES[name])
    assert summary["metrics"]["accuracy"] >= 0.93, summary["metrics"]
    servers = name in ("ps-sync", "ps-async", "ssp", "easgd")  # one server per stage, after its 2 workers
    assert summary["world_size"] == (6 if servers else 4) and summary["stages"] == 2
    result = agentsync("evaluate", str(tmp_path / "run"), "--json")  # the whole model, put back together
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["metrics"]["accuracy"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["gossip", "local-sgd"])
def test_a_stage_averages_only_within_its_own_group(tmp_path, name):
    """Each stage's replicas exchange that stage's parameters and nothing else: a rank's synchronization
    bytes are in proportion to its stage's parameter count (digits: 8,320 | 17,802)."""
    summary = train(tmp_path / "run", "--strategy", name, "--workers", "2", "--stages", "2", "--steps", "20",
                    "--set", "eval_every=0", "--set", "log_every=1")
    sent = {r["rank"]: r["bytes_sent"] for r in summary["comm_per_rank"]}
    assert sent[0] == sent[1] > 0 and sent[2] == sent[3] > 0
    assert sent[2] / sent[0] == pytest.approx(17802 / 8320, rel=1e-3)
    memory = summary["memory_by_stage"]
    assert memory["0"]["param_bytes"] == 8320 * 4 and memory["1"]["param_bytes"] == 17802 * 4


@pytest.mark.timeout(300)
def test_resume_with_two_stages_is_exact(tmp_path):
    args = ["--workers", "2", "--stages", "2", "--set", "eval_every=5", "--set", "parallel.schedule=1f1b"]
    whole = train(tmp_path / "whole", *args, "--steps", "20")
    train(tmp_path / "run", *args, "--steps", "10")
    result = agentsync("train", "--resume", str(tmp_path / "run"), "--steps", "20")
    assert result.returncode == 0, result.stderr
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert torch.equal(torch.cat([v.flatten() for v in final_model(tmp_path / "run").values()]),
                       torch.cat([v.flatten() for v in final_model(tmp_path / "whole").values()]))
    assert resumed["pipeline_comm"] == whole["pipeline_comm"]
    assert [{k: r[k] for k in ("rank", "bytes_sent", "messages")} for r in resumed["comm_per_rank"]] == \
           [{k: r[k] for k in ("rank", "bytes_sent", "messages")} for r in whole["comm_per_rank"]]
    assert resumed["metrics"] == whole["metrics"]


@pytest.mark.timeout(180)
def test_bring_your_own_pipelined_loop_matches_one_process(tmp_path):
    result = torchrun_script("pipeline_byo.py", 2, str(tmp_path), str(STEPS), str(LR), "1f1b")
    assert result.returncode == 0, result.stderr[-3000:]
    parts = {k: v for s in (0, 1) for k, v in torch.load(tmp_path / f"stage-{s}.pt", weights_only=True).items()}
    assert_close(parts, one_process(1), atol=1e-5)


# -- compare and advise know P ------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_compare_runs_each_number_of_stages(tmp_path):
    result = agentsync("compare", "--out", str(tmp_path / "study"), "--task", "digits", "--strategies", "allreduce",
                       "--workers", "1", "--stages", "1,2", "--steps", "20", "--set", "eval_every=10", timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = (tmp_path / "study" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "allreduce P=2" in rows[2] and "allreduce P=2" not in rows[1]
    summary = json.loads((tmp_path / "study" / "runs" / "allreduce-P-2-w1-s0" / "summary.json").read_text())
    assert summary["stages"] == 2


def test_advise_models_the_bubble_and_the_activations():
    """The model's closed form, on a given compute time (a measured one would make the test timing-dependent)."""
    from agentsync.config import load_config
    from agentsync.netsim import NetSim
    from agentsync.report.advise import pipeline_shape, predict

    net, compute_s = NetSim.parse("latency=1ms"), 0.01
    for m in (2, 4, 8):
        cfg = load_config(None, flags={"task.name": "digits", "strategy.name": "allreduce", "workers": 1,
                                       "parallel.stages": 2}, overrides=[f"parallel.microbatches={m}"])
        piped = predict(cfg, net, compute_s, 0, cores=2, shape=pipeline_shape(cfg))
        assert piped.bubble == pytest.approx(1 / (m + 1))
        assert piped.pipeline_bytes_per_step == 2 * m * (32 // m) * 128 * 4  # digits' boundary: 128 floats a sample
        assert piped.pipeline_s == pytest.approx(2 * m * 1e-3)              # 2 (M + P − 2) hops of 1 ms
        assert piped.compute_s == pytest.approx(compute_s / 2 * (m + 1) / m)  # half the work, idle a bubble

