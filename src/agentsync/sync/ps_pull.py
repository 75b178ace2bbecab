"""Compressed pulls: a parameter server answers with the change of its shard since the worker's copy.

Both sides keep, per (server, worker) pair, the copy of the shard that the worker holds: the worker's
model *is* its copy, the server keeps one per worker (:class:`PullSender`). An answer is
encode(shard − copy); both sides add its decoding to their copy, bit for bit the same, so what the
codec drops stays in shard − copy and goes out with a later answer: the pull's error feedback, exact
by construction (CHOCO's public copies, :meth:`~agentsync.sync.compressed.Channel.encode_change`).
The final model delivered with DONE stays dense and exact. A server holds W copies of its shard.

Pulls carry parameter changes, not gradients: DGC's options are refused; so are ``randk`` (its indices
would have to be drawn alike on both sides) and ``powersgd`` (a two-round all-reduce over matrices).
"""
from __future__ import annotations

import torch
from torch import nn

from agentsync.compress import CODECS, Compression, dgc_options, is_none, option_keys, parse_codec
from agentsync.errors import ConfigError
from agentsync.sync.compressed import Channel
from agentsync.sync.ps_protocol import flat, unflat_

REFUSED = {"randk": "its indices would have to be drawn alike by server and worker; not built",
           "powersgd": "it is a two-round all-reduce over gradient matrices, not a per-message encoding"}
HELD = "held"
"""The name of the worker's copy in a pull channel's :class:`~agentsync.compress.Compression`."""


def check_pull_codec(spec: str, field: str) -> None:
    """Raise a one-line :class:`ConfigError` where ``spec`` is no codec for a pull."""
    if is_none(spec):
        return
    parse_codec(spec, field)
    able = ", ".join(c for c in CODECS if c not in REFUSED)
    name = spec.strip().split(":")[0]
    if name in REFUSED:
        raise ConfigError(f"{field}={spec} is not supported for a pull ({REFUSED[name]}); codecs that work: {able}")
    options = dgc_options(spec)
    if options:
        raise ConfigError(f"{field}={spec}: {options[0]}= is not supported for a pull (DGC's options act on gradients; "
                          f"a pull sends parameter changes); drop it, e.g. {name}:ratio=R")
    if "decay" in option_keys(spec):
        raise ConfigError(f"{field}={spec}: decay= is not supported for a pull (its error feedback is the copy both "
                          "sides keep, not a residual); drop it")


class PullSender:
    """A server's side: one channel per worker, holding the copy of this shard that worker holds.

    Args:
        spec: the codec (``strategy.pull_compression``).
        shard: this server's shard as a flat vector now (every worker starts holding it).
        workers: how many workers it answers.
        seed_base: worker w's channel draws stochastic rounding from stream ``seed_base + w``, its
            own, so the answers do not depend on the order the workers are answered in.
        stats: the byte meter whose ``codec_time_s`` counts encoding.
        state: the saved copies and generators of a resumed run.
    """

    def __init__(self, spec: str, shard: torch.Tensor, workers: int, seed_base: int, stats,
                 state: dict | None = None) -> None:
        self.channels = [Channel(Compression(parse_codec(spec, rank=seed_base + w), stats), shard.numel(), shard.device)
                         for w in range(workers)]
        for channel in self.channels:
            channel.compression.copies[HELD] = shard.clone()
        if state:
            self.load_state_dict(state)

    def encode(self, worker: int, shard: torch.Tensor) -> torch.Tensor:
        """The answer to ``worker``: encode(shard − its copy), as float32 slots; the copy takes the decoding."""
        return self.channels[worker].encode_change(HELD, shard)

    def held(self, worker: int) -> torch.Tensor:
        """What ``worker`` holds of this shard; ``shard − held`` is what is still to send."""
        return self.channels[worker].compression.copies[HELD]

    def state_dict(self) -> dict:
        return {"channels": [c.compression.state_dict() for c in self.channels]}

    def load_state_dict(self, state: dict) -> None:
        for channel, saved in zip(self.channels, state["channels"], strict=True):
            channel.compression.load_state_dict(saved)


class PullReceiver:
    """A worker's side: one channel per server; an answer's decoding is added to the shard in place."""

    def __init__(self, spec: str, numels: list[int], device: torch.device, stats) -> None:
        self.channels = [Channel(Compression(parse_codec(spec), stats), n, device) for n in numels]

    def slots(self, server: int) -> int:
        """Float32 slots of an answer from ``server``."""
        return self.channels[server].slots

    @torch.no_grad()
    def take_(self, server: int, shard: list[nn.Parameter], reply: torch.Tensor) -> None:
        """Add the decoded change to ``shard``, as the server adds it to its copy (a non-finite one to neither)."""
        change = self.channels[server].decode(reply)
        if bool(torch.isfinite(change).all()):
            unflat_(shard, flat(shard, change.device) + change)
