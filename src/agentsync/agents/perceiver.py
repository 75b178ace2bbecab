"""Perceivers: observation encoders the actor and critic heads sit on."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class RunningNorm(nn.Module):
    """Observation normalisation by a running mean and variance (kept in buffers, so checkpointed).

    The task updates it with :meth:`update_` on the observations it collects; buffers are local to a
    worker (strategies sync parameters), which is what DD-PPO does with its per-worker statistics.
    """

    def __init__(self, size: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update_(self, x: torch.Tensor) -> None:
        """Merge a batch's moments in (Chan et al.'s parallel algorithm)."""
        n, mean, var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-self.clip, self.clip)


def mlp(sizes: list[int], activation: str = "tanh") -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` after each (the encoder's output is activated too)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class MLPPerceiver(nn.Module):
    """Flat observation → optional normalisation → MLP features of width ``hidden[-1]``."""

    def __init__(self, obs_size: int, hidden: list[int], activation: str = "tanh", normalize: bool = False) -> None:
        super().__init__()
        self.norm = RunningNorm(obs_size) if normalize else nn.Identity()
        self.body = mlp([obs_size, *hidden], activation)
        self.out_features = hidden[-1] if hidden else obs_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(obs.float()))
