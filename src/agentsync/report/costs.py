"""advise's cost model: what one worker step of each strategy costs on an α–β network.

It lives beside the strategies rather than on them (a strategy only synchronizes); one function
per strategy, looked up by registry name. Each returns the seconds a worker waits on the network
per step (not hidden by compute) and the bytes it sends, averaged over a strategy's period.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from agentsync.comm import sums_by_exchange
from agentsync.netsim import NetSim
from agentsync.sync.ps_protocol import HEADER_BYTES


@dataclasses.dataclass(frozen=True)
class StepCost:
    """What one worker step costs in communication under an α–β network (see :class:`NetSim`)."""

    seconds: float = 0.0
    """Time a worker waits on the network per step (not hidden by compute)."""
    bytes_sent: float = 0.0
    """Bytes a worker sends per step, averaged over a period."""
    note: str = ""
    """Why, in a few words; and what the steps themselves cost in convergence, where known."""

    @classmethod
    def all_reduce(cls, net: NetSim, model_bytes: float, workers: int, note: str = "") -> "StepCost":
        """A ring all-reduce of the model: 2(W−1) rounds, each sending a 1/W chunk; between two
        workers a small model is one exchange of the whole (as :class:`~agentsync.comm.Comm` sums it)."""
        if sums_by_exchange(model_bytes, workers):
            return cls(net.all_gather(model_bytes, workers), model_bytes, note)
        return cls(net.all_reduce(model_bytes, workers), 2 * (workers - 1) / workers * model_bytes, note)

    @staticmethod
    def all_reduce_latencies(model_bytes: float, workers: int) -> str:
        """The latencies one all-reduce of the model pays, in words."""
        return "1 latency" if sums_by_exchange(model_bytes, workers) else f"{2 * (workers - 1)} latencies"

    @classmethod
    def push_pull(cls, net: NetSim, model_bytes: float, servers: int, note: str) -> "StepCost":
        """A push of the gradient to S servers and a pull of their shards: 2 messages a shard."""
        shard = model_bytes / servers + HEADER_BYTES
        return cls(2 * net.message(shard), model_bytes + servers * HEADER_BYTES, note)

    def every(self, period: int, note: str) -> "StepCost":
        """This cost paid once every ``period`` steps, spread over them."""
        return StepCost(self.seconds / period, self.bytes_sent / period, note)


Cost = Callable[..., StepCost]  # (config, net, model_bytes, workers, servers) -> StepCost

COSTS: dict[str, Cost] = {
    "none": lambda c, net, nbytes, w, s: StepCost(note="no communication while training"),
    "ensemble": lambda c, net, nbytes, w, s: StepCost(note="no communication until the end"),
    "allreduce": lambda c, net, nbytes, w, s: StepCost.all_reduce(
        net, nbytes, w, f"all-reduce every step: {StepCost.all_reduce_latencies(nbytes, w)}"),
    "local-sgd": lambda c, net, nbytes, w, s: StepCost.all_reduce(net, nbytes, w).every(
        c.period, f"one parameter all-reduce every {c.period} steps"),
    "diloco": lambda c, net, nbytes, w, s: StepCost.all_reduce(net, nbytes, w).every(
        c.inner_steps, f"one all-reduce every {c.inner_steps} inner steps"),
    "gossip": lambda c, net, nbytes, w, s: StepCost(net.message(nbytes), nbytes).every(
        c.period, "one model swap with one partner per round"),
    "ps-sync": lambda c, net, nbytes, w, s: StepCost.push_pull(
        net, nbytes, s, "push and pull; waits for replicas_to_aggregate gradients"),
    "ps-async": lambda c, net, nbytes, w, s: StepCost.push_pull(
        net, nbytes, s, "push and pull; never waits for other workers"),
    "ssp": lambda c, net, nbytes, w, s: StepCost.push_pull(
        net, nbytes, s, "push and pull; never waits for other workers"),
    "easgd": lambda c, net, nbytes, w, s: StepCost.push_pull(net, nbytes, s, "").every(
        c.tau, f"elastic exchange with the center every {c.tau} steps"),
}


def step_cost(config, net: NetSim, model_bytes: int, workers: int, servers: int) -> StepCost:
    """The communication cost of one step of ``config.name`` (a strategy's config)."""
    return COSTS[config.name](config, net, model_bytes, workers, servers)


TRANSPORTS = {"allreduce": "collective", "local-sgd": "collective", "diloco": "collective", "gossip": "exchange",
              "ps-sync": "push", "ps-async": "push", "ssp": "push", "easgd": "push"}
"""How each compressing strategy's codec stage travels (see :mod:`agentsync.sync.compressed`)."""


def period(config) -> int:
    """Steps between a strategy's synchronisations (1: every step)."""
    return next((getattr(config, k) for k in ("period", "inner_steps", "tau") if hasattr(config, k)), 1)


def low_rank_step_cost(net: NetSim, p_floats: int, q_floats: int, workers: int) -> StepCost:
    """PowerSGD's step: an all-reduce of every P (and of what is sent as it is), then one of every Q."""
    p, q = StepCost.all_reduce(net, 4 * p_floats, workers), StepCost.all_reduce(net, 4 * q_floats, workers)
    return StepCost(p.seconds + q.seconds, p.bytes_sent + q.bytes_sent,
                    f"all-reduces of P and Q: {4 * (p_floats + q_floats) / 1e3:.3g} kB")


def compressed_step_cost(config, net: NetSim, model_bytes: int, wire_bytes: int, linear: bool, workers: int,
                         servers: int, answer_bytes: int | None = None, chunk_bytes: int | None = None) -> StepCost:
    """The communication cost of one step when the payload travels encoded in ``wire_bytes``: a linear
    codec all-reduces, any other all-gathers (W − 1 payloads each way) or, given ``chunk_bytes`` (a
    W-th of the payload encoded: ``comm.compressed_sum=scatter-gather``), sends W − 1 chunks by
    all-to-all and W − 1 chunk sums by all-gather; a push is encoded, its answer ``answer_bytes``
    (dense, ``model_bytes``, unless the pull is compressed); a gossip exchange sends the encoded difference."""
    transport = TRANSPORTS[config.name]
    if transport == "collective" and linear:
        cost = StepCost.all_reduce(net, wire_bytes, workers)
    elif transport == "collective" and chunk_bytes is not None:
        cost = StepCost(net.all_to_all(workers * chunk_bytes, workers) + net.all_gather(chunk_bytes, workers),
                        2 * (workers - 1) * chunk_bytes)
        return cost.every(period(config), f"scatter-gather of {chunk_bytes / 1e3:.3g} kB chunks encoded")
    elif transport == "collective":
        cost = StepCost(net.all_gather(wire_bytes, workers), (workers - 1) * wire_bytes)
    elif transport == "exchange":
        cost = StepCost(net.message(wire_bytes), wire_bytes)
    else:
        answer = model_bytes if answer_bytes is None else answer_bytes
        push, pull = wire_bytes / servers + HEADER_BYTES, answer / servers + HEADER_BYTES
        cost = StepCost(net.message(push) + net.message(pull), servers * push)
    answered = "" if answer_bytes is None else f", answers {answer_bytes / 1e3:.3g} kB encoded"
    return cost.every(period(config), f"{transport} of {wire_bytes / 1e3:.3g} kB encoded{answered}")
