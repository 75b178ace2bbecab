"""Bring your own loop, pipelined: :func:`pipeline` gives this rank its stage and a strategy for it.

Start P × (W + S) processes (``torchrun --nproc-per-node 4 script.py`` for P = 2, W = 2)::

    import agentsync
    agentsync.init()
    units = [nn.Sequential(nn.Linear(64, 128), nn.ReLU()), nn.Sequential(nn.Linear(128, 128), nn.ReLU()),
             nn.Linear(128, 10)]                          # built from the same seed on every rank
    pp = agentsync.pipeline(units, stages=2, microbatches=4, loss_fn=nn.functional.cross_entropy,
                            example_input=x[:8], strategy="allreduce")
    optimizer = torch.optim.SGD(pp.module.parameters(), lr=0.05)
    pp.sync.setup(pp.module, optimizer)                 # servers of ps-* strategies serve here
    for x, y in loader:                                   # every stage of a replica reads the same batches
        optimizer.zero_grad()
        loss = pp.step(x, y)                              # the batch's loss on the last stage, else None
        pp.sync.step()
    stage = pp.sync.finalize()                            # this stage's final part
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from agentsync.parallel.layout import Layout
from agentsync.parallel.split import balanced_split, param_count, stage_examples, stage_module
from agentsync.parallel.stage import StageDriver, split_world
from agentsync.sync import Strategy


@dataclasses.dataclass
class Pipeline:
    """This rank's part of a pipelined job (see :func:`pipeline`)."""

    layout: Layout
    """Which rank is which stage and replica."""
    stage: int
    """This rank's stage."""
    module: nn.Module
    """This stage's part of the model (its units, sharing the given modules' tensors)."""
    sync: Strategy
    """The strategy over this stage's data-parallel group; ``setup``/``step``/``finalize`` as usual."""
    driver: StageDriver | None
    """The schedule (None on a server rank)."""

    def step(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Forward and backward of the batch over M microbatches; the gradient (the full batch's mean)
        is in the stage's ``p.grad`` afterwards, for ``sync.step()``."""
        with self.sync.no_sync():
            return self.driver.step(inputs, target)


def pipeline(units: list[nn.Module] | nn.Sequential, *, microbatches: int,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], example_input: torch.Tensor,
             stages: int | None = None, split_points: list[int] | None = None, schedule: str = "gpipe",
             strategy: str = "allreduce", servers: int = 0, **options: Any) -> Pipeline:
    """Cut ``units`` into stages over the job joined by :func:`agentsync.init`; a strategy per stage.

    Args:
        units: the model as modules run in order, each on the previous one's output.
        microbatches: M, the microbatches each batch is cut into (must divide the batch).
        loss_fn: ``loss_fn(output, target)``, a mean over the microbatch, on the last stage.
        example_input: one microbatch of the first unit's input (for the stages' shapes).
        stages: P; default ``len(split_points) + 1``.
        split_points: unit indices where a new stage starts; default balanced by parameter count.
        schedule: ``gpipe`` or ``1f1b``.
        strategy: the strategy every stage's replicas keep in sync with; ``options`` are its options.
        servers: parameter servers per stage (``ps-*`` and ``easgd``).
    Returns:
        This rank's :class:`Pipeline`.
    """
    from agentsync.api import _comm, strategy_for_group
    if _comm is None:
        raise RuntimeError("call agentsync.init() before agentsync.pipeline()")
    units = list(units)
    stages = stages or (len(split_points) + 1 if split_points else 2)
    points = [0, *split_points, len(units)] if split_points else balanced_split([param_count(u) for u in units],
                                                                                stages)
    if len(points) != stages + 1 or any(a >= b for a, b in zip(points, points[1:])):
        raise ValueError(f"split_points {split_points} do not cut {len(units)} units into {stages} stages")
    if _comm.world_size % stages:
        raise ValueError(f"{_comm.world_size} processes do not divide into {stages} stages")
    layout = Layout(stages, _comm.world_size // stages - servers, servers)
    stage_comm, pipe, _ = split_world(_comm, layout)
    stage = layout.stage_of(_comm.rank)
    module = stage_module(units, stage, stages, points)
    sync = strategy_for_group(strategy, stage_comm, workers=layout.workers, servers=max(servers, 1), **options)
    driver = None
    if layout.is_worker(_comm.rank):
        x, y = stage_examples(units, points, stage, example_input)
        driver = StageDriver(module, pipe, schedule, microbatches, loss_fn, x, y)
    return Pipeline(layout, stage, module, sync, driver)


__all__ = ["Pipeline", "pipeline"]
