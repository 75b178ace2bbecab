"""Streaming DiLoCo's fragments (Douillard et al., 2025): the parameters cut into K contiguous runs
of tensors, each synchronised on its own schedule, the schedules staggered so that each sync sends
about 1/K of the model and peak bandwidth drops K times.

A fragment is a run of whole parameter tensors in ``model.parameters()`` order, so it is also one
contiguous slice of the flat parameter vector (:func:`~agentsync.sync.averaging.flat_params`). The
runs are balanced by parameter count with the pipeline's exact linear partition
(:func:`~agentsync.parallel.split.balanced_split`). Fragment f syncs after the steps t with
(t + 1 + ⌊f·H/K⌋) mod H = 0: fragment 0 where plain DiLoCo syncs, the others shifted by
⌊f·H/K⌋ steps. With H ≥ K the shifts are distinct, so no two fragments sync at one step.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from agentsync.errors import ConfigError
from agentsync.parallel.split import balanced_split


@dataclasses.dataclass(frozen=True)
class Fragment:
    """One run of parameter tensors and where it sits in the flat vector and in the schedule."""

    index: int
    first: int
    """Index of its first tensor in ``model.parameters()``."""
    last: int
    """One past its last tensor."""
    start: int
    """Offset of its first value in the flat parameter vector."""
    stop: int
    """One past its last value."""
    shift: int
    """Steps its syncs come before fragment 0's: ⌊index·H/K⌋."""

    def due(self, step: int, period: int) -> bool:
        """True when this fragment syncs after step ``step`` (counted from 0), every ``period`` steps."""
        return (step + 1 + self.shift) % period == 0

    def tensors(self, model: nn.Module) -> list[torch.Tensor]:
        return list(model.parameters())[self.first:self.last]

    @property
    def numel(self) -> int:
        return self.stop - self.start


def check_fragments(count: int, model: nn.Module, field: str = "strategy.fragments") -> None:
    """A one-line :class:`ConfigError` where ``model`` has fewer parameter tensors than ``count``
    fragments (a fragment is at least one whole tensor)."""
    tensors = len(list(model.parameters()))
    if count > tensors:
        raise ConfigError(f"{field} must be <= the model's {tensors} parameter tensors (got {count})")


def fragments_of(model: nn.Module, count: int, period: int) -> list[Fragment]:
    """``model``'s parameters cut into ``count`` fragments balanced by size, synced every ``period`` steps.

    Example::

        fragments_of(digits_mlp, 2, 4)   # tensors [0, 2) (8,320 values), [2, 6) (17,802), shifts 0 and 2
    """
    check_fragments(count, model)
    sizes = [p.numel() for p in model.parameters()]
    points = balanced_split(sizes, count)
    offsets = [sum(sizes[:i]) for i in points]
    return [Fragment(f, points[f], points[f + 1], offsets[f], offsets[f + 1], f * period // count)
            for f in range(count)]
