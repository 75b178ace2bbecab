"""``allreduce``: bucketed gradient averaging overlapped with backward, as DDP's reducer does it.

DDP needs the forward pass to go through its wrapper; agentsync's API keeps the user's module,
so the same algorithm is driven from per-parameter post-accumulate-grad hooks. Each parameter's
``.grad`` is a view into a flat bucket (DDP's ``gradient_as_bucket_view``): backward accumulates
into the bucket itself, and a gradient that arrives as a fresh tensor (after
``zero_grad(set_to_none=True)``) is copied in once and the view put back. A bucket's all-reduce
starts as soon as its last gradient lands, in bucket order on every rank; a callback queued on
the autograd engine waits for every bucket before ``backward()`` returns, as DDP's does. As in
DDP's reducer, a gradient is divided by W as it is copied into its bucket, so the reduced sum is
the mean with no pass after it; the step's non-finite check reads each reduced bucket once (its
sum, taken while later buckets are in flight) and is left out when the update computes a norm
anyway or ``optimizer.skip_nonfinite`` is off. So
``p.grad`` holds the average when backward returns, and what a loop does between ``backward()``
and :meth:`step` — clipping, logging, scaling — acts on the averaged gradient exactly as under DDP.
:meth:`step` then runs the update (non-finite skip, clipping, step) and, for models with
buffers, broadcasts worker 0's buffers, as DDP's ``broadcast_buffers`` keeps them equal.
Under ``comm.compression`` each bucket goes through the codec stage instead of a plain all-reduce
(:func:`~agentsync.sync.compressed.all_sum_async`, error feedback per bucket); ``p.grad`` still
holds the (decoded) average when backward returns. ``powersgd`` all-reduces each bucket's low-rank
factors P and Q per parameter matrix (two dependent rounds, so that bucket waits in place).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Iterator

import torch
from torch import nn

from agentsync.comm import Work
from agentsync.options import check
from agentsync.sync.base import Strategy, StrategyConfig, broadcast_buffers_
from agentsync.sync.compressed import Decoding, all_sum_async


@dataclasses.dataclass(kw_only=True)
class AllReduceConfig(StrategyConfig):
    name: str = "allreduce"
    bucket_mb: float = 25.0
    """Gradient bucket size in MiB (DDP's default); larger buckets send fewer, bigger messages."""
    first_bucket_mb: float = 1.0
    """Size of the first bucket, small so communication starts early in backward (as DDP)."""

    def validate(self, section: str) -> None:
        check(self.bucket_mb > 0, f"{section}.bucket_mb", "> 0", self.bucket_mb)
        check(self.first_bucket_mb > 0, f"{section}.first_bucket_mb", "> 0", self.first_bucket_mb)

    def averaged_gradients(self, workers: int) -> int:
        return workers


class Bucket:
    """A flat buffer holding the gradients of a few parameters, reduced as one message."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype,
                                  device=params[0].device)
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        self.views = [self.buffer[a:b].view_as(p) for a, b, p in zip(offsets, offsets[1:], params)]
        self.ready = [False] * len(params)
        self.pending = len(params)
        self.work: Work | Decoding | None = None

    def mark_ready(self, i: int, divisor: int = 1) -> None:
        """Parameter ``i``'s gradient is complete: make sure it lives in the bucket, divided by
        ``divisor`` in the same pass as the copy (DDP's ``mul_out``: the bucket holds g_i / W, so
        its sum is the mean and no pass after the all-reduce is needed)."""
        param, view = self.params[i], self.views[i]
        if param.grad is not view:  # a fresh tensor (after zero_grad(set_to_none=True))
            if divisor == 1:
                view.copy_(param.grad)
            else:
                torch.mul(param.grad, 1.0 / divisor, out=view)
            param.grad = view
        elif divisor != 1:
            view.mul_(1.0 / divisor)
        self.ready[i] = True
        self.pending -= 1

    def fill_unready_(self) -> None:
        """Parameters that got no gradient this backward contribute zeros (and then hold the average)."""
        for i, (param, view) in enumerate(zip(self.params, self.views)):
            if not self.ready[i]:
                view.zero_()
                param.grad = view

    def reset(self) -> None:
        self.ready, self.pending, self.work = [False] * len(self.params), len(self.params), None


def holds_nonfinite(buffers: list[torch.Tensor], sums: list[torch.Tensor]) -> bool:
    """Whether any of ``buffers`` holds a NaN or inf, given their ``sums``.

    A NaN or inf anywhere makes a float sum non-finite, so finite sums prove finite buffers at the
    cost of the one read that took them; a non-finite sum (which finite values can also reach, by
    overflowing) is confirmed element by element."""
    if math.isfinite(sum(float(s) for s in sums)):
        return False
    return not all(bool(torch.isfinite(b).all()) for b in buffers)


def make_buckets(params: list[nn.Parameter], first_bytes: int, bytes_cap: int) -> list[Bucket]:
    """Group parameters, last-registered first, into buckets of about ``bytes_cap`` bytes.

    DDP's rule (``compute_bucket_assignment_by_size``): a bucket closes once it *reaches* its cap,
    so the first bucket takes the parameter that crosses ``first_bytes`` and its all-reduce
    overlaps the rest of backward, rather than that parameter waiting in the last bucket."""
    groups: list[list[nn.Parameter]] = [[]]
    size, cap = 0, first_bytes
    for p in reversed(params):
        if groups[-1] and p.dtype != groups[-1][0].dtype:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.numel() * p.element_size()
        if size >= cap:
            groups.append([])
            size, cap = 0, bytes_cap
    return [Bucket(g) for g in groups if g]


class AllReduce(Strategy):
    """g = mean_i g_i every step, by bucketed ring all-reduce overlapped with backward."""

    Config = AllReduceConfig
    description = "average gradients every step by bucketed all-reduce (DDP); replicas identical"
    supports_compression = True
    sums_compressed = True
    takes_low_rank = True
    sends_gradients = True

    @property
    def payload_scale(self) -> float:
        """A bucket holds g_i / W when it is encoded (the decoded sum is the mean)."""
        return 1.0 / self.num_workers

    def _setup(self) -> None:
        super()._setup()
        mib = 1 << 20
        self.buckets = make_buckets(self.params, int(self.config.first_bucket_mb * mib),
                                    int(self.config.bucket_mb * mib))
        for bucket in self.buckets:
            for p, view in zip(bucket.params, bucket.views):
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
        self._next = 0
        self._in_backward = False  # a callback is queued for the end of the running backward
        self._reduced = False      # gradients averaged since the last step
        self._deferred = False     # gradients accumulated under no_sync, to average at the step
        self._has_buffers = any(True for _ in self.model.buffers())
        rule = self.update.rule
        self._checks_sums = self.compression is None and rule.skip_nonfinite and not rule.max_grad_norm
        """Whether the reduced buckets' sums tell the update if the mean is finite (clipping computes
        a norm that tells it; a codec's decoded sum is checked by the update itself)."""
        self._sums: list[torch.Tensor] = []
        self._hooks = [p.register_post_accumulate_grad_hook(functools.partial(self._on_grad_ready, bucket, i))
                       for bucket in self.buckets for i, p in enumerate(bucket.params)]

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients over several backward passes; :meth:`step` averages the sum once."""
        self._deferred = True
        yield

    def _on_grad_ready(self, bucket: Bucket, i: int, param: nn.Parameter) -> None:
        if self._deferred:
            return
        if not self._in_backward:
            self._in_backward = True
            torch.autograd.Variable._execution_engine.queue_callback(self._reduce_all)
        bucket.mark_ready(i, self.num_workers)
        if not bucket.pending and not self.local_clip:  # DGC's local clipping needs the whole gradient first
            self._launch_ready()

    def _launch_ready(self, force: bool = False) -> None:
        """Start buckets in index order, so every rank issues the same collectives in the same order."""
        while self._next < len(self.buckets):
            bucket = self.buckets[self._next]
            if bucket.pending and not force:
                return
            if bucket.pending:
                bucket.fill_unready_()
            if self.compression is None:
                bucket.work = self.comm.all_reduce_async(bucket.buffer)
            else:  # the buffer holds g_i / W: the decoded sum is the average
                bucket.work = all_sum_async(self.comm, self.compression, f"bucket{self._next}", bucket.buffer,
                                            [p.shape for p in bucket.params])
            self._next += 1

    def _reduce_all(self) -> None:
        """End of backward (or a step without one): every bucket reduced, ``p.grad`` the average."""
        if self.local_clip:  # no bucket has started: clip this worker's whole payload g_i / W first
            for bucket in self.buckets:
                bucket.fill_unready_()
            torch.nn.utils.clip_grad_norm_(self.params, self.local_clip)
        self._launch_ready(force=True)
        self._sums.clear()
        for bucket in self.buckets:
            bucket.work.wait()
            if self._checks_sums:  # one read while the next bucket is still in flight
                self._sums.append(bucket.buffer.sum())
            bucket.reset()
        self._next, self._in_backward, self._reduced = 0, False, True

    def _nonfinite(self) -> bool | None:
        """Whether the mean gradient holds a NaN or inf (None: the update checks it itself)."""
        if not self._checks_sums:
            return None
        return holds_nonfinite([bucket.buffer for bucket in self.buckets], self._sums)

    def _step(self) -> None:
        if self._deferred:  # accumulated under no_sync: every gradient is complete now
            self._deferred = False
            for bucket in self.buckets:
                for i, param in enumerate(bucket.params):
                    if param.grad is not None:
                        bucket.mark_ready(i, self.num_workers)
        if not self._reduced:  # no backward since the last step: average the (zero) gradients all the same
            self._reduce_all()
        self._reduced = False
        self.update(nonfinite=self._nonfinite())
        if self._has_buffers:
            broadcast_buffers_(self.comm, self.model)

    def finalize(self) -> nn.Module:
        for hook in self._hooks:
            hook.remove()
        return self.model
