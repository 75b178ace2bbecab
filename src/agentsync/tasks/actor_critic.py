"""What PPO and IMPALA tasks share: a policy and a value perceiver, and the options of their losses."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from agentsync.agents.actor import ActorCritic
from agentsync.agents.perceiver import ACTIVATIONS, MLPPerceiver
from agentsync.options import Options, check, choice
from agentsync.tasks.rl import RLTask


@dataclasses.dataclass(kw_only=True)
class ActorCriticConfig(Options):
    """Mixed into a task's config ahead of its environment options (``class C(ActorCriticConfig, RLConfig)``)."""

    clip: float = 0.2
    """Clip ε of the policy ratio in the surrogate loss (PPO: π/π_old; APPO: π/μ, the actor's policy)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch (PPO) or batch (APPO), on each worker (DD-PPO's choice)."""
    normalize_obs: bool = False
    """Running mean/std observation normalisation (statistics in the model's buffers, checkpointed)."""
    hidden: int = 64
    """Width of the two hidden layers of the policy and value perceivers."""
    activation: str = "tanh"
    """Hidden activation: tanh or relu."""

    def validate(self, section: str) -> None:
        super().validate(section)
        check(0 <= self.clip <= 1, f"{section}.clip", "in [0, 1]", self.clip)
        check(self.vf_coef >= 0 and self.ent_coef >= 0, f"{section}.vf_coef/ent_coef", ">= 0",
              (self.vf_coef, self.ent_coef))
        check(self.hidden >= 1, f"{section}.hidden", ">= 1", self.hidden)
        choice(self.activation, f"{section}.activation", ACTIVATIONS)


class ActorCriticTask(RLTask):
    """An RL task whose model is :class:`ActorCritic` (SB3's MlpPolicy layout); greedy acts on its logits."""

    def build_model(self) -> nn.Module:
        c, obs_size = self.config, int(np.prod(self.observation_space.shape))
        make = lambda: MLPPerceiver(obs_size, [c.hidden, c.hidden], c.activation, c.normalize_obs)  # noqa: E731
        return ActorCritic(make(), make(), int(self.action_space.n))

    def action_scores(self, output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Greedy acts on the logits of forward's (logits, values)."""
        return output[0]
