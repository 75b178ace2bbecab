"""Tasks by name. A new task is one module plus one line in ``TASKS``."""
from __future__ import annotations

from agentsync.errors import ConfigError
from agentsync.tasks.base import Task, TaskConfig
from agentsync.tasks.charlm import CharLM
from agentsync.tasks.digits import Autoencoder, Digits

TASKS: dict[str, type[Task]] = {
    "digits": Digits,
    "charlm": CharLM,
    "autoencoder": Autoencoder,
}


def task_class(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(TASKS)}") from None


def build_task(config: TaskConfig, **kwargs) -> Task:
    """A task of ``config.name``; ``kwargs`` are :class:`Task`'s (worker_rank, num_workers, seed, device)."""
    return task_class(config.name)(config, **kwargs)


__all__ = ["TASKS", "Task", "TaskConfig", "build_task", "task_class"]
