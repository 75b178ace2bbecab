"""DQN's learner: a uniform replay buffer and the Huber TD loss against a target network."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")


class ReplayBuffer:
    """A ring buffer of transitions; ``terminated`` (not truncation) cuts the bootstrap."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.data: dict[str, np.ndarray] = {}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch["obs"])
        if not self.data:
            self.data = {k: np.zeros((self.capacity, *batch[k].shape[1:]), batch[k].dtype) for k in FIELDS}
        idx = (self.pos + np.arange(n)) % self.capacity
        for k in FIELDS:
            self.data[k][idx] = batch[k]
        self.pos, self.size = (self.pos + n) % self.capacity, min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(self.size, size=batch_size)
        return {k: torch.as_tensor(v[idx]) for k, v in self.data.items()}


def dqn_loss(q: nn.Module, target: nn.Module, batch: dict[str, torch.Tensor], gamma: float) -> torch.Tensor:
    """Huber(Q(s,a), r + γ max_a' Q_target(s',a')·(1 − terminated))."""
    with torch.no_grad():
        next_q = target(batch["next_obs"]).max(-1).values
        y = batch["rewards"] + gamma * next_q * (~batch["terminated"]).float()
    chosen = q(batch["obs"]).gather(-1, batch["actions"].long()[:, None]).squeeze(-1)
    return nn.functional.smooth_l1_loss(chosen, y)
