"""The codec stage of the transport: a payload summed over the group, each rank's part compressed
with error feedback (see :mod:`agentsync.compress`).

A linear codec's payloads are all-reduced while encoded (fp16 sums in fp16) and decoded once; any
other codec's payloads are all-gathered, as one byte message per rank, and every rank decodes each
and sums them in rank order, so every rank holds the same result. The byte meter counts the
encoded payload: what :meth:`Codec.nbytes` says, not the dense size.
"""
from __future__ import annotations

from typing import Callable

import torch

from agentsync.comm import Comm, Work
from agentsync.compress import Compression


class Decoding:
    """A transport in flight; :meth:`wait` finishes it and writes the decoded sum in place."""

    def __init__(self, work: Work, finish: Callable[[], None]) -> None:
        self._work, self._finish = work, finish

    def wait(self) -> None:
        self._work.wait()
        self._finish()


def all_sum_async(comm: Comm, compression: Compression, key: str, tensor: torch.Tensor) -> Decoding:
    """Start ``tensor ← Σ_i decode(encode(tensor_i + residual_i))``; ``key`` names the residual."""
    codec = compression.codec
    encoded = compression.compress(key, tensor)
    if codec.linear:
        work = comm.all_reduce_async(encoded.tensors["values"])
        return Decoding(work, lambda: tensor.copy_(codec.decode(encoded)))
    gathered, work = comm.all_gather_async(encoded.to_bytes())

    def finish() -> None:
        tensor.zero_()
        for payload in gathered:
            tensor.add_(codec.decode(encoded.like(payload)))
    return Decoding(work, finish)


@torch.no_grad()
def average_compressed_(comm: Comm, compression: Compression, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over the group of ``tensor``, sent compressed."""
    all_sum_async(comm, compression, key, tensor).wait()
    return tensor.div_(comm.world_size)
