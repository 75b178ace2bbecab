"""PPO's learner: generalized advantage estimation and the clipped surrogate loss."""
from __future__ import annotations

import numpy as np
import torch

from agentsync.agents.actor import ActorCritic
from agentsync.agents.rollout import Steps


def gae(steps: Steps, values: np.ndarray, next_values: np.ndarray, gamma: float, lam: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (T, N) for a rollout.

    ``values`` are V(obs), ``next_values`` V(next_obs) of each step; ``next_obs`` of an episode's last
    step is its final observation, so a truncated episode bootstraps from it and a terminated one
    does not. The recursion stops at every episode end; autoreset steps (``valid`` False) get 0.
    """
    bootstrap = next_values * (~steps.terminated)
    deltas = (steps.rewards + gamma * bootstrap - values) * steps.valid
    carry = ~(steps.terminated | steps.truncated) & steps.valid
    advantages = np.zeros_like(deltas)
    last = np.zeros(deltas.shape[1], dtype=deltas.dtype)
    for t in reversed(range(len(deltas))):
        last = deltas[t] + gamma * lam * carry[t] * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(model: ActorCritic, batch: dict[str, torch.Tensor], *, clip: float, vf_coef: float,
             ent_coef: float, normalize_advantage: bool) -> torch.Tensor:
    """Clipped policy surrogate + vf_coef · value MSE − ent_coef · entropy, averaged over ``batch``."""
    logits, values = model(batch["obs"])
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, batch["actions"].long()[:, None]).squeeze(-1)
    adv = batch["advantages"]
    if normalize_advantage and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = torch.exp(logp - batch["logp"])
    policy = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    value = 0.5 * ((values - batch["returns"]) ** 2).mean()
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    return policy + vf_coef * value - ent_coef * entropy
