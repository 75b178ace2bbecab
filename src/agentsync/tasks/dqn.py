"""``cartpole-dqn``: DQN with replay, a target network synced inside the task, Huber loss, ε schedule.

Defaults (measured in docs/tasks/rl.md): Double DQN on 3-step returns, a hard target copy every 64
updates, 128×128 ReLU, Adam 1e-3, ε 1 → 0.01 over 2,000 updates, 2 envs and one vector step per update.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from agentsync.agents.actor import QNetwork, epsilon_greedy
from agentsync.agents.dqn import NStepAccumulator, ReplayBuffer, dqn_loss
from agentsync.agents.perceiver import MLPPerceiver
from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.tasks.rl import EpsilonGreedyConfig, RLTask


@dataclasses.dataclass(kw_only=True)
class DQNConfig(EpsilonGreedyConfig):
    name: str = "cartpole-dqn"
    envs_per_worker: int = 2
    """Gymnasium environments each worker steps."""
    batch_size: int = 64
    """Replayed transitions per update."""
    buffer_size: int = 50_000
    """Replay capacity per worker (transitions)."""
    learning_starts: int = 1000
    """Random-action transitions collected before the first update."""
    train_freq: int = 1
    """Vector env steps per update."""
    target_update: int = 64
    """Update the target network every this many updates."""
    tau: float = 1.0
    """Target update θ' ← (1 − τ)θ' + τθ (1: a hard copy; smaller: Polyak averaging)."""
    epsilon_end: float = 0.01
    """Exploration rate after the decay."""
    hidden: int = 128
    """Width of the Q network's two hidden layers."""
    n_step: int = 3
    """Bootstrap after this many rewards (n-step returns; 1 = classic one-step TD)."""
    double: bool = True
    """Double DQN targets (the online network picks the next action, the target network values it)."""

    def validate(self, section: str) -> None:
        super().validate(section)
        for name in ("buffer_size", "train_freq", "target_update", "hidden", "n_step"):
            check(getattr(self, name) >= 1, f"{section}.{name}", ">= 1", getattr(self, name))
        check(0 < self.tau <= 1, f"{section}.tau", "in (0, 1]", self.tau)
        check(0 <= self.learning_starts <= self.buffer_size, f"{section}.learning_starts",
              "in [0, buffer_size]", self.learning_starts)


class CartPoleDQN(RLTask):
    """One update per ``train_freq`` vector steps; the target network lives in the task (per worker)."""

    Config = DQNConfig
    description = "DQN on CartPole-v1 (eval_return, max 500)"
    env_id = "CartPole-v1"
    default_steps = 10_000
    default_eval_every = 1000
    default_optimizer = OptimizerConfig(name="adam", lr=1e-3, max_grad_norm=10.0)

    def __init__(self, config: DQNConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.buffer = ReplayBuffer(config.buffer_size, device=self.device)
        self.n_step = NStepAccumulator(config.n_step, config.gamma, config.envs_per_worker)
        self.epsilon = config.schedule()
        self.target: nn.Module | None = None
        self.updates = 0
        self.resumed_target: dict = {}

    def build_model(self) -> nn.Module:
        c, obs_size = self.config, int(np.prod(self.observation_space.shape))
        return QNetwork(MLPPerceiver(obs_size, [c.hidden, c.hidden], "relu"), int(self.action_space.n))

    @torch.no_grad()
    def explore(self, model: nn.Module, vector_steps: int, epsilon: float) -> None:
        policy = lambda obs: (epsilon_greedy(model(self.obs_tensor(obs).float()), epsilon, self.rng), {})  # noqa: E731
        for _ in range(vector_steps):
            self.buffer.add(self.n_step(self.collector.step(policy)))

    def warm_up(self, model: nn.Module) -> None:
        """Random actions until the buffer holds ``learning_starts`` transitions (at least one).

        Counted in stored transitions, not vector steps: autoreset steps and the n-step transitions
        still pending at the end give fewer transitions than env steps, so collection goes on in
        rounds of the shortfall until the count is reached. Once it is, it stays reached (the ring
        buffer never shrinks), so this collects only before the first update and after a resume."""
        wanted, envs = max(self.config.learning_starts, 1), self.config.envs_per_worker
        while self.buffer.size < wanted:
            self.explore(model, -(-(wanted - self.buffer.size) // envs), epsilon=1.0)

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        c = self.config
        self.warm_up(model)
        self.explore(model, c.train_freq, self.epsilon(self.updates))
        if self.target is None:
            self.target = copy.deepcopy(model).requires_grad_(False)
            if self.resumed_target:
                self.target.load_state_dict(self.resumed_target)
        if self.updates % c.target_update == 0:
            with torch.no_grad():
                for mine, online in zip(self.target.state_dict().values(), model.state_dict().values()):
                    mine.copy_(online) if c.tau == 1 else mine.lerp_(online, c.tau)
        self.updates += 1
        batch = self.buffer.sample(c.batch_size, self.rng)
        batch["obs"], batch["next_obs"] = batch["obs"].float(), batch["next_obs"].float()
        return dqn_loss(model, self.target, batch, c.gamma, double=c.double), c.batch_size

    def state_dict(self) -> dict:
        target = self.target.state_dict() if self.target is not None else {}
        return {"updates": self.updates, "target": target}

    def load_state_dict(self, state: dict) -> None:
        """Restores the update counter (ε position, target period) and the target network; the replay
        buffer and env state are not checkpointed, so a resumed run refills the buffer first."""
        self.updates = int(state.get("updates", 0))
        self.resumed_target = state.get("target") or {}
