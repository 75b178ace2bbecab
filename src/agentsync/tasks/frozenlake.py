"""``frozenlake-q``: tabular Q-learning on slippery FrozenLake 4×4, as SGD on the TD error."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from agentsync.agents.actor import QTable, epsilon_greedy
from agentsync.agents.q_learning import q_learning_loss
from agentsync.optim import OptimizerConfig
from agentsync.tasks.rl import EpsilonGreedyConfig, RLTask


@dataclasses.dataclass(kw_only=True)
class FrozenLakeConfig(EpsilonGreedyConfig):
    name: str = "frozenlake-q"
    envs_per_worker: int = 4
    """Gymnasium environments each worker steps (one transition each per update)."""
    gamma: float = 0.99
    """Discount factor (slippery FrozenLake needs a long horizon)."""
    eval_episodes: int = 500
    """Greedy episodes per evaluation (500 keeps success_rate's standard error near 0.02)."""


class FrozenLakeQ(RLTask):
    """Q(s,a) ← Q(s,a) + α[r + γ max_a' Q(s',a') − Q(s,a)] with α = the SGD learning rate."""

    Config = FrozenLakeConfig
    description = "tabular Q-learning on slippery FrozenLake 4x4 (eval_return = success rate)"
    env_id = "FrozenLake-v1"
    env_kwargs = {"map_name": "4x4", "is_slippery": True}
    default_steps = 1500
    default_eval_every = 500
    default_optimizer = OptimizerConfig(name="sgd", lr=0.2, momentum=0.0)  # α; measured: docs/tasks/rl.md

    def __init__(self, config: FrozenLakeConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.epsilon = config.schedule()

    def build_model(self) -> nn.Module:
        return QTable(int(self.observation_space.n), int(self.action_space.n))

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        eps = self.epsilon(step)
        with torch.no_grad():
            policy = lambda obs: (epsilon_greedy(model(self.obs_tensor(obs)), eps, self.rng), {})  # noqa: E731
        t = self.collector.step(policy).transitions()
        tensors = {k: self.obs_tensor(v) for k, v in t.items()}
        loss = q_learning_loss(model, tensors["obs"], tensors["actions"], tensors["rewards"], tensors["next_obs"],
                               tensors["terminated"], self.config.gamma)
        return loss, len(t["obs"])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        metrics = super().evaluate(model)
        return {**metrics, "success_rate": metrics["eval_return"]}
