"""The codec stage of the transport: a payload summed over the group, each rank's part compressed
with error feedback (see :mod:`agentsync.compress`).

A linear codec's payloads are all-reduced while encoded (fp16 sums in fp16) and decoded once. Any
other codec's payloads are summed as ``comm.compressed_sum`` says: ``all-gather`` sends each rank's
payload to every rank, as one byte message, and every rank decodes each and sums them in rank order
(W − 1 payloads sent per rank); ``scatter-gather`` (:func:`scatter_sum_async`) sends a W-th of each to
its owner rank, which sums and re-encodes it, then all-gathers the owners' sums (2 (W − 1) / W
payloads per rank). Either way every rank decodes the same bytes and holds the same result. The
byte meter counts the encoded payload: what :meth:`Codec.nbytes` says, not the dense size.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from agentsync.comm import Comm, Work
from agentsync.compress import Compression, Encoded


class Done:
    """A transport that finished while it was started (PowerSGD's two dependent rounds)."""

    def wait(self) -> None:
        pass


class Decoding:
    """A transport in flight; :meth:`wait` finishes it and writes the decoded sum in place."""

    def __init__(self, work: Work, finish: Callable[[], None]) -> None:
        self._work, self._finish = work, finish

    def wait(self) -> None:
        self._work.wait()
        self._finish()


def all_sum_async(comm: Comm, compression: Compression, key: str, tensor: torch.Tensor,
                  shapes: list[torch.Size] | None = None) -> Decoding:
    """Start ``tensor ← Σ_i decode(encode(tensor_i + residual_i))``; ``key`` names the residual.
    ``shapes``: the parameters laid end to end in ``tensor`` (a low-rank codec needs them)."""
    codec = compression.codec
    if getattr(codec, "low_rank", False):
        return power_sum(comm, compression, key, tensor, shapes)
    if not codec.linear and comm.config.compressed_sum == "scatter-gather":
        return scatter_sum_async(comm, compression, key, tensor)
    encoded = compression.compress(key, tensor)
    if codec.linear:
        work = comm.all_reduce_async(encoded.tensors["values"])
        return Decoding(work, lambda: tensor.copy_(compression.decode(encoded)))
    gathered, work = comm.all_gather_async(encoded.to_bytes())

    def finish() -> None:
        tensor.zero_()
        for payload in gathered:
            tensor.add_(compression.decode(encoded.like(payload)))
    return Decoding(work, finish)


def scatter_sum_async(comm: Comm, compression: Compression, key: str, tensor: torch.Tensor) -> Decoding:
    """Start ``tensor ← Σ_i tensor_i`` as 1-bit Adam's compressed all-reduce (Tang et al., 2021): the
    payload, zero-padded to W equal chunks, is encoded chunk by chunk (error feedback ``key/wW/j``
    for chunk j) and chunk j goes to rank j (all-to-all); rank j decodes the W parts in rank order,
    sums them, encodes the sum with error feedback of its own (``key/wW/sum``) and the owners' sums
    are all-gathered and decoded on every rank. What either encoding drops stays in a residual, so
    after T steps Σ results = Σ inputs − the W chunk residuals − the owners' residuals. The memories
    are named by W: a group that regroups after a loss cuts its payloads anew and starts new ones."""
    n, numel = comm.world_size, tensor.numel()
    chunks = torch.nn.functional.pad(tensor.reshape(-1), (0, -numel % n)).view(n, -1)
    key = f"{key}/w{n}"
    encoded = [compression.compress(f"{key}/{j}", chunk) for j, chunk in enumerate(chunks)]
    parts, work = comm.all_to_all_async(torch.cat([e.to_bytes() for e in encoded]))
    mine = encoded[comm.rank]

    def finish() -> None:
        total = chunks[comm.rank].new_zeros(chunks.shape[1])
        for part in parts.view(n, -1):
            total.add_(compression.decode(mine.like(part)))
        owned = compression.compress(f"{key}/sum", total)
        sums = [compression.decode(owned.like(data)) for data in comm.all_gather(owned.to_bytes())]
        tensor.copy_(torch.cat(sums)[:numel].view_as(tensor))
    return Decoding(work, finish)


@torch.no_grad()
def average_compressed_(comm: Comm, compression: Compression, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over the group of ``tensor``, sent compressed."""
    all_sum_async(comm, compression, key, tensor).wait()
    return tensor.div_(comm.world_size)


class Channel:
    """The codec stage of a point-to-point payload of ``numel`` values (a parameter-server push).

    The wire stays one float32 tensor: the encoded bytes ride in ``slots`` float32 slots, zero-padded
    to a multiple of four bytes, and the byte meter counts those slots. Sender and receiver build the
    same channel from the codec and the size, so the receiver knows every payload's shapes.
    """

    def __init__(self, compression: Compression, numel: int, device: torch.device) -> None:
        self.compression = compression
        saved = compression.codec.state_dict()  # the template must not advance a codec's generator
        self.template = compression.codec.encode(torch.zeros(numel, device=device))
        compression.codec.load_state_dict(saved)
        self.nbytes = compression.codec.nbytes(self.template)
        self.slots = -(-self.nbytes // 4)

    def encode(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` plus ``key``'s residual, encoded, as float32 slots (sender side)."""
        return self.slots_of(self.compression.compress(key, tensor))

    @torch.no_grad()
    def encode_change(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` − x̂, encoded, where x̂ is public copy ``key`` of ``tensor`` that the receiver also
        keeps (CHOCO's scheme: x̂ ← x̂ + decode, so the copy is the error feedback). A non-finite
        payload leaves the copy alone, as the receiver does."""
        copy = self.compression.copy(key, tensor)
        encoded = self.compression.encode(tensor - copy)
        decoded = self.compression.decode(encoded)
        if bool(torch.isfinite(decoded).all()):
            copy.add_(decoded)
        return self.slots_of(encoded)

    def slots_of(self, encoded: Encoded) -> torch.Tensor:
        data = encoded.to_bytes()
        return torch.nn.functional.pad(data, (0, 4 * self.slots - data.numel())).view(torch.float32)

    def decode(self, slots: torch.Tensor) -> torch.Tensor:
        """The dense float32 tensor a message of :meth:`encode` carries (receiver side)."""
        data = slots.contiguous().view(torch.uint8)[:self.nbytes]
        return self.compression.decode(self.template.like(data)).float()


@torch.no_grad()
def choco_exchange(comm: Comm, compression: Compression, key: str, mine: torch.Tensor, partner: int) -> torch.Tensor:
    """CHOCO-SGD's transport (Koloskova et al., 2019) for one pair: x̂_partner − x̂_mine.

    Each side of the pair keeps two public copies, its own x̂_mine and the partner's x̂_partner, equal
    bit for bit on both sides. Each sends only q = encode(x − x̂) and both add decode(q) to that copy,
    so what a codec drops stays in x − x̂ and goes out later (the copy is the error feedback). A
    lossless codec makes x̂ = x and the mix plain gossip's, up to rounding.
    """
    own = compression.copy(f"{key}/{partner}/own", mine)
    other = compression.copy(f"{key}/{partner}/other", mine)
    encoded = compression.encode(mine - own)
    sent = encoded.to_bytes()
    received = torch.empty_like(sent)
    comm.exchange(sent, received, partner)
    own.add_(compression.decode(encoded))
    other.add_(compression.decode(encoded.like(received)))
    return other - own


def low_rank_indices(shapes: list[torch.Size], rank: int) -> list[int]:
    """The payloads PowerSGD sends as P Qᵀ: matrices (viewed as rows × the rest) whose rank-``rank``
    factors are smaller than they are; the others travel as they are."""
    return [i for i, s in enumerate(shapes) if len(s) >= 2 and rank < min(s[0], math.prod(s) // s[0])]


def power_floats(shapes: list[torch.Size], rank: int) -> tuple[int, int]:
    """Floats in PowerSGD's two all-reduces per step: P (rows × rank per matrix, plus the payloads
    sent as they are) and Q (columns × rank per matrix)."""
    low = set(low_rank_indices(shapes, rank))
    p = sum(s[0] * rank if i in low else math.prod(s) for i, s in enumerate(shapes))
    q = sum(math.prod(s) // s[0] * rank for i, s in enumerate(shapes) if i in low)
    return p, q


@torch.no_grad()
def power_sum(comm: Comm, compression: Compression, key: str, tensor: torch.Tensor,
              shapes: list[torch.Size]) -> Done:
    """PowerSGD (Vogels et al., 2019) over the parameters laid end to end in ``tensor``: each matrix
    M = g_i + e_i (error feedback) becomes P Q^T with P = orth(Σ_i M_i Q), Q = Σ_i M_i^T P, two
    all-reduces of every P then every Q; vectors and matrices too small to gain are all-reduced as
    they are, with the first ``start`` steps' whole payload. Q warm-starts from the last step;
    e_i = M_i − P Q^T. As torch's ``powerSGD_hook``, written over our comm."""
    codec, memory = compression.codec, compression.copies
    steps = memory.setdefault(f"{key}/steps", torch.zeros((), dtype=torch.int64))
    steps += 1
    if int(steps) <= codec.start:
        comm.all_reduce_(tensor)
        return Done()
    with compression.timed():
        views, offset = [], 0
        for shape in shapes:
            n = math.prod(shape)
            views.append(tensor[offset:offset + n])
            offset += n
        low = low_rank_indices(shapes, codec.rank)
        dense = [i for i in range(len(views)) if i not in low]
        matrices, qs = [], []
        for i in low:
            m = views[i].view(shapes[i][0], -1)
            residual = compression.copy(f"{key}/e{i}", m)
            matrices.append(m + residual)
            if f"{key}/q{i}" not in memory:  # the same on every rank: a shared seed
                gen = torch.Generator().manual_seed(codec.seed * 1_000_003 + i)
                memory[f"{key}/q{i}"] = torch.randn(m.shape[1], codec.rank, generator=gen).to(m.device)
            qs.append(memory[f"{key}/q{i}"])
        ps = torch.cat([(m @ q).reshape(-1) for m, q in zip(matrices, qs)] +
                       [views[i] for i in dense])
    comm.all_reduce_(ps)
    with compression.timed():
        offset, p_list = 0, []
        for m in matrices:
            n = m.shape[0] * codec.rank
            p_list.append(torch.linalg.qr(ps[offset:offset + n].view(m.shape[0], codec.rank)).Q)
            offset += n
        for i in dense:
            views[i].copy_(ps[offset:offset + views[i].numel()])
            offset += views[i].numel()
        q_flat = torch.cat([(m.T @ p).reshape(-1) for m, p in zip(matrices, p_list)]) if matrices else None
    if q_flat is None:
        return Done()
    comm.all_reduce_(q_flat)
    with compression.timed():
        offset = 0
        for i, m, p in zip(low, matrices, p_list):
            n = m.shape[1] * codec.rank
            q = q_flat[offset:offset + n].view(m.shape[1], codec.rank)
            offset += n
            approx = p @ q.T
            memory[f"{key}/q{i}"] = q.clone()
            memory[f"{key}/e{i}"] = m - approx
            views[i].copy_(approx.reshape(-1))
    return Done()
