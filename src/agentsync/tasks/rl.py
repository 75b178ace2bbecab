"""Plumbing every RL task shares: per-worker vector envs (created lazily), seeding, evaluation.

A runtime step is one gradient update of the learner; a task collects experience when it needs
more. Environments stay local to each worker: env i of worker r is seeded seed + r·envs_per_worker + i.
They are built on the first ``loss``/``evaluate`` because parameter-server ranks build the task only
for the model's shape. Checkpoints cannot hold env state: ``--resume`` continues with fresh envs.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from agentsync.agents.actor import EpsilonSchedule
from agentsync.agents.rollout import VECTOR_MODES, Collector, evaluate_episodes, make_vec_env
from agentsync.options import check, choice
from agentsync.tasks.base import Task, TaskConfig

EVAL_SEED_OFFSET = 1_000_000
"""Evaluation envs are seeded seed + this + i: apart from every worker's training envs."""


@dataclasses.dataclass(kw_only=True)
class EnvConfig(TaskConfig):
    """Options of every Gymnasium task, whoever steps the envs (workers, or actors)."""

    vector_mode: str = "sync"
    """Vector env: sync (in-process, default) or async (one subprocess per env)."""
    gamma: float = 0.99
    """Discount factor."""
    eval_episodes: int = 10
    """Deterministic episodes per evaluation (eval_return is their mean return)."""

    def validate(self, section: str) -> None:
        super().validate(section)
        choice(self.vector_mode, f"{section}.vector_mode", VECTOR_MODES)
        check(0 <= self.gamma <= 1, f"{section}.gamma", "in [0, 1]", self.gamma)
        check(self.eval_episodes >= 1, f"{section}.eval_episodes", ">= 1", self.eval_episodes)


@dataclasses.dataclass(kw_only=True)
class RLConfig(EnvConfig):
    envs_per_worker: int = 8
    """Gymnasium environments each worker steps in one vector env."""

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.envs_per_worker >= 1, f"{section}.envs_per_worker", ">= 1", self.envs_per_worker)


@dataclasses.dataclass(kw_only=True)
class EpsilonGreedyConfig(RLConfig):
    """Options of tasks that explore ε-greedily (Q-learning, DQN)."""

    epsilon_start: float = 1.0
    """Exploration rate at the first update."""
    epsilon_end: float = 0.05
    """Exploration rate after the decay."""
    epsilon_decay_steps: int = 2000
    """Updates over which ε decays linearly."""

    def validate(self, section: str) -> None:
        super().validate(section)
        for name in ("epsilon_start", "epsilon_end"):
            check(0 <= getattr(self, name) <= 1, f"{section}.{name}", "in [0, 1]", getattr(self, name))
        check(self.epsilon_decay_steps >= 0, f"{section}.epsilon_decay_steps", ">= 0", self.epsilon_decay_steps)

    def schedule(self) -> EpsilonSchedule:
        return EpsilonSchedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps)


class RLTask(Task):
    """A Gymnasium workload; subclasses set ``env_id`` and say how the model acts."""

    Config: ClassVar[type[RLConfig]] = RLConfig
    env_id: ClassVar[str] = ""
    env_kwargs: ClassVar[dict] = {}
    metric = "eval_return"
    fixed_workers = "each worker's environments, statistics and replay are its own"

    def __init__(self, config: RLConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._collector: Collector | None = None
        self.rng = np.random.default_rng([self.seed, self.worker_rank])
        self.generator = torch.Generator(self.device).manual_seed(self.seed * 1000 + self.worker_rank)
        """Action sampling's random stream, on the model's device (where the probabilities are)."""
        spec = make_vec_env(self.env_id, 1, 0, **self.env_kwargs)
        self.observation_space, self.action_space = spec.single_observation_space, spec.single_action_space
        spec.close()

    @property
    def collector(self) -> Collector:
        """This worker's training envs, built on first use."""
        if self._collector is None:
            c = self.config
            env = make_vec_env(self.env_id, c.envs_per_worker, self.seed + self.worker_rank * c.envs_per_worker,
                               mode=c.vector_mode, **self.env_kwargs)
            self._collector = Collector(env)
        return self._collector

    def obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(obs, device=self.device)

    def action_scores(self, output) -> torch.Tensor:
        """The per-action scores (Q-values, logits) in the output of the model's forward."""
        return output

    @torch.no_grad()
    def greedy(self, model: nn.Module, obs: np.ndarray) -> np.ndarray:
        """The highest-scoring action of ``model`` for each observation (evaluation mode).

        Only ``model(obs)`` is called, so any module with the task model's forward can be evaluated:
        an ensemble whose forward averages its members' outputs acts as one policy.
        """
        return self.action_scores(model(self.obs_tensor(obs))).argmax(-1).cpu().numpy()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        env = make_vec_env(self.env_id, self.config.eval_episodes, 0, **self.env_kwargs)
        try:
            returns = evaluate_episodes(env, lambda obs: self.greedy(model, obs), self.seed + EVAL_SEED_OFFSET)
        finally:
            env.close()
        return {"eval_return": float(returns.mean()), "eval_return_std": float(returns.std())}

    def __del__(self) -> None:
        if getattr(self, "_collector", None) is not None:
            self._collector.close()
