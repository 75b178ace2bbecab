"""One rank's stage of a replica's pipeline, driven by ``torch.distributed.pipelining``.

:class:`StageDriver` wraps a :class:`~torch.distributed.pipelining.PipelineStage` and the chosen
schedule (``ScheduleGPipe`` or ``Schedule1F1B``) on the replica's pipeline group. The stage's
input and output shapes are given to the stage up front (every rank can compute them: it built
the whole model before keeping its part), so no shape metadata is exchanged at run time.

The last stage computes the loss of each microbatch; the schedule divides the accumulated
gradients by M (``scale_grads``), so with equal microbatches and a mean loss the gradient is the
full batch's, as one process would compute it.

Pipeline traffic (activations forward, their gradients backward) goes over point-to-point
messages the schedule sends itself; :attr:`StageDriver.stats` counts it apart from the strategy's
synchronization traffic, and :attr:`StageDriver.idle_fraction` measures the bubble (time in the
schedule not spent in a microbatch's forward or backward): per microbatch, a stage receives its input and sends its input's
gradient (all but the first), and sends its output and receives its gradient (all but the last).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from agentsync.comm import ByteMeter, Comm
from agentsync.parallel.layout import SCHEDULES, Layout


def split_world(world: Comm, layout: Layout) -> tuple[Comm, Comm | None, Comm | None]:
    """This rank's stage group (the strategy's), its replica's pipeline (None on servers) and the
    stage reporters' group (None elsewhere). Every rank creates every group, in the same order, as
    ``torch.distributed.new_group`` requires."""
    stages = [world.split(layout.stage_ranks(s)) for s in range(layout.stages)]
    pipes = [world.split(layout.pipeline_ranks(r)) for r in range(layout.workers)]
    reporters = world.split(layout.reporter_ranks())
    return stages[layout.stage_of(world.rank)], next((p for p in pipes if p is not None), None), reporters


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class StageDriver:
    """Runs this rank's stage for a step: forward and backward over M microbatches.

    Args:
        module: this stage's part of the model.
        pipe: the replica's pipeline group (rank ``s`` is stage ``s``).
        schedule: a name in :data:`~agentsync.parallel.layout.SCHEDULES`.
        microbatches: M, which must divide the batch.
        loss_fn: ``loss_fn(output, target)``, a mean over the microbatch (used on the last stage).
        example_input: one microbatch's input to this stage; ``example_output`` its output.

    Example::

        driver = StageDriver(module, pipe, "1f1b", 4, loss_fn, x_mb, y_mb)
        loss = driver.step(x, y)   # the batch's mean loss on the last stage, None on the others
    """

    def __init__(self, module: nn.Module, pipe: Comm, schedule: str, microbatches: int,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 example_input: torch.Tensor, example_output: torch.Tensor) -> None:
        import torch.distributed.pipelining as pipelining  # here, not at import: it costs every process ~1 s

        self.index, self.stages, self.microbatches = pipe.rank, pipe.world_size, microbatches
        self.stage = pipelining.PipelineStage(module, self.index, self.stages, pipe.device,
                                              input_args=example_input, output_args=example_output,
                                              group=pipe.group)
        self.schedule = getattr(pipelining, SCHEDULES[schedule])(self.stage, microbatches, loss_fn=loss_fn,
                                                                 scale_grads=True)
        self.meter = ByteMeter()
        self.busy_s = self.step_s = 0.0  # this session's: seconds computing microbatches, seconds in step()
        for name in ("forward_one_chunk", "backward_one_chunk"):  # the compute, apart from waiting on messages
            setattr(self.stage, name, self._timed(getattr(self.stage, name)))
        inward = 0 if self.is_first else nbytes(example_input)
        outward = 0 if self.is_last else nbytes(example_output)
        self._per_step = (microbatches * (inward + outward), (inward > 0) + (outward > 0))

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.stages - 1

    def _timed(self, compute: Callable) -> Callable:
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return compute(*args, **kwargs)
            finally:
                self.busy_s += time.perf_counter() - began
        return timed

    def step(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Forward and backward of the whole batch; gradients accumulate in the stage's ``p.grad``."""
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.is_first else ()
        kwargs = {"target": target, "losses": losses, "return_outputs": False} if self.is_last else {}
        began = time.perf_counter()
        self.schedule.step(*args, **kwargs)
        self.step_s += time.perf_counter() - began
        volume, links = self._per_step
        self.meter.account(volume, volume, 2 * self.microbatches * links)
        return torch.stack(losses).mean().detach() if self.is_last else None

    @property
    def stats(self) -> dict:
        """Pipeline bytes sent and received and messages, cumulative."""
        s = self.meter.stats
        return {"bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received, "messages": s.messages}

    @property
    def idle_fraction(self) -> float | None:
        """The measured bubble: the share of the schedule's time this stage was not computing
        (waiting for a neighbour's activations or gradients, and the messages themselves)."""
        return 1.0 - self.busy_s / self.step_s if self.step_s else None

    def load_stats(self, saved: dict) -> None:
        self.meter.stats.load({**saved, "comm_time_s": 0.0})
