"""RL tasks under real strategies: learning thresholds, and allreduce PPO ≡ PPO on the concatenated rollout.

Every run here is a real ``agentsync train`` with W gloo processes on 127.0.0.1. Thresholds are the
issue's: they sit well below what these seeds reach (see docs/tasks/rl.md for measured curves).
"""
from __future__ import annotations

import pytest
import torch

from agentsync.agents.ppo import ppo_loss
from agentsync.tasks import build_task, task_class
from conftest import read_jsonl, train


# -- frozenlake-q ------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_frozenlake_q_four_workers_local_sgd_reach_success_rate(tmp_path):
    summary = train(tmp_path, "--task", "frozenlake-q", "--strategy", "local-sgd", "--workers", "4",
                    "--steps", "1500", "--set", "eval_every=0")
    assert summary["metrics"]["success_rate"] >= 0.65  # optimal greedy policy: about 0.74-0.82


# -- cartpole-ppo ------------------------------------------------------------------------------------
def best_eval(run_dir) -> float:
    """The best eval_return logged during training (and at the end) in ``run_dir``'s metrics.jsonl."""
    return max(e["eval_return"] for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] in ("eval", "final"))


@pytest.mark.timeout(150)
def test_cartpole_ppo_allreduce_reaches_475(tmp_path):
    """"Reaches within its step budget": constant-lr PPO's greedy return still swings between ~120 and
    500 from one evaluation to the next at 2,000-3,000 updates (docs/tasks/rl.md), so this checks the
    best evaluation (every 100 updates), as bench/ppo_vs_sb3.py does; seeds 0-2 first reach it at 300-1,000."""
    train(tmp_path, "--task", "cartpole-ppo", "--strategy", "allreduce", "--workers", "2", "--seed", "0",
          "--steps", "2000", "--set", "eval_every=100")
    assert best_eval(tmp_path) >= 475


@pytest.mark.timeout(150)
@pytest.mark.parametrize("strategy", ["gossip", "ps-async"])
def test_cartpole_ppo_decentralized_and_async_reach_300(tmp_path, strategy):
    """The same "reaches" rule, evaluated every 250 updates: gossip's greedy return swings too."""
    train(tmp_path, "--task", "cartpole-ppo", "--strategy", strategy, "--workers", "2",
          "--steps", "1500", "--set", "eval_every=250")
    assert best_eval(tmp_path) >= 300


# -- cartpole-dqn ------------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_cartpole_dqn_reaches_400(tmp_path):
    summary = train(tmp_path, "--task", "cartpole-dqn", "--strategy", "allreduce", "--workers", "2",
                    "--seed", "0", "--steps", "10000", "--set", "eval_every=0")  # seeds 0-4: 500 from 9,000 on
    assert summary["metrics"]["eval_return"] >= 400


# -- allreduce PPO ≡ single-process PPO on the concatenated rollout ---------------------------------------
PARITY = {"n_steps": 16, "envs_per_worker": 2, "epochs": 2, "minibatches": 2, "normalize_obs": False,
          "normalize_advantage": False, "max_grad_norm": 0.0}
PARITY_STEPS, PARITY_LR = 8, 0.05  # two rollouts: the second is collected with the synced model


def concatenated_reference() -> dict:
    """One process, one model: each step's loss is PPO's on both workers' minibatches concatenated."""
    cls = task_class("acrobot-ppo")
    tasks = [build_task(cls.Config(**PARITY), worker_rank=r, num_workers=2, seed=0) for r in range(2)]
    torch.manual_seed(0)
    model = tasks[0].build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=PARITY_LR)
    for step in range(PARITY_STEPS):
        parts = [t.minibatch(model, step) for t in tasks]
        assert len(parts[0]["obs"]) == len(parts[1]["obs"])  # Acrobot never ends inside 16 steps
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        optimizer.zero_grad()
        ppo_loss(model, batch, clip=0.2, vf_coef=0.5, ent_coef=0.0, normalize_advantage=False).backward()
        optimizer.step()
    return model.state_dict()


@pytest.mark.timeout(120)
def test_allreduce_ppo_equals_single_process_on_concatenated_rollout(tmp_path):
    overrides = [arg for k, v in PARITY.items() for arg in ("--set", f"task.{k}={v}")]
    train(tmp_path, "--task", "acrobot-ppo", "--strategy", "allreduce", "--workers", "2",
          "--steps", str(PARITY_STEPS), "--set", "eval_every=0", "--set", "optimizer.name=sgd",
          "--set", f"optimizer.lr={PARITY_LR}", "--set", "task.eval_episodes=1", *overrides)
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    reference = concatenated_reference()
    for name, value in reference.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-5, msg=name)
