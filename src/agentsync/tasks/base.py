"""What a workload is to the runtime: a model, a loss on this worker's next batch, an evaluation."""
from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from agentsync.optim import OptimizerConfig
from agentsync.options import Options, check


@dataclasses.dataclass(kw_only=True)
class TaskConfig(Options):
    """Options every task has; each task subclasses it with its own."""

    name: str = "digits"
    """Task name (see `agentsync list`)."""
    batch_size: int = 32
    """Samples per worker per step (RL tasks: see the task's own options)."""

    def validate(self, section: str) -> None:
        check(self.batch_size >= 1, f"{section}.batch_size", ">= 1", self.batch_size)


class Task(abc.ABC):
    """A workload: each worker builds one with its own rank and trains the model it makes.

    Args:
        config: this task's options.
        worker_rank: this worker's index in [0, num_workers): its shard, its seed offset.
        num_workers: how many workers split the data or run environments.
        seed: the run's seed.
        device: where the model lives; the task moves its batches there.
    """

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    description: ClassVar[str] = ""
    default_steps: ClassVar[int] = 400
    default_eval_every: ClassVar[int] = 100
    default_optimizer: ClassVar[OptimizerConfig] = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9)
    metric: ClassVar[str] = "accuracy"
    """The headline metric compare and advise rank by."""
    higher_is_better: ClassVar[bool] = True
    actor_learner: ClassVar[bool] = False
    """True where separate actor processes act and the workers only learn (``[actors]``)."""
    default_actors_per_worker: ClassVar[int] = 0
    fixed_workers: ClassVar[str] = ""
    """Why a run cannot resume on another worker count ("" where it can: data is resharded by the
    new worker count, each worker's shard a function of (seed, rank, workers))."""

    def __init__(self, config: TaskConfig, *, worker_rank: int, num_workers: int, seed: int,
                 device: torch.device | str = "cpu", total_steps: int | None = None) -> None:
        self.config, self.worker_rank, self.num_workers, self.seed = config, worker_rank, num_workers, seed
        self.device = torch.device(device)
        self.total_steps = total_steps
        """The run's step budget, where a loss follows a schedule over the run (None outside a run)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model; the runtime seeds torch identically on every rank before calling it."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        """The training loss on this worker's batch for ``step``, and how many samples it used."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of ``model``; must include ``self.metric``."""

    # -- pipeline model parallelism (docs/pipeline.md); a task that splits defines all three --------
    @classmethod
    def pipeline_unit_count(cls, config: TaskConfig) -> int:
        """How many units :meth:`pipeline_units` cuts the model into (0: the model does not split)."""
        return 0

    def pipeline_units(self, model: nn.Module) -> list[nn.Module]:
        """``model`` as modules run in order, each on the previous one's output; they share its tensors."""
        raise NotImplementedError(f"{self.config.name} does not split into pipeline stages")

    def pipeline_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs of the first unit, targets of :meth:`pipeline_loss`) for ``step``: the batch :meth:`loss` uses."""
        raise NotImplementedError(f"{self.config.name} does not split into pipeline stages")

    @staticmethod
    def pipeline_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the last unit's output: what :meth:`loss` computes, as a mean over the batch."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Task state a checkpoint must keep (RL: observation statistics, replay position)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ShardSampler:
    """Batches of this worker's disjoint shard, reshuffled each epoch from seed + epoch.

    The batch for a step is a pure function of (seed, rank, step), so a resumed run sees
    exactly the data the uninterrupted run would have.
    """

    def __init__(self, n: int, *, worker_rank: int, num_workers: int, batch_size: int, seed: int) -> None:
        order = np.random.default_rng(seed).permutation(n)
        per_worker = n // num_workers
        self.shard = order[: per_worker * num_workers][worker_rank::num_workers]
        check(len(self.shard) >= batch_size, "task.batch_size", f"<= the shard size {len(self.shard)}",
              batch_size)
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = len(self.shard) // batch_size
        self._epoch, self._order = -1, self.shard

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            perm = np.random.default_rng(self.seed + epoch).permutation(len(self.shard))
            self._epoch, self._order = epoch, self.shard[perm]
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"accuracy": (logits.argmax(-1) == y).float().mean().item(),
            "loss": nn.functional.cross_entropy(logits, y).item()}
