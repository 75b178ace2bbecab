"""diloco against a DiLoCo written out here: identical replicas and a shared θ_start after every
outer step, exact resume, outer momentum 0, and the equivalence with local-sgd."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from agentsync.checkpoint import load_rank_states
from agentsync.tasks.digits import Digits, DigitsConfig
from conftest import agentsync, train

W, H, OUTER = 2, 5, 3
STEPS = H * OUTER
RUN = ["--strategy", "diloco", "--workers", str(W), "--set", f"strategy.inner_steps={H}"]


def checkpoint(run_dir) -> tuple[dict, list[dict]]:
    """The final model and each rank's saved state."""
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return saved["model"], load_rank_states(run_dir)


def as_vector(state: dict) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in state.values()])


@torch.no_grad()
def copy_into_(model: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def reference_diloco(outer_steps: int) -> torch.Tensor:
    """DiLoCo by hand: each worker's AdamW (lr 1e-3, wd 0.01: the preferred inner optimizer on
    digits) on its own batches for H steps; Δ = θ_start − mean_i θ_i; outer Nesterov SGD (lr 0.7,
    momentum 0.9) on θ_start; every replica ← θ_start. The inner optimizers keep their state
    across outer steps, as in DiLoCo. Returns θ_start."""
    tasks = [Digits(DigitsConfig(), worker_rank=r, num_workers=W, seed=0) for r in range(W)]
    torch.manual_seed(0)
    init = tasks[0].build_model()
    models = [copy.deepcopy(init) for _ in tasks]
    inner = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for m in models]
    start = parameters_to_vector(init.parameters()).detach().clone().requires_grad_()
    outer = torch.optim.SGD([start], lr=0.7, momentum=0.9, nesterov=True)
    for step in range(H * outer_steps):
        for task, model, optimizer in zip(tasks, models, inner):
            optimizer.zero_grad()
            task.loss(model, step)[0].backward()
            optimizer.step()
        if (step + 1) % H == 0:
            mean = torch.stack([parameters_to_vector(m.parameters()).detach() for m in models]).mean(0)
            start.grad = start.detach() - mean
            outer.step()
            for model in models:
                copy_into_(model, start.detach())
    return start.detach()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("diloco") / "whole"
    return out, train(out, *RUN, "--steps", str(STEPS))


@pytest.mark.timeout(240)
def test_diloco_equals_a_reference_diloco_for_three_outer_steps(whole):
    run_dir, summary = whole
    final, ranks = checkpoint(run_dir)
    expected = reference_diloco(OUTER)
    assert torch.allclose(as_vector(final), expected, atol=1e-6, rtol=0), (as_vector(final) - expected).abs().max()
    # right after the outer step every replica is θ_start, and every rank holds the same θ_start
    assert summary["consensus_distance"] == 0.0
    for rank in ranks:
        assert torch.equal(rank["state"]["strategy"]["start"], ranks[0]["state"]["strategy"]["start"])
        assert torch.equal(as_vector(rank["state"]["model"]), ranks[0]["state"]["strategy"]["start"])


@pytest.mark.timeout(300)
def test_resume_between_outer_steps_is_exact(whole, tmp_path):
    run_dir, summary = whole
    split = tmp_path / "split"
    train(split, *RUN, "--steps", "7")  # stops inside the second outer period
    result = agentsync("train", "--resume", str(split), "--steps", str(STEPS))
    assert result.returncode == 0, result.stderr
    resumed, resumed_ranks = checkpoint(split)
    final, ranks = checkpoint(run_dir)
    assert torch.allclose(as_vector(resumed), as_vector(final), atol=1e-6, rtol=0)
    for mine, theirs in zip(resumed_ranks, ranks):
        assert torch.allclose(mine["state"]["strategy"]["start"], theirs["state"]["strategy"]["start"], atol=1e-6)
        assert mine["samples"] == theirs["samples"]
        for key in ("bytes_sent", "bytes_received", "messages"):
            assert mine["stats"][key] == theirs["stats"][key], key


@pytest.mark.timeout(300)
def test_outer_lr_1_without_momentum_equals_local_sgd(tmp_path):
    """θ_start − 1·(θ_start − mean θ_i) = mean θ_i: local-sgd's average, with the same inner AdamW."""
    adamw = ["--workers", str(W), "--steps", "12", "--set", "optimizer.name=adamw", "--set", "optimizer.lr=0.001",
             "--set", "optimizer.weight_decay=0.01"]
    train(tmp_path / "diloco", "--strategy", "diloco", "--set", "strategy.inner_steps=4", "--set",
          "strategy.outer_lr=1", "--set", "strategy.outer_momentum=0", *adamw)
    train(tmp_path / "local", "--strategy", "local-sgd", "--set", "strategy.period=4", *adamw)
    a, _ = checkpoint(tmp_path / "diloco")
    b, _ = checkpoint(tmp_path / "local")
    assert torch.allclose(as_vector(a), as_vector(b), atol=1e-6, rtol=0), (as_vector(a) - as_vector(b)).abs().max()


@pytest.mark.timeout(240)
def test_outer_momentum_0_trains_with_plain_sgd(tmp_path):
    """The documented range [0, 1) includes 0 (Nesterov needs momentum > 0: plain SGD then)."""
    summary = train(tmp_path / "run", *RUN, "--steps", "10", "--set", "strategy.outer_momentum=0")
    assert summary["ok"] and summary["consensus_distance"] == 0.0
    _, ranks = checkpoint(tmp_path / "run")
    assert ranks[0]["state"]["strategy"]["outer"]["param_groups"][0]["nesterov"] is False
