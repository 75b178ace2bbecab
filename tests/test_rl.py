"""RL tasks under real strategies: final-model thresholds, and allreduce PPO ≡ PPO on the concatenated rollout.

Every run here is a real ``agentsync train`` with W gloo processes on 127.0.0.1, with fixed seeds.
Thresholds are the issue's; what these seeds reach is in docs/tasks/rl.md (cartpole-ppo, allreduce,
seeds 0-4: 500 at the end of the run, and from step 3,000 on).
"""
from __future__ import annotations

import pytest
import torch

from agentsync.agents.ppo import ppo_loss
from agentsync.tasks import build_task, task_class
from agentsync.update import UpdateRule
from conftest import train


# -- frozenlake-q ------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_frozenlake_q_four_workers_local_sgd_reach_success_rate(tmp_path):
    summary = train(tmp_path, "--task", "frozenlake-q", "--strategy", "local-sgd", "--workers", "4",
                    "--steps", "1500", "--set", "eval_every=0")
    assert summary["metrics"]["success_rate"] >= 0.65  # optimal greedy policy: about 0.74-0.82


# -- cartpole-ppo ------------------------------------------------------------------------------------
@pytest.mark.timeout(900)  # five runs of ~30 s each alone; ~90 s each on 2 cores shared by other jobs
def test_cartpole_ppo_allreduce_final_policy_solved_for_seeds_0_to_4(tmp_path):
    """The model a user takes (the run's last) is solved, for every seed: the defaults decay the learning
    rate linearly to 0 (RL Zoo's schedule), which keeps the greedy return from swinging at the end
    (measured in docs/tasks/rl.md; with a constant rate seed 0 ended at 364)."""
    finals = {}
    for seed in range(5):
        summary = train(tmp_path / str(seed), "--task", "cartpole-ppo", "--strategy", "allreduce", "--workers", "2",
                        "--seed", str(seed), "--set", "eval_every=0")
        finals[seed] = summary["metrics"]["eval_return"]
    assert all(r >= 475 for r in finals.values()), finals


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy, steps", [("gossip", 1500), ("ps-async", 3000)])
def test_cartpole_ppo_decentralized_and_async_final_policy_reaches_300(tmp_path, strategy, steps):
    """The same final-model rule at a smaller budget: gossip's replicas differ, ps-async's gradients are stale.

    ps-async's staleness depends on timing, so its runs are not reproducible: at 1,500 updates three quiet
    runs ended at 500 and one under a full test suite at 197.6; 3,000 updates leave it room."""
    summary = train(tmp_path, "--task", "cartpole-ppo", "--strategy", strategy, "--workers", "2",
                    "--steps", str(steps), "--set", "eval_every=0")
    assert summary["metrics"]["eval_return"] >= 300


# -- cartpole-dqn ------------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_cartpole_dqn_reaches_400(tmp_path):
    summary = train(tmp_path, "--task", "cartpole-dqn", "--strategy", "allreduce", "--workers", "2",
                    "--seed", "0", "--steps", "10000", "--set", "eval_every=0")  # seeds 0-4: 500 from 9,000 on
    assert summary["metrics"]["eval_return"] >= 400


# -- allreduce PPO ≡ single-process PPO on the concatenated rollout ---------------------------------------
PARITY = {"n_steps": 16, "envs_per_worker": 2, "epochs": 2, "minibatches": 2, "normalize_obs": False,
          "normalize_advantage": False, "clip_schedule": "linear"}
PARITY_STEPS, PARITY_LR = 8, 0.5  # two rollouts, the second collected with the synced model; an lr at which
# the ratio leaves the decayed clip range, so the schedule shows
PARITY_RULE = UpdateRule(max_grad_norm=0.5, lr_schedule="linear")  # clip the averaged gradient, decay lr


def concatenated_reference(clip_schedule: str = "linear") -> dict:
    """One process, one model: each step's loss is PPO's on both workers' minibatches concatenated,
    clipped and scheduled by the same update rule; the clip ε decays linearly over the run."""
    cls = task_class("acrobot-ppo")
    tasks = [build_task(cls.Config(**PARITY), worker_rank=r, num_workers=2, seed=0) for r in range(2)]
    torch.manual_seed(0)
    model = tasks[0].build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=PARITY_LR)
    update = PARITY_RULE.build(optimizer, PARITY_STEPS)
    for step in range(PARITY_STEPS):
        parts = [t.minibatch(model, step) for t in tasks]
        assert len(parts[0]["obs"]) == len(parts[1]["obs"])  # Acrobot never ends inside 16 steps
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        optimizer.zero_grad()
        clip = 0.2 * (1 - step / PARITY_STEPS) if clip_schedule == "linear" else 0.2
        ppo_loss(model, batch, clip=clip, vf_coef=0.5, ent_coef=0.0, normalize_advantage=False).backward()
        assert update()
    return model.state_dict()


@pytest.mark.timeout(120)
def test_allreduce_ppo_equals_single_process_on_concatenated_rollout(tmp_path):
    overrides = [arg for k, v in PARITY.items() for arg in ("--set", f"task.{k}={v}")]
    train(tmp_path, "--task", "acrobot-ppo", "--strategy", "allreduce", "--workers", "2",
          "--steps", str(PARITY_STEPS), "--set", "eval_every=0", "--set", "optimizer.name=sgd",
          "--set", f"optimizer.lr={PARITY_LR}", "--set", f"optimizer.max_grad_norm={PARITY_RULE.max_grad_norm}",
          "--set", f"optimizer.lr_schedule={PARITY_RULE.lr_schedule}", "--set", "task.eval_episodes=1", *overrides)
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    reference = concatenated_reference()
    for name, value in reference.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-5, msg=name)
    constant = concatenated_reference("constant")  # the schedule matters at this tolerance
    assert any((constant[name] - value).abs().max() > 1e-4 for name, value in reference.items())
