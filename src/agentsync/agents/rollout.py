"""Experience from Gymnasium vector envs, with Gymnasium 1.x autoreset handled.

Gymnasium 1.x vector envs autoreset in ``NEXT_STEP`` mode by default: the step that ends an
episode returns the episode's *final* observation; the following ``step`` call ignores its action,
resets that sub-env and returns the reset observation with reward 0. :class:`Collector` marks that
reset step ``valid = False`` so no transition is built across an episode boundary, and keeps the
final observation as ``next_obs`` of the last real step, so truncation can bootstrap from it while
termination does not.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

VECTOR_MODES = ("sync", "async")


def make_vec_env(env_id: str, num_envs: int, seed: int, *, mode: str = "sync", **kwargs) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id``; sub-env i is seeded ``seed + i`` on the first reset."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    env.agentsync_seed = seed
    return env


@dataclasses.dataclass
class Steps:
    """Arrays shaped (T, N, ...) for T vector steps of N envs; ``valid`` is False on autoreset steps."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs: np.ndarray
    valid: np.ndarray
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.obs, self.actions, self.rewards, self.terminated, self.truncated, self.next_obs, self.valid)

    def transitions(self) -> dict[str, np.ndarray]:
        """The valid transitions, flattened to (M, ...)."""
        keep = self.valid.reshape(-1)
        names = ("obs", "actions", "rewards", "terminated", "truncated", "next_obs")
        fields = {name: getattr(self, name) for name in names}
        fields.update(self.extras)
        return {k: v.reshape(-1, *v.shape[2:])[keep] for k, v in fields.items()}


Policy = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]
"""Observations (N, ...) → actions (N,) and per-step extras (log-probabilities, values...)."""


class Collector:
    """Steps a vector env and records transitions, skipping Gymnasium's NEXT_STEP autoreset steps."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"Collector expects NEXT_STEP autoreset, got {mode}")
        self.env, self.num_envs = env, env.num_envs
        seed = getattr(env, "agentsync_seed", 0)
        self.obs, _ = env.reset(seed=[seed + i for i in range(self.num_envs)])
        self.resetting = np.zeros(self.num_envs, dtype=bool)
        self.episode_return = np.zeros(self.num_envs)
        self.finished_returns: list[float] = []
        self.env_steps = 0

    def step(self, policy: Policy) -> Steps:
        """One vector step; returns arrays shaped (1, N, ...)."""
        actions, extras = policy(self.obs)
        next_obs, rewards, terminated, truncated, _ = self.env.step(actions)
        valid = ~self.resetting
        self.env_steps += int(valid.sum())
        self.episode_return = np.where(valid, self.episode_return + rewards, 0.0)
        done = (terminated | truncated) & valid
        self.finished_returns += self.episode_return[done].tolist()
        out = Steps(self.obs, np.asarray(actions), rewards.astype(np.float32), terminated & valid,
                    truncated & valid, next_obs, valid, extras)
        self.obs, self.resetting = next_obs, done
        return Steps(*(x[None] for x in out.arrays()), extras={k: v[None] for k, v in extras.items()})

    def collect(self, policy: Policy, n_steps: int) -> Steps:
        """``n_steps`` vector steps stacked to (n_steps, N, ...)."""
        parts = [self.step(policy) for _ in range(n_steps)]
        stacked = [np.concatenate(xs) for xs in zip(*(p.arrays() for p in parts))]
        extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras}
        return Steps(*stacked, extras=extras)

    def close(self) -> None:
        self.env.close()


def evaluate_episodes(env: gym.vector.VectorEnv, act: Callable[[np.ndarray], np.ndarray],
                      seed: int) -> np.ndarray:
    """Return of one episode on each sub-env (seeded ``seed + i``) under the deterministic ``act``."""
    obs, _ = env.reset(seed=[seed + i for i in range(env.num_envs)])
    returns = np.zeros(env.num_envs)
    running = np.ones(env.num_envs, dtype=bool)
    while running.any():
        obs, rewards, terminated, truncated, _ = env.step(act(obs))
        returns += np.where(running, rewards, 0.0)
        running &= ~(terminated | truncated)
    return returns


def as_tensor(x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.as_tensor(x, device=device)
