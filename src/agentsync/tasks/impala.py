"""``cartpole-impala`` and ``acrobot-impala``: learners train on segments from actor processes.

Separate tasks rather than an option of the PPO tasks, because the two split the work
differently: a PPO worker acts and learns, an IMPALA learner never steps an env (its actors do,
``[actors]``), so its options are the loss's alone. Each learner update takes ``batch_segments``
segments from its own actors' queue (a new batch every ``epochs`` updates), and the learner
publishes its weights for them to pull. Learners are synchronized by the chosen strategy exactly
as PPO workers are. See docs/tasks/rl.md for the loss and the layout.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from agentsync.agents.actor import ActorCritic
from agentsync.agents.impala import LOSSES, ImpalaLoss, stack
from agentsync.agents.rollout import Collector, make_vec_env
from agentsync.agents.segments import Segment
from agentsync.optim import OptimizerConfig
from agentsync.options import check, choice
from agentsync.tasks.actor_critic import ActorCriticConfig, ActorCriticTask
from agentsync.tasks.rl import EnvConfig


@dataclasses.dataclass(kw_only=True)
class ImpalaConfig(ActorCriticConfig, EnvConfig):
    name: str = "cartpole-impala"
    loss: str = "appo"
    """vtrace (IMPALA's policy gradient, one update per batch) or appo (clipped surrogate, epochs per batch)."""
    batch_segments: int = 2
    """Segments (from any of this learner's actors) in one learner batch."""
    epochs: int = 4
    """Updates on each batch (appo; vtrace uses each batch once and refuses more)."""
    gamma: float = 0.98
    """Discount factor."""
    trace_lambda: float = 0.9
    """λ of the V-trace traces (c_t = λ min(c̄, π/μ)); 1 is the IMPALA paper's plain V-trace."""
    rho_bar: float = 1.0
    """Truncation ρ̄ of the importance weights in the value targets and advantages."""
    c_bar: float = 1.0
    """Truncation c̄ of the importance weights in the traces."""

    def validate(self, section: str) -> None:
        super().validate(section)
        choice(self.loss, f"{section}.loss", LOSSES)
        for name in ("batch_segments", "epochs"):
            check(getattr(self, name) >= 1, f"{section}.{name}", ">= 1", getattr(self, name))
        check(self.loss == "appo" or self.epochs == 1, f"{section}.epochs", "1 with loss=vtrace (an on-batch "
              "policy gradient; several passes need appo's clip)", self.epochs)
        check(0 <= self.trace_lambda <= 1, f"{section}.trace_lambda", "in [0, 1]", self.trace_lambda)
        for name in ("rho_bar", "c_bar"):
            check(getattr(self, name) >= 0, f"{section}.{name}", ">= 0", getattr(self, name))


@dataclasses.dataclass(kw_only=True)
class AcrobotImpalaConfig(ImpalaConfig):
    name: str = "acrobot-impala"
    gamma: float = 0.99
    """Discount factor."""
    trace_lambda: float = 0.94
    """λ of the V-trace traces (c_t = λ min(c̄, π/μ)); 1 is the IMPALA paper's plain V-trace."""
    epochs: int = 4
    """Updates on each batch (appo; vtrace uses each batch once and refuses more)."""
    normalize_obs: bool = True
    """Running mean/std observation normalisation (statistics in the model's buffers, checkpointed)."""


class ImpalaTask(ActorCriticTask):
    """Actor–learner training on CartPole-v1 with V-trace; the runtime attaches the learner's feed."""

    Config = ImpalaConfig
    description = "IMPALA/APPO actor-learner on CartPole-v1 (eval_return, max 500)"
    env_id = "CartPole-v1"
    actor_learner = True
    default_actors_per_worker = 2
    default_steps = 2400
    default_eval_every = 400
    default_optimizer = OptimizerConfig(name="adam", lr=1e-3, max_grad_norm=0.5, lr_schedule="linear")

    def __init__(self, config: ImpalaConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c = config
        self.loss_fn = ImpalaLoss(gamma=c.gamma, rho_bar=c.rho_bar, c_bar=c.c_bar, lam=c.trace_lambda,
                                  vf_coef=c.vf_coef, ent_coef=c.ent_coef, kind=c.loss, clip=c.clip,
                                  normalize_advantage=c.normalize_advantage)
        self.feed = None
        self.batch: Segment | None = None

    def attach(self, feed) -> None:
        """The learner's :class:`~agentsync.actors.feed.Feed`: where batches come from, where weights go."""
        self.feed = feed

    # -- the actor's side -------------------------------------------------------------------------
    def actor_collector(self, seed: int, envs: int) -> Collector:
        return Collector(make_vec_env(self.env_id, envs, seed, mode=self.config.vector_mode, **self.env_kwargs))

    @torch.no_grad()
    def segment(self, model: ActorCritic, collector: Collector, length: int, version: int) -> Segment:
        """``length`` vector steps of ``model``'s sampled actions, as the learner needs them."""
        def policy(obs):
            actions, logp = model.act(self.obs_tensor(obs).float(), self.generator)
            return actions.cpu().numpy(), {"logp": logp.cpu().numpy()}

        steps = collector.collect(policy, length)
        tensor = lambda x, dtype=torch.float32: torch.as_tensor(np.asarray(x), dtype=dtype)  # noqa: E731
        return Segment(obs=tensor(steps.obs), actions=tensor(steps.actions, torch.int64), rewards=tensor(steps.rewards),
                       dones=tensor(steps.terminated), valid=tensor(steps.valid),
                       behaviour_logp=tensor(steps.extras["logp"]), bootstrap_obs=tensor(collector.obs),
                       version=version)

    # -- the learner's side -----------------------------------------------------------------------
    def loss(self, model: ActorCritic, step: int) -> tuple[torch.Tensor, int]:
        if self.feed is None:
            raise RuntimeError(f"{self.config.name} learns from actors: run it with --actors N (the runtime attaches them)")
        self.feed.publish(model, step)
        if step % self.config.epochs == 0 or self.batch is None:
            self._next_batch(model, step)
        return self.loss_fn(model, self.batch), int(self.batch.valid.sum())

    def _next_batch(self, model: ActorCritic, step: int) -> None:
        """The next ``batch_segments`` segments on this device; observation statistics absorb them first."""
        batch = stack(self.feed.take(self.config.batch_segments, version=step), version=step)
        self.batch = Segment(**{name: getattr(batch, name).to(self.device) for name in (*Segment.FLOAT_FIELDS, "actions")},
                             version=step)
        if self.config.normalize_obs:
            valid = self.batch.valid.reshape(-1) > 0
            for perceiver in (model.policy, model.value):
                perceiver.norm.update_(self.batch.obs.flatten(0, 1)[valid])


class AcrobotImpala(ImpalaTask):
    """The same on Acrobot-v1 (longer horizon, normalised observations)."""

    Config = AcrobotImpalaConfig
    description = "IMPALA/APPO actor-learner on Acrobot-v1 (eval_return, best about -60)"
    env_id = "Acrobot-v1"
    default_steps = 4800
    default_eval_every = 800
