"""Actors: a policy or Q head on a perceiver, plus exploration (ε-greedy, sampling).

Evaluation acts greedily on the output of ``forward`` alone (``RLTask.greedy``), so nothing here
has an evaluation mode of its own."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from agentsync.agents.perceiver import MLPPerceiver


@dataclasses.dataclass(frozen=True)
class EpsilonSchedule:
    """ε decays linearly from ``start`` to ``end`` over ``decay_steps`` calls, then stays at ``end``."""

    start: float
    end: float
    decay_steps: int

    def __call__(self, t: int) -> float:
        frac = min(1.0, t / self.decay_steps) if self.decay_steps > 0 else 1.0
        return self.start + frac * (self.end - self.start)


def epsilon_greedy(q: torch.Tensor, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy actions of ``q`` (batch × actions), each replaced by a uniform one with probability ε."""
    greedy = q.argmax(-1).cpu().numpy()
    explore = rng.random(len(greedy)) < epsilon
    return np.where(explore, rng.integers(q.shape[-1], size=len(greedy)), greedy)


class QTable(nn.Module):
    """Tabular Q(s, a) as one parameter, so every strategy can sync it like a network."""

    def __init__(self, states: int, actions: int) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.zeros(states, actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q[obs.long()]


class QNetwork(nn.Module):
    """Perceiver + linear Q head."""

    def __init__(self, perceiver: MLPPerceiver, actions: int) -> None:
        super().__init__()
        self.perceiver, self.head = perceiver, nn.Linear(perceiver.out_features, actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.perceiver(obs))


class ActorCritic(nn.Module):
    """Separate policy and value perceivers (SB3's default MlpPolicy layout) with linear heads."""

    def __init__(self, policy: MLPPerceiver, value: MLPPerceiver, actions: int) -> None:
        super().__init__()
        self.policy, self.value = policy, value
        self.logits_head = nn.Linear(policy.out_features, actions)
        self.value_head = nn.Linear(value.out_features, 1)
        for head, gain in ((self.logits_head, 0.01), (self.value_head, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits and state values."""
        return self.logits_head(self.policy(obs)), self.value_head(self.value(obs)).squeeze(-1)

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.value(obs)).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions sampled from the policy (with ``generator``, on the model's device) and their log-probabilities."""
        logp_all = torch.log_softmax(self.logits_head(self.policy(obs)), -1)
        actions = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(-1)
        return actions, logp_all.gather(-1, actions[:, None]).squeeze(-1)
