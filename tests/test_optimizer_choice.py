"""Which optimizer a run gets: the task's defaults, a strategy's preferred optimizer (only as a
whole), the user's settings — and the line ``agentsync train`` prints about it."""
from __future__ import annotations

import pytest

from agentsync.config import load_config, optimizer_choice
from agentsync.optim import OptimizerConfig
from agentsync.sync import STRATEGIES
from conftest import agentsync


def resolved(task: str, strategy: str, *overrides: str) -> OptimizerConfig:
    flags = {"task.name": task, "strategy.name": strategy}
    cfg = load_config(flags=flags, overrides=list(overrides))
    assert optimizer_choice(flags=flags, overrides=list(overrides)).config == cfg.optimizer  # what is printed
    return cfg.optimizer


def full(**fields) -> OptimizerConfig:
    return OptimizerConfig(**{"momentum": 0.0, "weight_decay": 0.0, "nesterov": False, "max_grad_norm": 0.0,
                              "lr_schedule": "constant", "lr_scaling": "none", "skip_nonfinite": True, **fields})


def test_no_preference_gives_the_task_defaults_under_the_user_fields():
    assert resolved("digits", "allreduce") == full(name="sgd", lr=0.05, momentum=0.9)
    assert resolved("digits", "allreduce", "optimizer.lr=0.1") == full(name="sgd", lr=0.1, momentum=0.9)


def test_a_preference_of_another_family_comes_as_a_whole():
    """digits is tuned for SGD: diloco's AdamW comes with its own lr and weight decay, not SGD's lr."""
    assert resolved("digits", "diloco") == full(name="adamw", lr=1e-3, weight_decay=0.01)
    assert resolved("digits", "diloco", "optimizer.lr=0.0003") == full(name="adamw", lr=3e-4, weight_decay=0.01)


def test_another_name_rules_the_preference_out():
    """--set optimizer.name=sgd under diloco: the task's SGD settings, none of AdamW's lr or decay."""
    assert resolved("digits", "diloco", "optimizer.name=sgd") == full(name="sgd", lr=0.05, momentum=0.9)
    assert resolved("digits", "diloco", "optimizer.momentum=0.5") == full(name="sgd", lr=0.05, momentum=0.5)


def test_a_task_tuned_for_the_same_family_keeps_its_lr():
    """charlm is tuned with AdamW lr 3e-3; diloco's generic 1e-3 does not replace it."""
    assert resolved("charlm", "diloco") == full(name="adamw", lr=3e-3, weight_decay=0.01)
    assert resolved("autoencoder", "diloco") == full(name="adamw", lr=3e-3, weight_decay=0.01)


def test_step_fields_come_from_the_task_unless_the_user_sets_them():
    assert resolved("cartpole-ppo", "diloco") == full(name="adamw", lr=1e-3, weight_decay=0.01, max_grad_norm=0.5,
                                                      lr_schedule="linear")
    assert resolved("cartpole-dqn", "diloco", "optimizer.name=sgd", "optimizer.lr_schedule=linear") == full(
        name="sgd", lr=1e-3, max_grad_norm=10.0, lr_schedule="linear")
    assert resolved("cartpole-ppo", "diloco", "optimizer.max_grad_norm=0", "optimizer.lr_schedule=constant") == full(
        name="adamw", lr=1e-3, weight_decay=0.01)


def test_a_partial_preference_corrects_the_task_defaults():
    """ps-async prefers momentum 0 (asynchrony already acts as momentum), whatever the task's optimizer."""
    assert resolved("digits", "ps-async") == full(name="sgd", lr=0.05)
    assert resolved("digits", "ps-async", "optimizer.lr=0.01") == full(name="sgd", lr=0.01)
    assert resolved("digits", "ps-async", "optimizer.momentum=0.5") == full(name="sgd", lr=0.05, momentum=0.5)
    assert resolved("cartpole-dqn", "ps-async") == full(name="adam", lr=1e-3, max_grad_norm=10.0)


@pytest.mark.parametrize("strategy, overrides, source", [
    ("diloco", [], "diloco's preferred optimizer, as a whole"),
    ("diloco", ["optimizer.name=sgd"], "diloco's preferred optimizer not used, as you set optimizer.name=sgd"),
    ("allreduce", [], "the digits task's defaults"),
])
def test_the_choice_says_where_it_came_from(strategy, overrides, source):
    choice = optimizer_choice(flags={"strategy.name": strategy}, overrides=overrides)
    assert source in choice.describe()


@pytest.mark.timeout(120)
def test_train_prints_the_chosen_optimizer(tmp_path):
    result = agentsync("train", "--out", str(tmp_path / "run"), "--strategy", "diloco", "--workers", "1",
                       "--steps", "2", "--set", "optimizer.name=sgd")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("optimizer: ")]
    assert lines == ["optimizer: sgd lr=0.05 momentum=0.9 (the digits task's defaults; yours: name=sgd; "
                     "diloco's preferred optimizer not used, as you set optimizer.name=sgd)"]


AVERAGING = {"allreduce": 4, "ps-sync": 4}
"""Strategies whose step averages the workers' gradients (W = 4 here); every other one steps on one
worker's own gradient (local steps, asynchronous pushes, independent members)."""


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_lr_scaling_counts_the_gradients_one_step_averages(strategy):
    cfg = load_config(flags={"strategy.name": strategy, "workers": 4})
    assert cfg.averaged_gradients() == AVERAGING.get(strategy, 1)


def test_ps_sync_averages_its_replicas_to_aggregate():
    """With backup workers a step averages replicas_to_aggregate gradients, not W."""
    cfg = load_config(flags={"strategy.name": "ps-sync", "workers": 4},
                      overrides=["strategy.replicas_to_aggregate=3"])
    assert cfg.averaged_gradients() == 3


@pytest.mark.parametrize("scaling, factor", [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_build_scales_the_learning_rate(scaling, factor):
    import torch

    config = full(name="adam", lr=1e-3, lr_scaling=scaling)
    optimizer = config.build([torch.nn.Parameter(torch.zeros(2))], averaged=4)
    assert optimizer.param_groups[0]["lr"] == 1e-3 * factor


@pytest.mark.parametrize("averaged, says", [(2, "(x2 for 2 averaged gradients: lr=0.002)"),
                                            (1, "(x1 for 1 gradient per step: lr=0.001)")])
def test_the_printed_line_shows_the_scaled_learning_rate(averaged, says):
    choice = optimizer_choice(flags={"task.name": "cartpole-ppo"}, overrides=["optimizer.lr_scaling=linear"])
    assert f"adam lr=0.001 lr_scaling=linear {says}" in choice.describe(averaged)


@pytest.mark.parametrize("fields", [dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
                                    dict(name="adam", lr=1e-3), dict(name="adamw", lr=1e-3, weight_decay=0.1)],
                         ids=lambda f: f["name"])
def test_the_optimizer_steps_over_all_parameters_at_once_with_the_same_numbers(fields):
    """``build`` asks for torch's foreach step (on the CPU torch would loop over the parameters in
    Python): 200 steps end bit for bit where torch's default construction of the same optimizer does."""
    import torch

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))

    ours, reference = model(), model()
    optimizer = full(**fields).build(ours.parameters())
    settings = {k: v for k, v in optimizer.defaults.items() if k in ("lr", "momentum", "nesterov", "weight_decay")}
    torch_default = type(optimizer)(reference.parameters(), **settings)
    assert optimizer.defaults["foreach"] is True and torch_default.defaults["foreach"] is None
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        for a, b in zip(ours.parameters(), reference.parameters()):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        optimizer.step()
        torch_default.step()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))
