"""``digits`` (MLP classifier) and ``autoencoder`` (unsupervised), on scikit-learn's bundled 8x8 digits."""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agentsync.errors import ConfigError
from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.tasks.base import ShardSampler, Task, TaskConfig, classification_metrics


@cache
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """1,437 training and 360 held-out images scaled to [0, 1]; the split is fixed (stratified, seed 0)."""
    x, y = load_digits()
    test = stratified_test_indices(y, fraction=0.2, seed=0)
    train = torch.ones(len(y), dtype=torch.bool)
    train[test] = False
    return x[train], y[train], x[test], y[test]


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images), read from its data file.

    Read directly rather than through ``sklearn.datasets``: importing scikit-learn costs every
    worker process about two seconds, longer than a short run's training."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the digits tasks need scikit-learn's bundled data: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return torch.from_numpy(data[:, :-1] / 16.0), torch.from_numpy(data[:, -1]).long()


def stratified_test_indices(y: torch.Tensor, *, fraction: float, seed: int) -> torch.Tensor:
    """A held-out set of ceil(fraction · n) samples with each class in proportion (largest remainders
    round), drawn at random with ``seed``; sorted."""
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * fraction
    take = quota.floor().long()
    short = math.ceil(fraction * len(y)) - int(take.sum())
    take[torch.argsort(quota - take, descending=True, stable=True)[:short]] += 1
    picked = [torch.nonzero(y == c).flatten()[torch.randperm(int(n), generator=gen)[:k]]
              for c, n, k in zip(classes, counts, take)]
    return torch.cat(picked).sort().values


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DigitsData(Task):
    """Shared by the digits tasks: this worker's shard of the training images."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.x_train, self.y_train, self.x_test, self.y_test = (t.to(self.device) for t in digits_split())
        self.sampler = ShardSampler(len(self.x_train), worker_rank=self.worker_rank,
                                    num_workers=self.num_workers, batch_size=config.batch_size, seed=self.seed)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.indices(step)).to(self.device)
        return self.x_train[idx], self.y_train[idx]


@dataclasses.dataclass(kw_only=True)
class DigitsConfig(TaskConfig):
    name: str = "digits"
    hidden: int = 128
    """Width of the two hidden layers."""

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.hidden >= 1, f"{section}.hidden", ">= 1", self.hidden)


class Digits(DigitsData):
    """Classify 8x8 digits with a two-hidden-layer MLP; metric: held-out accuracy."""

    Config = DigitsConfig
    description = "MLP classifier on scikit-learn's 8x8 digits (held-out accuracy)"
    default_steps = 400
    default_eval_every = 100
    default_optimizer = OptimizerConfig(name="sgd", lr=0.05, momentum=0.9)
    metric = "accuracy"

    def build_model(self) -> nn.Module:
        return mlp([64, self.config.hidden, self.config.hidden, 10])

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(step)
        return self.pipeline_loss(model(x), y), len(y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return classification_metrics(model(self.x_test), self.y_test)

    @classmethod
    def pipeline_unit_count(cls, config: DigitsConfig) -> int:
        return 3

    def pipeline_units(self, model: nn.Module) -> list[nn.Module]:
        """The three layers, each Linear with the ReLU after it."""
        layers = list(model)
        return [nn.Sequential(*layers[i:i + 2]) for i in range(0, len(layers), 2)]

    def pipeline_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(step)

    @staticmethod
    def pipeline_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)


@dataclasses.dataclass(kw_only=True)
class AutoencoderConfig(TaskConfig):
    name: str = "autoencoder"
    hidden: int = 64
    """Width of the encoder's and decoder's hidden layer."""
    code: int = 12
    """Size of the bottleneck code."""

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.hidden >= 1 and self.code >= 1, f"{section}.hidden/code", ">= 1", (self.hidden, self.code))


class Autoencoder(DigitsData):
    """Compress 8x8 digits through a small code; metric: held-out mean squared reconstruction error."""

    Config = AutoencoderConfig
    description = "unsupervised autoencoder on the digits (held-out reconstruction error)"
    default_steps = 600
    default_eval_every = 100
    default_optimizer = OptimizerConfig(name="adam", lr=3e-3)
    metric = "reconstruction_error"
    higher_is_better = False

    def build_model(self) -> nn.Module:
        c = self.config
        return nn.Sequential(mlp([64, c.hidden, c.code]), nn.ReLU(), mlp([c.code, c.hidden, 64]), nn.Sigmoid())

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        x, _ = self.batch(step)
        return nn.functional.mse_loss(model(x), x), len(x)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        error = nn.functional.mse_loss(model(self.x_test), self.x_test).item()
        return {"reconstruction_error": error, "loss": error}
