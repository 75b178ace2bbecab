"""The optimizer section: which torch optimizer the workers (or servers) run, and its settings."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch

from agentsync.options import Options, check, choice
from agentsync.update import LR_SCHEDULES, UpdateRule

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
LR_SCALINGS = ("none", "linear", "sqrt")
OPTIMIZER_STATE_FIELDS = ("name", "lr", "lr_scaling", "momentum", "weight_decay", "nesterov")
"""Settings the optimizer's state (its param groups) carries, so a resumed run keeps them."""


def lr_scale(scaling: str, averaged: int) -> float:
    """What the learning rate is multiplied by when one step averages ``averaged`` workers' gradients.

    A step on the mean of k workers' gradients sees a batch k times a worker's; the linear scaling
    rule (Goyal et al., 2017; Horovod's advice) keeps the progress per sample by taking a step k times
    as large; its square-root variant (Krizhevsky, 2014) is gentler, for adaptive optimizers.
    """
    return {"none": 1.0, "linear": float(averaged), "sqrt": math.sqrt(averaged)}[scaling]


@dataclasses.dataclass(kw_only=True)
class OptimizerConfig(Options):
    name: str | None = None
    """Optimizer: sgd, adam or adamw (default: the task's)."""
    lr: float | None = None
    """Learning rate (default: the task's)."""
    momentum: float | None = None
    """SGD momentum (default: the task's, else 0)."""
    weight_decay: float | None = None
    """Weight decay (default: the task's, else 0)."""
    nesterov: bool | None = None
    """Nesterov momentum, SGD only (default: off)."""
    max_grad_norm: float | None = None
    """Clip the global norm of the gradient the optimizer uses to this (default: the task's, else 0: off)."""
    lr_schedule: str | None = None
    """constant, or linear: decay the learning rate to 0 over the run (default: the task's, else constant)."""
    lr_scaling: str | None = None
    """none, linear or sqrt: multiply lr by k, or by √k, where k is the number of workers' gradients one
    step averages (workers under allreduce, replicas_to_aggregate under ps-sync, 1 where a step uses one
    worker's own gradient): the linear scaling rule for a batch k times a worker's (default: none)."""
    skip_nonfinite: bool | None = None
    """Skip (and count) an update whose gradient holds a NaN or inf (default: on). The check is one
    pass over the gradient; off, a step without clipping does no more than DDP's."""

    def merged(self, defaults: "OptimizerConfig") -> "OptimizerConfig":
        """Unset fields taken from ``defaults``, then from plain zeros."""
        out = OptimizerConfig(momentum=0.0, weight_decay=0.0, nesterov=False, max_grad_norm=0.0,
                              lr_schedule="constant", lr_scaling="none", skip_nonfinite=True)
        for source in (defaults, self):
            for f in dataclasses.fields(self):
                if getattr(source, f.name) is not None:
                    setattr(out, f.name, getattr(source, f.name))
        return out

    def validate(self, section: str) -> None:
        choice(self.name, f"{section}.name", OPTIMIZERS)
        check(self.lr >= 0, f"{section}.lr", ">= 0", self.lr)
        check(0 <= self.momentum < 1, f"{section}.momentum", "in [0, 1)", self.momentum)
        check(self.weight_decay >= 0, f"{section}.weight_decay", ">= 0", self.weight_decay)
        check(not self.nesterov or (self.name == "sgd" and self.momentum > 0), f"{section}.nesterov",
              "used only with sgd and momentum > 0", self.nesterov)
        check(self.max_grad_norm >= 0, f"{section}.max_grad_norm", ">= 0", self.max_grad_norm)
        choice(self.lr_schedule, f"{section}.lr_schedule", LR_SCHEDULES)
        choice(self.lr_scaling, f"{section}.lr_scaling", LR_SCALINGS)

    def update_rule(self) -> UpdateRule:
        """What the strategy does between the synchronized gradient and the step (the step contract)."""
        return UpdateRule(max_grad_norm=self.max_grad_norm, lr_schedule=self.lr_schedule,
                          skip_nonfinite=self.skip_nonfinite)

    def build(self, params: Iterable[torch.nn.Parameter], averaged: int = 1) -> torch.optim.Optimizer:
        """The optimizer, its learning rate scaled for steps on the mean of ``averaged`` gradients.

        Its step runs each operation once over all parameters (``foreach``), which torch picks by
        itself only for CUDA tensors: on the CPU it is the same arithmetic, each tensor through the
        same kernel, so the same numbers, with one call per operation instead of a Python loop over
        the parameters."""
        settings = {"lr": self.lr * lr_scale(self.lr_scaling, averaged), "weight_decay": self.weight_decay,
                    "foreach": True}
        if self.name == "sgd":
            settings.update(momentum=self.momentum, nesterov=self.nesterov)
        return OPTIMIZERS[self.name](params, **settings)
