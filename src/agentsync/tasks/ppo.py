"""``cartpole-ppo`` and ``acrobot-ppo``: PPO on this worker's vector envs; one class, two presets.

Each rollout (n_steps × envs_per_worker) serves ``epochs × minibatches`` runtime steps, one
minibatch gradient each; under ``allreduce`` that is DD-PPO, under ``ps-async`` A3C-like, under
``gossip`` decentralized PPO.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from agentsync.agents.actor import ActorCritic
from agentsync.agents.ppo import gae, ppo_loss
from agentsync.optim import OptimizerConfig
from agentsync.options import check, choice
from agentsync.tasks.actor_critic import ActorCriticConfig, ActorCriticTask
from agentsync.tasks.rl import RLConfig
from agentsync.update import LR_SCHEDULES, schedule_factor


@dataclasses.dataclass(kw_only=True)
class PPOConfig(ActorCriticConfig, RLConfig):
    name: str = "cartpole-ppo"
    n_steps: int = 32
    """Vector steps per rollout (a rollout holds n_steps × envs_per_worker transitions)."""
    epochs: int = 20
    """Passes over each rollout."""
    minibatches: int = 1
    """Minibatches per pass; each is one runtime step."""
    gamma: float = 0.98
    """Discount factor."""
    gae_lambda: float = 0.8
    """GAE λ."""
    clip_schedule: str = "linear"
    """constant, or linear: the clip ε decays to 0 over the run, with the learning rate (RL Zoo's
    cartpole schedule; it keeps a solved policy from drifting off late in the run)."""

    def validate(self, section: str) -> None:
        super().validate(section)
        choice(self.clip_schedule, f"{section}.clip_schedule", LR_SCHEDULES)
        for name in ("n_steps", "epochs", "minibatches"):
            check(getattr(self, name) >= 1, f"{section}.{name}", ">= 1", getattr(self, name))
        check(self.minibatches <= self.n_steps * self.envs_per_worker, f"{section}.minibatches",
              "<= n_steps * envs_per_worker", self.minibatches)
        check(0 <= self.gae_lambda <= 1, f"{section}.gae_lambda", "in [0, 1]", self.gae_lambda)


@dataclasses.dataclass(kw_only=True)
class AcrobotPPOConfig(PPOConfig):
    name: str = "acrobot-ppo"
    n_steps: int = 64
    """Vector steps per rollout (a rollout holds n_steps × envs_per_worker transitions)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.94
    """GAE λ."""
    epochs: int = 4
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per pass; each is one runtime step."""
    clip_schedule: str = "constant"
    """constant (RL Zoo's acrobot setting), or linear: the clip ε decays to 0 over the run."""
    normalize_obs: bool = True
    """Running mean/std observation normalisation (statistics in the model's buffers, checkpointed)."""


class PPOTask(ActorCriticTask):
    """PPO with GAE, clipped surrogate, value loss, entropy bonus, minibatch epochs.

    Gradient clipping (0.5) and the learning rate's linear decay to 0 are the default optimizer's:
    the decay is what lets the run end on a settled policy (docs/tasks/rl.md).
    """

    Config = PPOConfig
    description = "PPO on CartPole-v1 (eval_return, max 500)"
    env_id = "CartPole-v1"
    default_steps = 4000
    default_eval_every = 500
    default_optimizer = OptimizerConfig(name="adam", lr=1e-3, max_grad_norm=0.5, lr_schedule="linear")

    def __init__(self, config: PPOConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.minibatch_index: list[np.ndarray] = []
        self.rollout: dict[str, torch.Tensor] = {}

    @property
    def updates_per_rollout(self) -> int:
        return self.config.epochs * self.config.minibatches

    def policy(self, model: ActorCritic):
        return lambda obs: (model.act(self.obs_tensor(obs).float(), self.generator)[0].cpu().numpy(), {})

    @torch.no_grad()
    def collect(self, model: ActorCritic) -> None:
        """A fresh rollout with advantages, and this rollout's minibatch order for every epoch.

        Old log-probabilities are recomputed after the observation statistics absorb the rollout,
        so the first epoch's ratio is exactly 1.
        """
        c = self.config
        steps = self.collector.collect(self.policy(model), c.n_steps)
        if c.normalize_obs:
            flat = self.obs_tensor(steps.obs.reshape(-1, steps.obs.shape[-1])).float()
            for perceiver in (model.policy, model.value):
                perceiver.norm.update_(flat)
        shape = steps.rewards.shape
        value = lambda x: model.values(self.obs_tensor(x.reshape(-1, *x.shape[2:])).float()).cpu().numpy().reshape(shape)  # noqa: E731
        advantages, returns = gae(steps, value(steps.obs), value(steps.next_obs), c.gamma, c.gae_lambda)
        steps.extras.update(advantages=advantages, returns=returns)
        self.rollout = {k: self.obs_tensor(v) for k, v in steps.transitions().items()}
        logits, _ = model(self.rollout["obs"].float())
        self.rollout["logp"] = torch.log_softmax(logits, -1).gather(-1, self.rollout["actions"].long()[:, None])[:, 0]
        n = len(self.rollout["obs"])
        self.minibatch_index = [part for _ in range(c.epochs)
                                for part in np.array_split(self.rng.permutation(n), c.minibatches)]

    def minibatch(self, model: ActorCritic, step: int) -> dict[str, torch.Tensor]:
        """The batch of runtime step ``step``: collects a new rollout at the start of each cycle."""
        if step % self.updates_per_rollout == 0 or not self.rollout:
            self.collect(model)
        idx = torch.as_tensor(self.minibatch_index[step % self.updates_per_rollout], device=self.device)
        batch = {k: v[idx] for k, v in self.rollout.items()}
        batch["obs"] = batch["obs"].float()
        return batch

    def clip(self, step: int) -> float:
        """The clip ε at ``step``; a linear schedule needs the run's budget (outside a run, e.g. when
        advise times a step, ε stays where it starts)."""
        if not self.total_steps:
            return self.config.clip
        return self.config.clip * schedule_factor(self.config.clip_schedule, step, self.total_steps)

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        c = self.config
        batch = self.minibatch(model, step)
        loss = ppo_loss(model, batch, clip=self.clip(step), vf_coef=c.vf_coef, ent_coef=c.ent_coef,
                        normalize_advantage=c.normalize_advantage)
        return loss, len(batch["obs"])


class AcrobotPPO(PPOTask):
    """The same PPO on Acrobot-v1 with its own defaults (longer horizon, normalised observations)."""

    Config = AcrobotPPOConfig
    description = "PPO on Acrobot-v1 (eval_return, best about -60)"
    env_id = "Acrobot-v1"
    default_steps = 3000
    default_eval_every = 500
    default_optimizer = OptimizerConfig(name="adam", lr=1e-3, max_grad_norm=0.5, lr_schedule="linear")
