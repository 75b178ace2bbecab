"""Tabular Q-learning as SGD: with plain SGD at learning rate α, the gradient step on
½(target − Q(s,a))², target = r + γ max_a' Q(s',a') held fixed, is exactly
Q(s,a) ← Q(s,a) + α[r + γ max_a' Q(s',a') − Q(s,a)]."""
from __future__ import annotations

import torch

from agentsync.agents.actor import QTable


def td_targets(q: QTable, rewards: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
               gamma: float) -> torch.Tensor:
    """r + γ max_a' Q(s', a'), without the bootstrap where the episode terminated; detached."""
    with torch.no_grad():
        return rewards + gamma * q(next_obs).max(-1).values * (~terminated).float()


def q_learning_loss(q: QTable, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    next_obs: torch.Tensor, terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """Σ ½(target − Q(s,a))² over the batch: a sum, so each transition moves its entry by α·TD-error."""
    target = td_targets(q, rewards, next_obs, terminated, gamma)
    chosen = q(obs).gather(-1, actions.long()[:, None]).squeeze(-1)
    return 0.5 * ((target - chosen) ** 2).sum()
