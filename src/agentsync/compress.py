"""Gradient and pseudo-gradient compression: codecs, and error feedback that keeps what they drop.

A :class:`Codec` turns a dense tensor into an :class:`Encoded` payload (a few tensors: values,
indices, scales) and back. Codecs are named by a spec string, as strategies are in ``compare``:
``NAME[:KEY=VALUE...]``, e.g. ``topk:ratio=0.01`` or ``qsgd:bits=4``. A *linear* codec's payloads
can be summed while encoded (fp16, bf16: the transport all-reduces them); the others travel by
all-gather and every rank decodes each payload and sums.

:class:`ErrorFeedback` holds one tensor's residual, what compression dropped so far, and adds it
to the next input (Seide et al., 2014; Karimireddy et al., 2019), so nothing is lost for good:
after T steps, sum of inputs = sum of decoded payloads + residual. :class:`Compression` is a
strategy's codec with one error-feedback memory per payload it sends, checkpointable.

On gradient transports top-k takes Deep Gradient Compression's tricks (Lin et al., 2018) as options,
``topk:ratio=0.001:momentum=0.9:clip=1.0:warmup=200``: :class:`DGC` holds them and
:class:`MomentumFeedback`, top-k's memory then, applies momentum correction with factor masking
and an exponential warm-up of the kept ratio; the strategy applies local clipping, to the worker's
whole gradient (:func:`local_clip_norm`).

Example::

    codec = parse_codec("topk:ratio=0.01")
    feedback = ErrorFeedback(codec)
    encoded = feedback.compress(grad)          # top 1% of grad + residual
    codec.nbytes(encoded)                      # what goes on the wire: values and indices
    dense = codec.decode(encoded)
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch

from agentsync.errors import ConfigError

__all__ = ["CODECS", "DGC", "Codec", "Compression", "Encoded", "ErrorFeedback", "MomentumFeedback", "dgc_options",
           "is_none", "local_clip_norm", "option_keys", "parse_codec"]


@dataclasses.dataclass
class Encoded:
    """A compressed tensor: ``tensors`` go on the wire; ``shape`` and ``dtype`` every rank knows."""

    tensors: dict[str, torch.Tensor]
    shape: torch.Size
    dtype: torch.dtype
    shared: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """What every rank derives alike and so does not travel (random-k's indices)."""

    def to_bytes(self) -> torch.Tensor:
        """The payload as one uint8 vector, so it travels as one message."""
        return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in self.tensors.values()])

    def like(self, data: torch.Tensor) -> "Encoded":
        """Another rank's payload, from its :meth:`to_bytes`; shapes are this one's (equal on every rank)."""
        tensors, offset = {}, 0
        for key, t in self.tensors.items():
            n = t.numel() * t.element_size()
            tensors[key] = data[offset:offset + n].clone().view(t.dtype).view(t.shape)  # clone: aligned
            offset += n
        return Encoded(tensors, self.shape, self.dtype, self.shared)


class Codec:
    """Encode a dense tensor into a smaller payload and decode it back.

    Attributes:
        linear: payloads can be summed while encoded (decode(a + b) = decode(a) + decode(b)).
        sparse: the payload carries a subset of the coordinates.
    """

    name = "none"
    linear = True
    sparse = False
    decay = 1.0
    """Error feedback's β: the residual is scaled by it before it joins the next input (1: plain error
    feedback; below 1: SparseLoCo's decayed accumulator, which stands in for an outer momentum)."""

    def encode(self, x: torch.Tensor) -> Encoded:
        return Encoded({"values": x.detach().clone()}, x.shape, x.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        return encoded.tensors["values"].to(encoded.dtype).view(encoded.shape)

    def nbytes(self, encoded: Encoded) -> int:
        """Exact bytes of the payload on the wire (what the byte meter counts)."""
        return sum(t.numel() * t.element_size() for t in encoded.tensors.values())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Cast(Codec):
    """fp16 / bf16: half the bytes; payloads sum in reduced precision (linear)."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.low = name, dtype

    def encode(self, x: torch.Tensor) -> Encoded:
        return Encoded({"values": x.detach().to(self.low)}, x.shape, x.dtype)


class Seeded(Codec):
    """A codec that draws random numbers from its own generator (checkpointed for exact resume)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit codes (``bits`` divides 8), 8 // bits to a byte."""
    per = 8 // bits
    flat = torch.nn.functional.pad(codes.reshape(-1).to(torch.uint8), (0, -codes.numel() % per))
    shifts = torch.arange(per, dtype=torch.uint8, device=codes.device) * bits
    return (flat.view(-1, per) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8, device=packed.device) * bits
    return ((packed.view(-1, 1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]


class QSGD(Seeded):
    """``bits``-bit levels with stochastic rounding (unbiased), one fp32 scale (max |x|) per chunk;
    ``seed`` is the rank's own (see :func:`parse_codec`)."""

    linear = False

    def __init__(self, bits: int, chunk: int, seed: int) -> None:
        super().__init__(seed)
        self.name, self.bits, self.chunk = f"qsgd:bits={bits}", bits, chunk
        self.levels = (1 << (bits - 1)) - 1  # levels -L..L, coded as 0..2L

    def encode(self, x: torch.Tensor) -> Encoded:
        flat = x.detach().reshape(-1).float()
        chunks = torch.nn.functional.pad(flat, (0, -flat.numel() % self.chunk)).view(-1, self.chunk)
        scales = chunks.abs().amax(dim=1)
        scaled = chunks / scales.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1) * self.levels
        noise = torch.rand(scaled.shape, generator=self.generator).to(scaled.device)
        levels = torch.floor(scaled + noise).clamp_(-self.levels, self.levels)
        codes = (levels + self.levels).reshape(-1)[:flat.numel()]
        return Encoded({"codes": pack(codes, self.bits), "scales": scales}, x.shape, x.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        n = math.prod(encoded.shape)
        codes = unpack(encoded.tensors["codes"], self.bits, n).float() - self.levels
        codes = torch.nn.functional.pad(codes, (0, -n % self.chunk)).view(-1, self.chunk)
        values = codes * (encoded.tensors["scales"] / self.levels).unsqueeze(1)
        return values.reshape(-1)[:n].to(encoded.dtype).view(encoded.shape)


class Sign(Codec):
    """1 bit per coordinate, scaled by mean |x| (signSGD with a scale; biased, needs error feedback)."""

    name, linear = "sign", False

    def encode(self, x: torch.Tensor) -> Encoded:
        flat = x.detach().reshape(-1)
        scale = flat.abs().mean().float().reshape(1)
        return Encoded({"signs": pack(flat >= 0, 1), "scale": scale}, x.shape, x.dtype)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        signs = unpack(encoded.tensors["signs"], 1, math.prod(encoded.shape)).float() * 2 - 1
        return (signs * encoded.tensors["scale"]).to(encoded.dtype).view(encoded.shape)


def kept(ratio: float, n: int) -> int:
    """Coordinates a sparse codec keeps out of ``n``: at least one."""
    return max(1, min(n, int(math.ceil(ratio * n))))


@dataclasses.dataclass(frozen=True)
class DGC:
    """Deep Gradient Compression's tricks for top-k (Lin et al., 2018), each off unless given; they act
    in :class:`MomentumFeedback`, on gradient payloads only (see :func:`dgc_options`).

    Attributes:
        momentum: momentum correction: the worker accumulates its velocity u ← m·u + g rather than g,
            so the optimizer must not apply momentum again (0: off).
        masking: momentum-factor masking (with momentum): a sent coordinate's velocity is zeroed too,
            so it does not keep pushing a direction already applied. Off, ratio 1 is exactly SGD with
            momentum m; on, ratio 1 zeroes u every step and is SGD without momentum.
        clip: local clipping: each worker clips its whole gradient to clip · W^(−1/2) before it is
            encoded and enters the accumulation (0: off; the strategy clips, see :func:`local_clip_norm`).
        warmup: steps over which the kept ratio decays exponentially from ``warmup_from`` (0: off).
        warmup_from: the kept ratio at step 0 of the warm-up (DGC: 25 %).
    """

    momentum: float = 0.0
    masking: bool = True
    clip: float = 0.0
    warmup: int = 0
    warmup_from: float = 0.25

    @property
    def active(self) -> bool:
        return bool(self.momentum or self.clip or self.warmup)

    def ratio_at(self, step: int, ratio: float) -> float:
        """The kept ratio at ``step`` (from 0): start · (ratio / start)^(step / warmup), then ``ratio``."""
        if step >= self.warmup:
            return ratio
        return self.warmup_from * (ratio / self.warmup_from) ** (step / self.warmup)


DGC_OPTIONS = ("momentum", "masking", "clip", "warmup", "warmup_from")


def option_keys(spec: str) -> list[str]:
    """The options a codec spec sets, in the spec's order."""
    return [item.partition("=")[0].strip() for item in (spec or "").strip().split(":")[1:]]


def dgc_options(spec: str) -> list[str]:
    """The DGC options a codec spec sets (they need a gradient transport), in the spec's order."""
    return [k for k in option_keys(spec) if k in DGC_OPTIONS]


def index_bits(n: int) -> int:
    """Bits an index into ``n`` coordinates needs: ⌈log₂ n⌉ (at least one)."""
    return max(1, (n - 1).bit_length())


def pack_indices(index: torch.Tensor, n: int) -> torch.Tensor:
    """Indices into ``n`` coordinates at :func:`index_bits` (n) bits each, bit-packed."""
    width = index_bits(n)
    return pack((index.unsqueeze(1) >> torch.arange(width, device=index.device)) & 1, 1)


def unpack_indices(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    width = index_bits(n)
    bits = unpack(packed, 1, k * width).view(k, width).long()
    return (bits << torch.arange(width, device=packed.device)).sum(dim=1)


class TopK(Codec):
    """The ``ratio`` largest-magnitude coordinates (biased): how many (int32), their indices packed
    at ⌈log₂ n⌉ bits each, and their values, in fp32 or, with ``bits`` 2, 4 or 8, rounded to that
    many bits on one scale, max |value| (SparseLoCo's top-k with low-bit values; error feedback
    keeps the rounding). ``dgc``: the Deep Gradient Compression tricks its error feedback applies
    (:class:`MomentumFeedback`)."""

    linear, sparse = False, True

    def __init__(self, ratio: float, dgc: DGC = DGC(), bits: int = 32) -> None:
        self.name = f"topk:ratio={ratio:g}" + (f":bits={bits}" if bits != 32 else "")
        self.ratio, self.dgc, self.bits = ratio, dgc, bits
        self.levels = (1 << (bits - 1)) - 1  # values -L..L times scale / L, coded as 0..2L

    def encode(self, x: torch.Tensor, ratio: float | None = None) -> Encoded:
        """The top ``ratio`` (default: the codec's) of x; a warm-up passes the step's ratio."""
        flat = x.detach().reshape(-1)
        k = kept(self.ratio if ratio is None else ratio, flat.numel())
        index = flat.abs().topk(k, sorted=False).indices
        values = flat[index]
        tensors = {"kept": torch.tensor([k], dtype=torch.int32, device=flat.device),
                   "indices": pack_indices(index, flat.numel())}
        if self.bits == 32:
            tensors["values"] = values
        else:
            scale = values.abs().amax().float().reshape(1)
            codes = torch.round(values.float() / scale.clamp_min(torch.finfo(torch.float32).tiny) * self.levels)
            tensors.update(codes=pack(codes + self.levels, self.bits), scale=scale)
        return Encoded(tensors, x.shape, x.dtype)

    def indices(self, encoded: Encoded) -> torch.Tensor:
        """The flat coordinates a payload carries."""
        return unpack_indices(encoded.tensors["indices"], math.prod(encoded.shape), int(encoded.tensors["kept"]))

    def decode(self, encoded: Encoded) -> torch.Tensor:
        index, tensors = self.indices(encoded), encoded.tensors
        if self.bits == 32:
            values = tensors["values"]
        else:
            codes = unpack(tensors["codes"], self.bits, index.numel()).float() - self.levels
            values = codes * (tensors["scale"] / self.levels)
        dense = torch.zeros(math.prod(encoded.shape), dtype=encoded.dtype, device=index.device)
        dense[index] = values.to(encoded.dtype)
        return dense.view(encoded.shape)


class RandK(Seeded):
    """``ratio`` of the coordinates drawn at random, the same on every rank (one shared seed), so
    only the values travel; unscaled (biased, like top-k, and meant for error feedback)."""

    linear, sparse = False, True

    def __init__(self, ratio: float, seed: int) -> None:
        super().__init__(seed)
        self.name, self.ratio = f"randk:ratio={ratio:g}", ratio

    def encode(self, x: torch.Tensor) -> Encoded:
        flat = x.detach().reshape(-1)
        index = torch.randperm(flat.numel(), generator=self.generator)[:kept(self.ratio, flat.numel())]
        index = index.to(flat.device)
        return Encoded({"values": flat[index]}, x.shape, x.dtype, {"indices": index})

    def decode(self, encoded: Encoded) -> torch.Tensor:
        values = encoded.tensors["values"]
        dense = torch.zeros(math.prod(encoded.shape), dtype=encoded.dtype, device=values.device)
        dense[encoded.shared["indices"]] = values.to(encoded.dtype)
        return dense.view(encoded.shape)


class PowerSGD(Codec):
    """Rank-``rank`` approximation of each gradient matrix, P Q^T (Vogels et al., 2019): the transport
    all-reduces P = M Q, orthogonalises it, all-reduces Q = M^T P (see
    :func:`agentsync.sync.compressed.power_sum`); Q is kept for the next step (warm start), and the
    first ``start`` steps are plain all-reduces. Needs the payload's matrix shapes, so only the
    all-reduce strategy (per bucket, per parameter) takes it; not a per-tensor encode/decode."""

    linear, low_rank = True, True

    def __init__(self, rank: int, start: int, seed: int) -> None:
        self.name, self.rank, self.start, self.seed = f"powersgd:rank={rank}", rank, start, seed

    def encode(self, x: torch.Tensor) -> Encoded:
        raise TypeError("powersgd is a two-round transport, not a per-tensor encoding (see power_sum)")

    decode = encode


CODECS = ("none", "fp16", "bf16", "int8", "qsgd", "sign", "topk", "randk", "powersgd")
FEEDBACK_OPTIONS = ("decay",)
"""Options of a codec's error feedback: every codec but ``none`` and ``powersgd`` (which keeps its own)."""
OPTIONS = {"none": (), "fp16": FEEDBACK_OPTIONS, "bf16": FEEDBACK_OPTIONS, "sign": FEEDBACK_OPTIONS,
           "int8": ("chunk", "seed", *FEEDBACK_OPTIONS), "qsgd": ("bits", "chunk", "seed", *FEEDBACK_OPTIONS),
           "topk": ("ratio", "bits", *DGC_OPTIONS, *FEEDBACK_OPTIONS), "randk": ("ratio", "seed", *FEEDBACK_OPTIONS),
           "powersgd": ("rank", "start", "seed")}


def is_none(spec: str) -> bool:
    """True for the codec ``none``: no codec stage at all, today's uncompressed path."""
    return spec.strip() in ("", "none")


def parse_codec(spec: str, field: str = "comm.compression", *, rank: int = 0) -> Codec:
    """A codec from ``NAME[:KEY=VALUE...]``; a bad spec raises a one-line :class:`ConfigError`.

    ``rank`` gives stochastic rounding its own stream on each rank (errors independent, so
    averaging shrinks them); random-k's stream is the same on every rank (same indices)."""
    name, *items = (spec or "none").strip().split(":")
    if name not in OPTIONS:
        raise ConfigError(f"{field}: unknown codec {name!r}; available: {', '.join(CODECS)}")
    opts: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in OPTIONS[name]:
            allowed = ", ".join(OPTIONS[name]) or "none"
            raise ConfigError(f"{field}: {spec!r}: bad option {item!r} for {name} (options: {allowed})")
        opts[key.strip()] = value.strip()
    try:
        codec = build_codec(name, opts, rank)
        if "decay" in opts:
            codec.decay = number(opts, "decay", float, 1.0, lambda v: 0 < v <= 1, "in (0, 1]")
        return codec
    except ValueError as e:
        raise ConfigError(f"{field}: {spec!r}: {e}") from None


def number(opts: dict, key: str, kind: type, default, ok, allowed: str):
    try:
        value = kind(opts.get(key, default))
    except ValueError:
        raise ValueError(f"{key} must be {allowed} (got {opts[key]!r})") from None
    if not ok(value):
        raise ValueError(f"{key} must be {allowed} (got {opts[key]!r})")
    return value


def build_codec(name: str, opts: dict, rank: int) -> Codec:
    seed = number(opts, "seed", int, 0, lambda v: v >= 0, "an int >= 0")
    if name == "none":
        return Codec()
    if name in ("fp16", "bf16"):
        return Cast(name, torch.float16 if name == "fp16" else torch.bfloat16)
    if name in ("int8", "qsgd"):
        bits = 8 if name == "int8" else number(opts, "bits", int, 4, lambda v: v in (2, 4, 8), "2, 4 or 8")
        chunk = number(opts, "chunk", int, 1024, lambda v: v >= 1, "an int >= 1")
        return QSGD(bits, chunk, seed * 1_000_003 + rank)
    if name == "sign":
        return Sign()
    if name == "powersgd":
        return PowerSGD(number(opts, "rank", int, 2, lambda v: v >= 1, "an int >= 1"),
                        number(opts, "start", int, 0, lambda v: v >= 0, "an int >= 0"), seed)
    ratio = number(opts, "ratio", float, 0.01, lambda v: 0 < v <= 1, "in (0, 1]")
    if name == "randk":
        return RandK(ratio, seed)
    bits = number(opts, "bits", int, 32, lambda v: v in (2, 4, 8, 32), "2, 4, 8 or 32")
    return TopK(ratio, build_dgc(opts, ratio), bits)


def build_dgc(opts: dict, ratio: float) -> DGC:
    """DGC's options; each is off unless given, and a given one must be on (no silent no-op)."""
    def optional(key: str, kind: type, ok, allowed: str):
        return number(opts, key, kind, 0, ok, allowed) if key in opts else kind(0)

    warmup = optional("warmup", int, lambda v: v >= 1, "an int >= 1")
    if "warmup_from" in opts and not warmup:
        raise ValueError("warmup_from needs warmup=STEPS (the steps the ratio decays over)")
    if "masking" in opts and "momentum" not in opts:
        raise ValueError("masking acts on the velocity of momentum correction: it needs momentum=M")
    if opts.get("masking", "on") not in ("on", "off"):
        raise ValueError(f"masking must be on or off (got {opts['masking']!r})")
    start = number(opts, "warmup_from", float, 0.25, lambda v: 0 < v <= 1, "in (0, 1]")
    if warmup and start <= ratio:
        raise ValueError(f"warmup decays the kept ratio from warmup_from={start:g} down to ratio={ratio:g}: "
                         "warmup_from must be above ratio")
    return DGC(momentum=optional("momentum", float, lambda v: 0 < v < 1, "in (0, 1)"),
               masking=opts.get("masking", "on") == "on",
               clip=optional("clip", float, lambda v: v > 0, "> 0"), warmup=warmup, warmup_from=start)


class ErrorFeedback:
    """One tensor's residual: what compression has dropped so far, added back to the next input."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.residual: torch.Tensor | None = None

    def compress(self, x: torch.Tensor) -> Encoded:
        """Encode x + residual; the residual becomes what that encoding dropped.

        A non-finite input leaves the residual as it was: its payload is non-finite, the step
        contract skips that step on every rank, and a NaN kept here would poison every later one.
        """
        corrected = x.detach() if self.residual is None else x.detach() + self.decayed()
        encoded = self.codec.encode(corrected)
        residual = corrected - self.codec.decode(encoded)
        if bool(torch.isfinite(residual).all()):
            self.residual = residual
        return encoded

    def decayed(self) -> torch.Tensor:
        """The residual times the codec's decay β (as it is, bit for bit, at β = 1)."""
        return self.residual if self.codec.decay == 1 else self.residual * self.codec.decay

    def state_dict(self) -> dict:
        return {"residual": None if self.residual is None else self.residual.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.residual = state["residual"]


def masked(x: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """A copy of x, zero at the flat indices ``sent``."""
    out = x.clone()
    out.view(-1)[sent] = 0
    return out


class MomentumFeedback(ErrorFeedback):
    """Top-k's memory for one gradient payload under DGC (Lin et al., 2018; :class:`DGC`).

    Each step (the payload g already clipped by the strategy, DGC's local clipping over the worker's
    whole gradient: see :func:`local_clip_norm`) the velocity becomes u ← m·u + g and the
    accumulation v ← β v + u (``residual``; β the codec's decay, 1 by default); top-k of v is sent,
    at the step's warm-up ratio, and v keeps what was not sent (zero where a value went in fp32, its
    rounding under ``bits``), u is zeroed where a value was sent under momentum-factor masking (a
    sent coordinate's momentum is spent, so it does not push a stale direction later). So at β = 1,
    Σ sent + v = Σ_t u_t. With m = 0 this is plain error feedback. A non-finite input leaves u and v
    as they were (the step is skipped on every rank); the step clock advances all the same, so every
    rank keeps the same k.
    """

    def __init__(self, codec: TopK) -> None:
        super().__init__(codec)
        self.velocity: torch.Tensor | None = None
        self.steps = 0

    def compress(self, x: torch.Tensor) -> Encoded:
        dgc = self.codec.dgc
        ratio = dgc.ratio_at(self.steps, self.codec.ratio)
        self.steps += 1
        g = x.detach()
        velocity = g if self.velocity is None else dgc.momentum * self.velocity + g
        accumulation = velocity if self.residual is None else self.decayed() + velocity
        encoded = self.codec.encode(accumulation, ratio)
        if bool(torch.isfinite(accumulation).all()):
            self.velocity = masked(velocity, self.codec.indices(encoded)) if dgc.masking else velocity.clone()
            self.residual = accumulation - self.codec.decode(encoded)  # zero where sent exactly (fp32 values)
        return encoded

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": self.steps,
                "velocity": None if self.velocity is None else self.velocity.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.velocity, self.steps = state["velocity"], int(state["steps"])


def local_clip_norm(codec: Codec, workers: int, payload_scale: float = 1.0) -> float:
    """DGC's local clipping threshold for one worker's whole gradient payload: clip · W^(−1/2) (so W
    independent clipped gradients sum to about ``clip``), times what the gradient is scaled by in the
    payload (allreduce sends g_i / W); 0 where the codec does not clip. The strategy clips, over all
    the payloads of a step (every bucket, every server shard), before they are encoded."""
    dgc = getattr(codec, "dgc", None)
    return dgc.clip * workers ** -0.5 * payload_scale if dgc is not None and dgc.clip else 0.0


class Compression:
    """A strategy's codec and one error-feedback memory per payload it sends (a bucket, the flat
    parameters), created on first use; checkpointed with the strategy so resume is exact.

    ``copies`` holds other tensors a transport keeps between steps: CHOCO gossip's public copies
    (:func:`agentsync.sync.compressed.choco_exchange`: the copy is the memory, x − x̂ what is still
    to send), PowerSGD's warm-start Q and residuals (:func:`agentsync.sync.compressed.power_sum`)."""

    def __init__(self, codec: Codec, stats=None) -> None:
        self.codec, self.stats = codec, stats
        """``stats``: a :class:`~agentsync.comm.CommStats` whose ``codec_time_s`` gets the encode/decode time."""
        self.feedback: dict[str, ErrorFeedback] = {}
        self.copies: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def timed(self):
        """Count the time inside as encoding/decoding (compute, not communication)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.stats is not None:
                self.stats.codec_time_s += time.perf_counter() - start

    def encode(self, x: torch.Tensor) -> Encoded:
        with self.timed():
            return self.codec.encode(x)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        with self.timed():
            return self.codec.decode(encoded)

    def copy(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """The public copy named ``key``, zeros (shaped as ``like``) until something is sent into it."""
        if key not in self.copies:
            self.copies[key] = torch.zeros_like(like)
        return self.copies[key]

    def new_feedback(self) -> ErrorFeedback:
        """A payload's memory: DGC's (velocity, accumulation, step clock) where top-k has DGC options."""
        dgc = getattr(self.codec, "dgc", None)
        if dgc is not None and dgc.active:
            return MomentumFeedback(self.codec)
        return ErrorFeedback(self.codec)

    def compress(self, key: str, x: torch.Tensor) -> Encoded:
        if key not in self.feedback:
            self.feedback[key] = self.new_feedback()
        with self.timed():
            return self.feedback[key].compress(x)

    def state_dict(self) -> dict:
        return {"codec": self.codec.state_dict(),
                "feedback": {k: f.state_dict() for k, f in self.feedback.items()},
                "copies": {k: c.clone() for k, c in self.copies.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.codec.load_state_dict(state["codec"])
        for key, saved in state["feedback"].items():
            self.feedback.setdefault(key, self.new_feedback()).load_state_dict(saved)
        self.copies = {k: c.clone() for k, c in state.get("copies", {}).items()}
