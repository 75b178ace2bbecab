"""A simulated network for experiments on one machine: the α–β cost of every message and collective."""
from __future__ import annotations

import dataclasses
import math
import re

from agentsync.errors import ConfigError
from agentsync.options import check

UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6,
         "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
         "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9}


@dataclasses.dataclass(frozen=True)
class NetSim:
    """An α–β link: a message of B bytes takes ``latency_s + B / bandwidth_Bps`` to arrive.

    Collectives take the time their algorithm would on such links: a ring all-reduce 2 (W−1)
    rounds of one 1/W-sized chunk (a two-rank exchange, timed as the all-gather it is: one round),
    a ring all-gather W−1 rounds of one block, an all-to-all W−1 blocks of 1/W of the tensor, a
    binomial-tree broadcast ⌈log2 W⌉ rounds of the whole tensor. Links are full duplex and independent (no
    contention). The delay adds to the real (loopback) transfer, less any compute the operation
    overlapped: an all-reduce bucket launched during backward hides part of its delay, as it
    would on a real network.
    """

    latency_s: float = 0.0
    bandwidth_Bps: float = float("inf")

    @classmethod
    def parse(cls, spec: str) -> "NetSim | None":
        """``"latency=2ms,bandwidth=1Gbit"`` (per second); empty means no simulation."""
        if not spec.strip():
            return None
        values = {}
        for item in spec.split(","):
            key, _, value = (part.strip().lower() for part in item.partition("="))
            value = value.replace("bps", "bit")  # 100Mbps: megabits
            match = re.fullmatch(r"([0-9.]+(?:e-?[0-9]+)?)\s*([a-z]*?)(?:ps|/s)?", value)
            unit = match and (match.group(2) or ("s" if key == "latency" else "b"))
            if not match or unit not in UNITS:
                raise ConfigError(f"comm.net must be latency=<n>ms,bandwidth=<n>Gbit (got {spec!r})")
            values[key] = float(match.group(1)) * UNITS[unit]
        unknown = set(values) - {"latency", "bandwidth"}
        check(not unknown and values.get("bandwidth", 1) > 0 and values.get("latency", 0) >= 0, "comm.net",
              "latency=<n>ms,bandwidth=<n>Gbit with latency >= 0 and bandwidth > 0", spec)
        return cls(values.get("latency", 0.0), values.get("bandwidth", float("inf")))

    def message(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps

    def all_reduce(self, nbytes: float, n: int) -> float:
        return 2 * (n - 1) * self.message(nbytes / n)

    def all_gather(self, nbytes: float, n: int) -> float:
        return (n - 1) * self.message(nbytes)

    def all_to_all(self, nbytes: float, n: int) -> float:
        """n − 1 blocks of nbytes / n, one to each other rank, over this rank's one link."""
        return (n - 1) * self.message(nbytes / n)

    def gather(self, nbytes: float, n: int) -> float:
        """The root receives n-1 payloads over its one link."""
        return (n - 1) * self.message(nbytes)

    def broadcast(self, nbytes: float, n: int) -> float:
        return math.ceil(math.log2(n)) * self.message(nbytes) if n > 1 else 0.0


