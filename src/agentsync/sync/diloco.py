"""``diloco``: H inner steps of the run's optimizer, then an outer step on the averaged
pseudo-gradient Δ = θ_start − mean_i θ_i (Douillard et al., 2023); optionally streaming
(Douillard et al., 2025): the parameters in K fragments synced in turn, each sync overlapped with
the next τ inner steps.

The inner optimizer is the run's ``optimizer`` section (the strategy prefers AdamW; see
:func:`agentsync.config.choose_optimizer` for how that meets the task's and the user's settings).
Its state is kept across outer steps, as in DiLoCo. The outer optimizer — Nesterov SGD, or plain
SGD when ``outer_momentum`` is 0 — steps θ_start, one tensor per fragment (so each fragment has
its own momentum, advanced only when that fragment syncs: SGD skips a parameter without a
gradient). After a fragment's outer step every replica takes θ_start's slice by value (``mix``
0) or mixes it into its own (θ ← α θ_local + (1 − α) θ_start), so with the defaults all replicas
and all ranks' θ_start are identical right after the sync. θ_start, the outer optimizer's state
and any sync still in flight are checkpointed with the strategy. Under ``comm.compression`` each
replica sends θ_start − θ_i through the codec stage, with error feedback (one memory per fragment),
instead of θ_i.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import ClassVar

import torch
from torch import nn

from agentsync.comm import Work
from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.sync.averaging import Decentralized, average_buffers_, flatten, unflatten_
from agentsync.sync.base import StrategyConfig
from agentsync.sync.compressed import Decoding, all_sum_async
from agentsync.sync.fragments import Fragment, fragments_of


@dataclasses.dataclass(kw_only=True)
class DiLoCoConfig(StrategyConfig):
    name: str = "diloco"
    inner_steps: int = 20
    """Local steps H between outer steps (of each fragment)."""
    outer_lr: float = 0.7
    """Outer SGD learning rate."""
    outer_momentum: float = 0.9
    """Outer Nesterov momentum, in [0, 1) (0: plain SGD)."""
    fragments: int = 1
    """Streaming DiLoCo's K: the tensors in K fragments balanced by size, synced in turn ⌊H/K⌋ steps apart."""
    overlap: int = 0
    """Streaming DiLoCo's τ: inner steps a fragment's sync runs behind before it is applied (τ·K < H)."""
    mix: float = 0.0
    """Streaming DiLoCo's α in [0, 1): θ ← α θ + (1 − α) θ_synced as a sync lands (0 replaces; paper: 0.5, τ > 0)."""

    def validate(self, section: str) -> None:
        check(self.inner_steps >= 1, f"{section}.inner_steps", ">= 1", self.inner_steps)
        check(self.outer_lr > 0, f"{section}.outer_lr", "> 0", self.outer_lr)
        check(0 <= self.outer_momentum < 1, f"{section}.outer_momentum", "in [0, 1)", self.outer_momentum)
        check(1 <= self.fragments <= self.inner_steps, f"{section}.fragments",
              f"in [1, inner_steps={self.inner_steps}] (two fragments never sync at one step)", self.fragments)
        check(0 <= self.overlap and self.overlap * self.fragments < self.inner_steps, f"{section}.overlap",
              f">= 0 with overlap * fragments < inner_steps={self.inner_steps} (a sync lands before the next one "
              "starts)", self.overlap)
        check(0 <= self.mix < 1, f"{section}.mix", "in [0, 1) (1 would never take the synced values)", self.mix)


@dataclasses.dataclass
class InFlight:
    """A fragment's sync between its start and the step it is applied at."""

    fragment: Fragment
    due: int
    """The step after whose update it is applied."""
    payload: torch.Tensor
    """Being summed over the group: θ_i's slice, or θ_start − θ_i's under compression; then Δ."""
    work: Work | Decoding | None
    """The transport's handle (``wait()``), None once landed: ``payload`` is then Δ, the mean pseudo-gradient."""


class DiLoCo(Decentralized):
    """Local SGD with an outer optimizer: the averaged model update is treated as a gradient."""

    Config = DiLoCoConfig
    regroups = True
    description = "inner optimizer for H steps, outer Nesterov SGD on the averaged pseudo-gradient"
    preferred_optimizer: ClassVar[OptimizerConfig] = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01)
    supports_compression = True
    sums_compressed = True

    def __init__(self, config: DiLoCoConfig, comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.fragments: list[Fragment] = []
        self.starts: list[nn.Parameter] = []  # θ_start per fragment: the outer optimizer's parameters
        self.outer: torch.optim.SGD | None = None
        self.in_flight: collections.deque[InFlight] = collections.deque()

    @classmethod
    def check_model(cls, config: DiLoCoConfig, model: nn.Module) -> None:
        fragments_of(model, config.fragments, config.inner_steps)

    def _setup(self) -> None:
        super()._setup()
        cfg = self.config
        self.fragments = fragments_of(self.model, cfg.fragments, cfg.inner_steps)
        self.starts = [nn.Parameter(flatten(f.tensors(self.model))) for f in self.fragments]
        self.outer = torch.optim.SGD(self.starts, lr=cfg.outer_lr, momentum=cfg.outer_momentum,
                                     nesterov=cfg.outer_momentum > 0)
        if self._restored is not None:
            with torch.no_grad():
                for fragment, start in zip(self.fragments, self.starts):
                    start.copy_(self._restored["start"][fragment.start:fragment.stop])
            self.outer.load_state_dict(self._restored["outer"])
            self.in_flight.extend(InFlight(self.fragments[s["fragment"]], s["due"], s["delta"], None)
                                  for s in self._restored.get("in_flight", []))

    def _step(self) -> None:
        self.update()
        for fragment in self.fragments:
            if fragment.due(self.steps, self.config.inner_steps):
                self.in_flight.append(self._send(fragment))
        while self.in_flight and self.in_flight[0].due <= self.steps:
            self._apply_(self.in_flight.popleft())

    def _key(self, fragment: Fragment) -> str:
        """The fragment's error-feedback memory (one fragment: the name unstreamed DiLoCo always used)."""
        return "pseudo_gradient" if len(self.fragments) == 1 else f"pseudo_gradient/{fragment.index}"

    @torch.no_grad()
    def _send(self, fragment: Fragment) -> InFlight:
        """Start summing this replica's part of the fragment's pseudo-gradient over the group."""
        local = flatten(fragment.tensors(self.model))
        due = self.steps + self.config.overlap
        if self.compression is None:
            return InFlight(fragment, due, local, self.comm.all_reduce_async(local))
        payload = self.starts[fragment.index].detach() - local
        work = all_sum_async(self.comm, self.compression, self._key(fragment), payload)
        return InFlight(fragment, due, payload, work)

    @torch.no_grad()
    def _land(self, sync: InFlight) -> torch.Tensor:
        """Wait for a sync; its payload becomes Δ = θ_start − mean_i θ_i."""
        if sync.work is not None:
            sync.work.wait()
            sync.work = None
            mean = sync.payload.div_(self.comm.world_size)
            if self.compression is None:  # the sum was of θ_i: Δ = θ_start − mean
                sync.payload = self.starts[sync.fragment.index].detach() - mean
        return sync.payload

    @torch.no_grad()
    def _apply_(self, sync: InFlight) -> None:
        """θ_start ← outer step on Δ; every replica's fragment ← θ_start, or α θ_local + (1 − α) θ_start."""
        start = self.starts[sync.fragment.index]
        start.grad = self._land(sync)
        self.outer.step()
        start.grad = None
        tensors = sync.fragment.tensors(self.model)
        mix = self.config.mix
        unflatten_(tensors, torch.lerp(start.detach(), flatten(tensors), mix) if mix else start.detach())
        if sync.fragment.index == 0:  # buffers once per H steps, with fragment 0, as unstreamed DiLoCo
            average_buffers_(self.comm, self.model)

    def _land_all(self) -> None:
        """Wait for every sync in flight (their Δ is kept; each is applied at its own step)."""
        for sync in self.in_flight:
            self._land(sync)

    def _regrouped(self) -> None:
        """Syncs in flight belonged to the old group: dropped, as a sync interrupted by the loss is."""
        self.in_flight.clear()

    def finalize(self) -> nn.Module:
        self._land_all()  # no transfer outlives the run; a sync due after the last step is not applied
        return super().finalize()

    def state_dict(self) -> dict:
        self._land_all()
        in_flight = [{"fragment": s.fragment.index, "due": s.due, "delta": s.payload.clone()}
                     for s in self.in_flight]
        return {**super().state_dict(), "start": torch.cat([s.detach() for s in self.starts]),
                "outer": self.outer.state_dict(), "in_flight": in_flight}
