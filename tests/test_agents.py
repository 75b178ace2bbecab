"""RL agent parts in one process: the Q-learning update, autoreset handling, GAE at episode ends,
greedy evaluation through the model's forward alone."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agentsync.agents.actor import EpsilonSchedule, QTable, epsilon_greedy
from agentsync.agents.dqn import NStepAccumulator, ReplayBuffer, dqn_loss
from agentsync.agents.ppo import gae
from agentsync.agents.q_learning import q_learning_loss
from agentsync.agents.rollout import Collector
from agentsync.tasks import build_task, task_class


def test_q_learning_sgd_gives_the_table_the_formula_predicts():
    """Q(s,a) ← Q(s,a) + α[r + γ max Q(s',·) − Q(s,a)], α = 0.5, γ = 0.9, worked by hand below."""
    alpha, gamma = 0.5, 0.9
    # (s, a, r, s', terminated)
    transitions = [(0, 1, 0.0, 1, False),   # target 0 + 0.9·0 = 0           → Q[0,1] = 0
                   (1, 0, 1.0, 2, True),    # target 1 (no bootstrap)        → Q[1,0] = 0.5
                   (0, 1, 0.0, 1, False),   # target 0.9·0.5 = 0.45          → Q[0,1] = 0.225
                   (1, 0, 1.0, 2, True),    # target 1                       → Q[1,0] = 0.75
                   (2, 1, 0.5, 0, False),   # target 0.5 + 0.9·0.225 = 0.7025 → Q[2,1] = 0.35125
                   (0, 0, 0.0, 1, False)]   # target 0.9·0.75 = 0.675        → Q[0,0] = 0.3375
    expected = torch.tensor([[0.3375, 0.225], [0.75, 0.0], [0.0, 0.35125]])
    q = QTable(3, 2)
    optimizer = torch.optim.SGD(q.parameters(), lr=alpha)
    for s, a, r, s2, term in transitions:
        loss = q_learning_loss(q, torch.tensor([s]), torch.tensor([a]), torch.tensor([r]), torch.tensor([s2]),
                               torch.tensor([term]), gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(q.q.detach(), expected, rtol=0, atol=1e-7)


class FixedLength(gym.Env):
    """Observation = steps taken in this episode; every episode lasts ``length`` steps, ending in
    termination or truncation as told; reward 1 per step."""

    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int, truncate: bool) -> None:
        self.length, self.truncate, self.t = length, truncate, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == self.length
        return np.array([self.t], np.float32), 1.0, end and not self.truncate, end and self.truncate, {}


def collect_fixed(n_steps: int = 8):
    env = gym.vector.SyncVectorEnv([lambda: FixedLength(3, truncate=False), lambda: FixedLength(4, truncate=True)])
    collector = Collector(env)
    steps = collector.collect(lambda obs: (np.zeros(len(obs), dtype=np.int64), {}), n_steps)
    return collector, steps


def test_autoreset_steps_are_dropped_and_episode_ends_flagged():
    collector, steps = collect_fixed()
    # env 0 terminates after 3 steps, env 1 truncates after 4; the step after each end is Gymnasium's reset step
    assert steps.valid[:, 0].tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    assert steps.valid[:, 1].tolist() == [1, 1, 1, 1, 0, 1, 1, 1]
    assert np.flatnonzero(steps.terminated[:, 0]).tolist() == [2, 6]
    assert not steps.truncated[:, 0].any() and not steps.terminated[:, 1].any()
    assert np.flatnonzero(steps.truncated[:, 1]).tolist() == [3]
    t = steps.transitions()
    assert len(t["obs"]) == 13
    np.testing.assert_array_equal(t["next_obs"], t["obs"] + 1)  # never across a boundary
    assert sorted(t["next_obs"][t["terminated"] | t["truncated"]].ravel().tolist()) == [3, 3, 4]  # final obs kept
    assert collector.finished_returns == [3.0, 4.0, 3.0] and collector.env_steps == 13


def test_n_step_transitions_stop_at_episode_ends_and_bootstrap_only_truncation():
    """n = 2, γ = 0.5 on the fixed-length envs: every s_t gets r_t + γ r_{t+1} and s_{t+2}, or fewer
    rewards when the episode ends first; termination is flagged, truncation is not."""
    env = gym.vector.SyncVectorEnv([lambda: FixedLength(3, truncate=False), lambda: FixedLength(4, truncate=True)])
    collector, accumulate = Collector(env), NStepAccumulator(2, 0.5, 2)
    parts = [accumulate(collector.step(lambda obs: (np.zeros(len(obs), dtype=np.int64), {}))) for _ in range(8)]
    batch = {k: np.concatenate([p[k] for p in parts if p])
             for k in ("obs", "rewards", "next_obs", "terminated", "horizon")}
    rows = sorted(zip(batch["obs"][:, 0], batch["rewards"], batch["next_obs"][:, 0], batch["terminated"],
                      batch["horizon"]))
    # (s, Σ γ^i r, s', terminated, k); env 0: two episodes 0→1→2→3 (terminated); env 1: 0→1→2→3→4
    # (truncated), then 0→1→2 of the next episode with the transition from 2 still waiting for s_4
    assert rows == [(0, 1.5, 2, False, 2)] * 4 + [(1, 1.5, 3, False, 2)] * 2 + [(1, 1.5, 3, True, 2)] * 2 + \
        [(2, 1.0, 3, True, 1)] * 2 + [(2, 1.5, 4, False, 2), (3, 1.0, 4, False, 1)]
    buffer = ReplayBuffer(100)
    for p in parts:
        buffer.add(p)
    assert buffer.size == len(rows)


def test_dqn_target_discounts_by_the_transition_horizon():
    q = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        q.weight.copy_(torch.tensor([[1.0], [2.0]]))  # Q(s) = (s, 2s): the greedy next value is 2s'
    batch = {"obs": torch.tensor([[1.0], [1.0]]), "actions": torch.tensor([0, 0]),
             "rewards": torch.tensor([1.5, 1.0]), "next_obs": torch.tensor([[3.0], [3.0]]),
             "terminated": torch.tensor([False, True]), "horizon": torch.tensor([2, 1])}
    # targets 1.5 + 0.5²·6 = 3 and 1 (terminated); Q(s,a) = 1: TD errors 2 and 0 → Huber (1.5 + 0) / 2
    assert dqn_loss(q, q, batch, gamma=0.5).item() == pytest.approx(0.75)


def test_gae_bootstraps_truncation_from_the_final_observation_only():
    _, steps = collect_fixed()
    values, next_values = steps.obs[..., 0], steps.next_obs[..., 0]  # V(s) = s
    gamma = 0.9
    adv, _ = gae(steps, values, next_values, gamma, lam=0.0)   # λ = 0: one-step TD errors
    assert adv[2, 0] == pytest.approx(1 - 2)                   # terminated at obs 2: r − V(2)
    assert adv[3, 1] == pytest.approx(1 + gamma * 4 - 3)       # truncated: r + γ V(final obs 4) − V(3)
    assert adv[3, 0] == 0 and adv[4, 1] == 0                   # autoreset steps carry nothing
    adv1, _ = gae(steps, values, next_values, 1.0, lam=1.0)     # λ = γ = 1: return-to-go − V(s)
    assert adv1[0, 0] == pytest.approx(3 - 0) and adv1[4, 0] == pytest.approx(3 - 0)
    assert adv1[0, 1] == pytest.approx(4 + 4 - 0)              # truncated: bootstrap V(4) at the end


def test_epsilon_schedule_and_greedy_actions():
    schedule = EpsilonSchedule(1.0, 0.1, 10)
    assert [schedule(t) for t in (0, 5, 10, 50)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    q = torch.tensor([[0.0, 1.0, 0.5]] * 1000)
    rng = np.random.default_rng(0)
    assert (epsilon_greedy(q, 0.0, rng) == 1).all()
    explored = (epsilon_greedy(q, 0.3, rng) != 1).mean()
    assert explored == pytest.approx(0.3 * 2 / 3, abs=0.04)  # ε·(A−1)/A picks a non-greedy action


class MeanOfMembers(torch.nn.Module):
    """Nothing but a forward, the ensemble's: the members' mean output, tuples averaged element-wise."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, obs: torch.Tensor):
        outs = [m(obs) for m in self.members]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(parts).mean(0) for parts in zip(*outs))
        return torch.stack(outs).mean(0)


@pytest.mark.parametrize("name", ["frozenlake-q", "cartpole-dqn", "cartpole-ppo"])
def test_greedy_acts_on_the_forward_of_any_module(name):
    """An ensemble of two members evaluates as one policy: argmax of the mean Q-values (DQN, Q-table) or
    of the mean logits (PPO's forward returns (logits, values)), computed here member by member."""
    task = build_task(task_class(name).Config(), worker_rank=0, num_workers=1, seed=0)
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = task.build_model()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()  # the Q-table starts at zero: give every member distinct, non-tied scores
        members.append(model)
    task.observation_space.seed(0)
    obs = np.stack([task.observation_space.sample() for _ in range(64)])
    x = torch.as_tensor(obs)
    with torch.no_grad():
        scores = [m(x)[0] if name == "cartpole-ppo" else m(x) for m in members]
        expected = ((scores[0] + scores[1]) / 2).argmax(-1).numpy()
        single = scores[0].argmax(-1).numpy()
    np.testing.assert_array_equal(task.greedy(MeanOfMembers(members), obs), expected)
    np.testing.assert_array_equal(task.greedy(members[0], obs), single)
    assert (expected != single).any()  # the two members disagree somewhere, so the mean is what was used
