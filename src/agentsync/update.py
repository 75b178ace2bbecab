"""Stages 3 and 4 of the step contract: transform the gradient the optimizer will use, then step.

Every strategy ends a step that updates parameters here, wherever its optimizer runs: on each
worker (``allreduce`` on the averaged gradient; ``none``, ``gossip``, ``local-sgd``, ``diloco``,
``ensemble`` and ``easgd`` on the local one) or on the servers' shards (``ps-*``). In order:

1. the gradient's global norm is computed once (where clipping or the non-finite check needs it);
2. a non-finite norm (NaN or inf anywhere) skips the update and is counted — under ``allreduce``
   every rank sees the same averaged gradient, so every rank skips the same step;
3. the gradient is clipped to ``max_grad_norm`` with that norm (``clip_grad_norm_``'s rule);
4. the learning rate is set from the schedule, and the optimizer steps.

A norm other than the local one (a parameter server whose shards hold parts of one gradient)
is passed in as ``total_norm``.

Example::

    update = UpdateRule(max_grad_norm=1.0, lr_schedule="linear").build(optimizer, total_updates=1000)
    loss.backward()
    update()          # False when the step was skipped
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

LR_SCHEDULES = ("constant", "linear")

Norm = Callable[[list[torch.Tensor]], torch.Tensor]


def schedule_factor(schedule: str, step: int, total: int) -> float:
    """What a value scheduled over ``total`` steps is multiplied by at ``step``: 1 when constant;
    linear decays it to 0 at ``total`` (RL Zoo's ``lin_*``)."""
    if schedule == "linear":
        return max(0.0, 1.0 - step / total)
    return 1.0


def local_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all of ``grads`` together (what ``clip_grad_norm_`` computes)."""
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """How a synchronized gradient becomes an update: the optimizer section's say in it."""

    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this before the step (0: no clipping)."""
    lr_schedule: str = "constant"
    """constant, or linear: the learning rate decays to 0 over the run's updates (RL Zoo's schedule)."""
    skip_nonfinite: bool = True
    """Skip (and count) an update whose gradient is not finite; off, the step always goes ahead."""

    def build(self, optimizer: torch.optim.Optimizer, total_updates: int | None = None, *,
              total_norm: Norm = local_norm) -> "Update":
        return Update(optimizer, self, total_updates, total_norm)


class Update:
    """A callable that applies one update to ``optimizer``'s parameters from their ``.grad``.

    Args:
        optimizer: the optimizer that steps (a worker's, or a server's shard optimizer).
        rule: clipping and learning-rate schedule.
        total_updates: how many updates the run makes here (the linear schedule's horizon).
        total_norm: how the global gradient norm is computed from this optimizer's gradients.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rule: UpdateRule, total_updates: int | None,
                 total_norm: Norm = local_norm) -> None:
        if rule.lr_schedule == "linear" and not total_updates:
            raise ValueError("a linear learning-rate schedule needs the run's number of updates")
        self.optimizer, self.rule, self.total_updates, self.total_norm = optimizer, rule, total_updates, total_norm
        self.count = 0
        """Updates attempted so far (skipped ones included): the schedule's clock."""
        self.skipped = 0
        """Updates skipped because the gradient was not finite."""
        for group in optimizer.param_groups:  # kept in the optimizer's state, so a resumed run keeps it
            group.setdefault("initial_lr", group["lr"])

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def lr_factor(self) -> float:
        return schedule_factor(self.rule.lr_schedule, self.count, self.total_updates)

    @torch.no_grad()
    def __call__(self, nonfinite: bool | None = None) -> bool:
        """Apply one update; False (and nothing changed) when the gradient is not finite.

        ``nonfinite`` is what the strategy's reduction already found (True where the gradient holds
        a NaN or inf), which spares the check its own pass over the gradient; a norm computed for
        clipping is checked instead.
        """
        factor = self.lr_factor()
        self.count += 1
        if self.rule.max_grad_norm or (self.rule.skip_nonfinite and nonfinite is None):
            params = self.params
            norm = self.total_norm([p.grad for p in params])
            if self.rule.skip_nonfinite and not torch.isfinite(norm):
                self.skipped += 1
                return False
            if self.rule.max_grad_norm:
                torch.nn.utils.clip_grads_with_norm_(params, self.rule.max_grad_norm, norm)
        elif self.rule.skip_nonfinite and nonfinite:
            self.skipped += 1
            return False
        if self.rule.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        self.optimizer.step()
        return True

    def state_dict(self) -> dict:
        return {"count": self.count, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.skipped = int(state["count"]), int(state["skipped"])
