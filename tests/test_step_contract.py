"""The step contract: backward → transport → clip / skip a non-finite step → optimizer step, the
same in the CLI loop and in a bring-your-own loop, with buffers kept by the strategy's rule."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from agentsync.checkpoint import load_rank_states
from conftest import ENV, ROOT, agentsync, read_jsonl, train
from test_allreduce import single_process_reference

STEPS, LR, CLIP = 30, 0.05, 0.1
PLAIN_SGD = ["--set", "optimizer.name=sgd", "--set", f"optimizer.lr={LR}", "--set", "optimizer.momentum=0"]


def ddp_vs_byo(tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(ROOT / "tests/scripts/ddp_vs_byo.py"), str(out), *args],
                            capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_byo_loop_with_clipping_between_backward_and_step_equals_ddp(tmp_path, clip):
    """``clip_grad_norm_`` between ``backward()`` and ``sync.step()`` acts on the averaged gradient,
    as under DDP (SGD with momentum, W = 2, 30 steps)."""
    result = ddp_vs_byo(tmp_path, "--clip", str(clip))
    assert max(result["differences"].values()) < 1e-5, result["differences"]
    assert result["moved"] > 1e-2  # the models trained: equality is not two untouched copies


@pytest.mark.timeout(180)
def test_batchnorm_buffers_under_allreduce_equal_ddp_and_agree_across_ranks(tmp_path):
    """DDP broadcasts rank 0's buffers before each forward, agentsync after each step: rank 0's
    running statistics follow the same path in both, and agentsync's replicas end equal."""
    result = ddp_vs_byo(tmp_path, "--batchnorm")
    assert {"1.running_mean", "1.running_var"} <= result["differences"].keys()
    assert max(result["differences"].values()) < 1e-5, result["differences"]
    assert result["replica_spread"] == 0.0


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def rank_models(run_dir) -> list[dict]:
    ranks = load_rank_states(run_dir)
    return [r["state"]["model"] for r in sorted(ranks, key=lambda r: r["rank"])]


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.timeout(240)
def test_cli_clipping_under_allreduce_clips_the_mean_gradient(tmp_path):
    clipped = train(tmp_path / "clip", "--steps", str(STEPS), *PLAIN_SGD, "--set", f"optimizer.max_grad_norm={CLIP}")
    train(tmp_path / "free", "--steps", str(STEPS), *PLAIN_SGD)
    ours = final_model(tmp_path / "clip")
    assert max_difference(ours, single_process_reference(2, STEPS, CLIP)) < 1e-5
    assert max_difference(ours, final_model(tmp_path / "free")) > 1e-3  # the option changes the result
    assert clipped["nonfinite_skipped"] == 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scaling, factor", [("linear", 2.0), ("sqrt", 2.0 ** 0.5)])
def test_lr_scaling_under_allreduce_equals_the_scaled_learning_rate(tmp_path, scaling, factor):
    """W = 2: lr_scaling multiplies lr by 2 (or √2), bit for bit the run given that lr outright."""
    train(tmp_path / "scaled", "--steps", "10", *PLAIN_SGD, "--set", f"optimizer.lr_scaling={scaling}")
    train(tmp_path / "given", "--steps", "10", *PLAIN_SGD, "--set", f"optimizer.lr={LR * factor!r}")
    train(tmp_path / "plain", "--steps", "10", *PLAIN_SGD)
    scaled = final_model(tmp_path / "scaled")
    assert max_difference(scaled, final_model(tmp_path / "given")) == 0.0
    assert max_difference(scaled, final_model(tmp_path / "plain")) > 1e-3


@pytest.mark.timeout(240)
def test_a_nan_gradient_on_one_rank_skips_that_step_on_every_rank(tmp_path):
    """Rank 1's loss is NaN at step 10 (0-based): the averaged gradient is NaN on both ranks, both
    skip the update (optimizer state too), so 11 steps with the fault equal 10 without it."""
    faulty = train(tmp_path / "nan", "--steps", "11", *PLAIN_SGD, "--set", "optimizer.momentum=0.9",
                   "--set", "comm.fault=1:nan@10")
    train(tmp_path / "ten", "--steps", "10", *PLAIN_SGD, "--set", "optimizer.momentum=0.9")
    assert faulty["nonfinite_skipped"] == 1
    models = rank_models(tmp_path / "nan")
    assert max_difference(models[0], models[1]) == 0.0
    assert max_difference(models[0], final_model(tmp_path / "ten")) == 0.0


@pytest.mark.timeout(240)
def test_ranks_step_times_agree_with_evaluations_on(tmp_path):
    """Only rank 0 evaluates; every rank pauses with it, so no rank counts that wait as training.
    (Before the fix rank 1's step time was 7x rank 0's on this run.) Both ranks run the same
    synchronized loop, so their loop times differ only by the last step's tail."""
    summary = train(tmp_path / "run", "--task", "frozenlake-q", "--steps", "200", "--set", "eval_every=50")
    times = list(summary["step_time_by_rank"].values())
    assert len(times) == 2 and max(times) <= 1.2 * min(times), summary["step_time_by_rank"]


@pytest.mark.timeout(300)
def test_resume_continues_every_cumulative_counter(tmp_path):
    train(tmp_path / "whole", "--steps", "60", "--set", "log_every=10")
    train(tmp_path / "split", "--steps", "30", "--set", "log_every=10")
    result = agentsync("train", "--resume", str(tmp_path / "split"), "--steps", "60")
    assert result.returncode == 0, result.stderr
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    for key in ("bytes_sent", "bytes_received", "messages"):
        assert resumed["comm"][key] == whole["comm"][key], key
    assert resumed["samples"] == whole["samples"] and resumed["steps"] == 60
    sent = [e["bytes_sent"] for e in read_jsonl(tmp_path / "split" / "metrics.jsonl")
            if e["event"] == "train" and e["rank"] == 0]
    assert sent == sorted(sent) and len(sent) == 6  # cumulative across the resume, never restarting


@pytest.mark.parametrize("skip", [True, False])
def test_skip_nonfinite_decides_whether_a_nan_gradient_reaches_the_parameters(skip):
    """``optimizer.skip_nonfinite`` (on by default) skips and counts the step; off, the step goes
    ahead as under DDP and the NaN lands in the parameters."""
    from agentsync.update import UpdateRule

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.tensor([[float("nan"), 1.0, 2.0]])).sum().backward()
    update = UpdateRule(skip_nonfinite=skip).build(optimizer)
    assert update() is not skip and update.skipped == int(skip) and update.count == 1
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert changed == [not skip, not skip]
    assert torch.isnan(model.weight).any().item() is not skip


@pytest.mark.parametrize("flag, clip, skipped", [(True, 0.0, True), (False, 0.0, False), (False, 1.0, True)])
def test_a_reductions_nonfinite_flag_decides_unless_a_norm_is_computed(flag, clip, skipped):
    """``allreduce`` hands the update what its buckets' sums say. Without clipping the flag
    alone decides (the gradient is not read again); with clipping the norm is computed anyway
    and checked, so a NaN the loop put in after the reduction is still caught."""
    from agentsync.update import UpdateRule

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    if clip:
        model.bias.grad[0] = float("nan")
    update = UpdateRule(max_grad_norm=clip).build(optimizer)
    assert update(nonfinite=flag) is not skipped and update.skipped == int(skipped)


@pytest.mark.parametrize("values, nonfinite", [
    ([1.0, -2.0], False),
    ([3e38, 3e38], False),          # finite values whose float32 sum overflows: confirmed finite
    ([float("nan"), 1.0], True),
    ([float("inf"), float("-inf")], True),  # the sum is NaN
    ([-float("inf"), 0.0], True),
])
def test_allreduces_nonfinite_check_from_bucket_sums_is_exact(values, nonfinite):
    """The mean is finite exactly when every element is, whatever the sums say on the way."""
    from agentsync.sync.allreduce import holds_nonfinite

    buffers = [torch.zeros(4), torch.tensor(values, dtype=torch.float32)]
    assert holds_nonfinite(buffers, [b.sum() for b in buffers]) is nonfinite
