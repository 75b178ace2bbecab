"""Tasks by name. A new task is one module plus one line in ``TASKS``."""
from __future__ import annotations

from agentsync.registry import Registry
from agentsync.tasks.base import Task, TaskConfig

TASKS: Registry[Task] = Registry("task", {
    "digits": "agentsync.tasks.digits:Digits",
    "charlm": "agentsync.tasks.charlm:CharLM",
    "autoencoder": "agentsync.tasks.digits:Autoencoder",
    "frozenlake-q": "agentsync.tasks.frozenlake:FrozenLakeQ",
    "cartpole-dqn": "agentsync.tasks.dqn:CartPoleDQN",
    "cartpole-ppo": "agentsync.tasks.ppo:PPOTask",
    "acrobot-ppo": "agentsync.tasks.ppo:AcrobotPPO",
    "cartpole-impala": "agentsync.tasks.impala:ImpalaTask",
    "acrobot-impala": "agentsync.tasks.impala:AcrobotImpala",
})


def task_class(name: str) -> type[Task]:
    return TASKS[name]


def build_task(config: TaskConfig, **kwargs) -> Task:
    """A task of ``config.name``; ``kwargs`` are :class:`Task`'s (worker_rank, num_workers, seed, device)."""
    return task_class(config.name)(config, **kwargs)


__all__ = ["TASKS", "Task", "TaskConfig", "build_task", "task_class"]
