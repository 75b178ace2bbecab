"""Injected stragglers and faults, for experiments and tests of what a strategy survives.

``comm.straggler`` makes a rank sleep every step (slow compute); ``comm.fault`` kills, hangs or
poisons a rank at a given step. Both act in the training loop, before the rank's backward, so a
NaN fault is a NaN loss whose gradient no strategy has transported yet.
"""
from __future__ import annotations

import os
import signal
import time

import torch

from agentsync.errors import ConfigError
from agentsync.options import check, choice

FAULT_KINDS = ("kill", "hang", "nan")


def parse_stragglers(spec: str) -> dict[int, float]:
    """``"1:0.2,3:0.5"`` -> ``{1: 0.2, 3: 0.5}``."""
    out: dict[int, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            rank, seconds = item.split(":")
            out[int(rank)] = float(seconds)
        except ValueError:
            raise ConfigError(f"straggler must be RANK:SECONDS[,RANK:SECONDS] (got {spec!r})") from None
        check(out[int(rank)] >= 0 and int(rank) >= 0, "straggler", "RANK >= 0 and SECONDS >= 0", spec)
    return out


def parse_faults(spec: str) -> dict[int, tuple[str, int]]:
    """``"1:kill@20"`` -> ``{1: ("kill", 20)}``."""
    out: dict[int, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            rank, rest = item.split(":")
            kind, step = rest.split("@")
            out[int(rank)] = (kind, int(step))
        except ValueError:
            raise ConfigError(f"comm.fault must be RANK:KIND@STEP with KIND in {', '.join(FAULT_KINDS)} (got {spec!r})") from None
        choice(kind, "comm.fault kind", FAULT_KINDS)
    return out


class Faults:
    """One rank's view of the configured stragglers and faults."""

    def __init__(self, straggler: str = "", fault: str = "") -> None:
        self.stragglers = parse_stragglers(straggler)
        self.faults = parse_faults(fault)

    def straggle(self, rank: int) -> None:
        """Sleep ``rank``'s straggler delay (simulated slow compute; not communication time)."""
        delay = self.stragglers.get(rank, 0.0)
        if delay:
            time.sleep(delay)

    def inject(self, rank: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Carry out ``rank``'s fault when ``step`` is reached: kill, hang, or return a NaN loss."""
        kind, at = self.faults.get(rank, ("", -1))
        if step != at:
            return loss
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "hang":
            time.sleep(10 ** 6)
        return loss * float("nan") if kind == "nan" else loss
