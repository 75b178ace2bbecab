"""DQN's learner: n-step transitions, a uniform replay buffer and the Huber TD loss against a target network."""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import nn

from agentsync.agents.rollout import Steps

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "horizon")


class NStepAccumulator:
    """Turns each env's one-step transitions into n-step ones, never across an episode boundary.

    A transition from s_t is emitted once s_{t+n} is known, or earlier when the episode ends at
    s_{t+k}, k < n: reward Σ_{i<k} γ^i r_{t+i}, ``next_obs`` s_{t+k}, ``horizon`` k, ``terminated`` if
    the episode terminated (truncation keeps the bootstrap from the final observation). n = 1 gives
    the ordinary one-step transitions.
    """

    def __init__(self, n: int, gamma: float, num_envs: int) -> None:
        self.n, self.gamma = n, gamma
        self.pending: list[deque] = [deque() for _ in range(num_envs)]

    def __call__(self, steps: Steps) -> dict[str, np.ndarray]:
        """n-step transitions completed by one vector step (``steps`` shaped (1, N, ...))."""
        out: list[tuple] = []
        for i, pending in enumerate(self.pending):
            if not steps.valid[0, i]:
                continue  # Gymnasium's autoreset step: no transition
            pending.append((steps.obs[0, i], steps.actions[0, i], float(steps.rewards[0, i])))
            terminated, ended = bool(steps.terminated[0, i]), bool(steps.terminated[0, i] | steps.truncated[0, i])
            while pending and (ended or len(pending) == self.n):
                rewards = np.array([r for _, _, r in pending])
                ret = float((rewards * self.gamma ** np.arange(len(rewards))).sum())
                obs, action, _ = pending.popleft()
                out.append((obs, action, ret, steps.next_obs[0, i], terminated, len(rewards)))
        if not out:
            return {}
        cols = list(zip(*out))
        dtypes = (steps.obs.dtype, steps.actions.dtype, np.float32, steps.next_obs.dtype, bool, np.int64)
        return {k: np.asarray(col, dtype=dtype) for k, col, dtype in zip(FIELDS, cols, dtypes)}


class ReplayBuffer:
    """A ring buffer of transitions; ``terminated`` (not truncation) cuts the bootstrap.

    Kept in numpy on the CPU; sampled batches are moved to ``device`` (the learner's).
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu") -> None:
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.device = torch.device(device)
        self.data: dict[str, np.ndarray] = {}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        if not batch:
            return
        n = len(batch["obs"])
        if not self.data:
            self.data = {k: np.zeros((self.capacity, *batch[k].shape[1:]), batch[k].dtype) for k in FIELDS}
        idx = (self.pos + np.arange(n)) % self.capacity
        for k in FIELDS:
            self.data[k][idx] = batch[k]
        self.pos, self.size = (self.pos + n) % self.capacity, min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(self.size, size=batch_size)
        return {k: torch.as_tensor(v[idx], device=self.device) for k, v in self.data.items()}


def dqn_loss(q: nn.Module, target: nn.Module, batch: dict[str, torch.Tensor], gamma: float,
             double: bool = True) -> torch.Tensor:
    """Huber(Q(s,a), r + γᵏ Q_target(s', a*)·(1 − terminated)), k = the transition's ``horizon``;
    a* = argmax of the online network (Double DQN, less overestimation) or of the target network
    (``double=False``, classic DQN)."""
    with torch.no_grad():
        chooser = q if double else target
        best = chooser(batch["next_obs"]).argmax(-1, keepdim=True)
        next_q = target(batch["next_obs"]).gather(-1, best).squeeze(-1)
        discount = gamma ** batch["horizon"].float()
        y = batch["rewards"] + discount * next_q * (~batch["terminated"]).float()
    chosen = q(batch["obs"]).gather(-1, batch["actions"].long()[:, None]).squeeze(-1)
    return nn.functional.smooth_l1_loss(chosen, y)
