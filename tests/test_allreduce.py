"""allreduce: exact equivalences (DDP, one process on the concatenated batch) and byte accounting."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agentsync.tasks.digits import Digits, DigitsConfig
from conftest import ENV, ROOT, read_jsonl, train

STEPS, LR = 50, 0.05


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def single_process_reference(workers: int, steps: int = STEPS, max_norm: float = 0.0) -> dict:
    """One process, plain SGD, on the concatenation of every worker's batch at each step;
    ``max_norm`` clips the mean gradient (what allreduce with optimizer.max_grad_norm must equal)."""
    tasks = [Digits(DigitsConfig(), worker_rank=r, num_workers=workers, seed=0) for r in range(workers)]
    torch.manual_seed(0)
    model = tasks[0].build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(steps):
        batches = [t.batch(step) for t in tasks]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if max_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
    return model.state_dict()


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (key, (a[key] - b[key]).abs().max())


@pytest.mark.timeout(240)
def test_allreduce_equals_ddp_and_single_process(tmp_path):
    sgd = ["--set", "optimizer.name=sgd", "--set", f"optimizer.lr={LR}", "--set", "optimizer.momentum=0"]
    train(tmp_path / "ours", "--task", "digits", "--strategy", "allreduce", "--workers", "2",
          "--steps", str(STEPS), *sgd)
    ours = final_model(tmp_path / "ours")

    ddp_out = tmp_path / "ddp.pt"
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "tests/scripts/ddp_reference.py"), str(ddp_out), str(STEPS), str(LR)],
                         capture_output=True, text=True, timeout=180, env=ENV)
    assert ddp.returncode == 0, ddp.stderr
    assert_close(ours, torch.load(ddp_out, weights_only=True), atol=1e-5)
    assert_close(ours, single_process_reference(2), atol=1e-5)


@pytest.mark.timeout(180)
def test_bytes_per_step_equal_ring_allreduce_volume(tmp_path):
    """Ring all-reduce sends and receives 2 (W-1)/W of the gradient bytes per rank per step,
    in 2 (W-1) messages per bucket; the digits MLP fits in one bucket. W = 3 makes the factor 4/3."""
    workers, steps = 3, 20
    summary = train(tmp_path / "run", "--workers", str(workers), "--steps", str(steps),
                    "--set", "log_every=1")
    model_bytes = sum(t.numel() * t.element_size() for t in final_model(tmp_path / "run").values())
    expected = 2 * (workers - 1) / workers * model_bytes
    for rank_stats in summary["comm_per_rank"]:
        assert rank_stats["bytes_sent"] / steps == pytest.approx(expected, rel=0.05)
        assert rank_stats["bytes_received"] / steps == pytest.approx(expected, rel=0.05)
        assert rank_stats["messages"] == steps * 2 * (workers - 1)
    per_step = [e["bytes_sent"] for e in read_jsonl(tmp_path / "run" / "metrics.jsonl")
                if e["event"] == "train" and e["rank"] == 0]
    increments = [b - a for a, b in zip(per_step, per_step[1:])]
    assert increments and all(inc == pytest.approx(expected, rel=0.05) for inc in increments)


@pytest.mark.parametrize("widths", [(512, 1024, 512, 10), (64, 600, 600, 600, 3), (4, 300, 700, 700, 4)])
def test_buckets_follow_ddps_size_rule(widths):
    """Buckets are DDP's (``compute_bucket_assignment_by_size`` on the order gradients arrive, last
    layer first, 1 MiB then 25 MiB): a bucket closes once it reaches its cap, so the parameter
    that crosses the small first cap is reduced early instead of waiting in the last bucket."""
    import torch.distributed as dist
    from agentsync.sync.allreduce import make_buckets

    layers = [torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    params = [p for layer in layers for p in layer.parameters()]
    ready_order = list(reversed(params))
    ddp, _ = dist._compute_bucket_assignment_by_size(ready_order, [1 << 20, 25 << 20], [False] * len(params))
    ours = make_buckets(params, 1 << 20, 25 << 20)
    assert [[id(p) for p in b.params] for b in ours] == [[id(ready_order[i]) for i in b] for b in ddp]
    assert len(ours) > 1  # each model crosses the first cap, so the rule is exercised
