"""A learner's end of its actors: a listener thread per actor, a bounded queue, weights on request.

Each listener first sends its actor the learner's weights, then loops: receive a segment, put it
in the queue (waiting while the queue is full, so a learner that falls behind slows its actors
down instead of training on ever older data), answer go-on, new weights (every
``weight_sync_every`` segments) or stop. The training loop takes segments from the queue with
:meth:`Feed.take` and publishes its weights with :meth:`Feed.publish` once per update, under a
lock, so a listener never sends half of one version and half of the next.

An actor that dies is noticed by its listener (the socket closes), logged, named in the summary
and left out; the learner goes on with the others and fails only when it has none left. The
listeners use a view of the process group with counters of their own: actor traffic is reported
apart from the strategy's.
"""
from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from collections import Counter

import torch
from torch import nn

from agentsync.actors import ActorsConfig
from agentsync.actors.protocol import Reply, flat_weights, send_reply
from agentsync.agents.segments import Segment, SegmentChannel
from agentsync.comm import Comm
from agentsync.errors import JobFailed
from agentsync.sync.ps_protocol import listener_comm

PUT_POLL_S = 0.05


@dataclasses.dataclass
class Arrival:
    actor: int
    segment: Segment | None = None
    error: str = ""


class Feed:
    """Segments from ``actors`` (ranks of ``comm``) to this learner, and this learner's weights back.

    Args:
        comm: the whole job's process group (actors are not in the strategy's).
        actors: the ranks of the actors bound to this learner.
        config: the job's ``[actors]`` options.
        obs_shape: one observation's shape.
    """

    def __init__(self, comm: Comm, actors: list[int], config: ActorsConfig, obs_shape: tuple[int, ...]) -> None:
        self.comm = listener_comm(comm)  # counters of its own: actor traffic, not the strategy's
        self.actors, self.config = list(actors), config
        self.channel = SegmentChannel(self.comm, length=config.segment_length, envs=config.envs_per_actor,
                                      obs_shape=obs_shape)
        self.inbox: queue.Queue[Arrival] = queue.Queue(maxsize=config.queue_segments)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._weights: torch.Tensor | None = None
        self.version = 0
        self.live = set(actors)
        self.segments: Counter[int] = Counter()
        self.env_steps = 0
        self.policy_lag: Counter[int] = Counter()
        self.queue_wait_s = 0.0
        self.lost: list[dict] = []
        self.started = self.stopped = 0.0
        self._threads: list[threading.Thread] = []

    # -- the training loop's side ----------------------------------------------------------------
    def start(self, model: nn.Module, version: int) -> None:
        """Publish the starting weights and start listening (after the strategy's setup)."""
        self.publish(model, version)
        self.started = time.time()
        for actor in self.actors:
            thread = threading.Thread(target=self._listen, args=(actor,), daemon=True, name=f"feed-{actor}")
            thread.start()
            self._threads.append(thread)

    def publish(self, model: nn.Module, version: int) -> None:
        """The weights actors pull from now on: ``model``'s, after ``version`` updates."""
        weights = flat_weights(model)
        with self._lock:
            self._weights, self.version = weights, version

    def take(self, n: int, version: int) -> list[Segment]:
        """The next ``n`` segments from any of this learner's actors; ``version`` is the learner's now."""
        taken: list[Segment] = []
        while len(taken) < n:
            began = time.perf_counter()
            try:
                arrival = self.inbox.get(timeout=self.comm.config.timeout_s)
            except queue.Empty:
                raise JobFailed(f"no segment from actor rank(s) {sorted(self.live)} for "
                                f"{self.comm.config.timeout_s:g} s (comm.timeout_s)") from None
            self.queue_wait_s += time.perf_counter() - began
            if arrival.error:
                self._lose(arrival, version)
                continue
            segment = arrival.segment
            self.segments[arrival.actor] += 1
            self.env_steps += int(segment.valid.sum())
            self.policy_lag[version - segment.version] += 1
            taken.append(segment)
        return taken

    def close(self) -> None:
        """Tell every actor to stop (at its next segment) and wait for the listeners."""
        self.stopped = time.time()
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.comm.config.timeout_s)
        while not self.inbox.empty():  # deaths the loop never took from the queue
            arrival = self.inbox.get_nowait()
            if arrival.error:
                self._lose(arrival, self.version)

    def _lose(self, arrival: Arrival, version: int) -> None:
        if arrival.actor not in self.live:
            return
        self.live.discard(arrival.actor)
        self.lost.append({"rank": arrival.actor, "learner": self.comm.rank, "segments": self.segments[arrival.actor],
                          "learner_version": version, "reason": arrival.error})
        print(f"agentsync: actor rank {arrival.actor} lost ({arrival.error}); learner rank {self.comm.rank} goes on "
              f"with {len(self.live)} actor(s)", file=sys.stderr, flush=True)
        if not self.live and not self.stopping.is_set():
            reasons = "; ".join(f"rank {x['rank']}: {x['reason']}" for x in self.lost)
            raise JobFailed(f"learner rank {self.comm.rank} lost all its actors ({reasons})")

    # -- the listeners ---------------------------------------------------------------------------
    def _listen(self, actor: int) -> None:
        try:
            received, sent = 0, self._reply(actor, Reply.WEIGHTS)
            while sent != Reply.STOP:
                segment = self.channel.recv(actor)
                received += 1
                queued = self._put(Arrival(actor, segment))
                due = received % self.config.weight_sync_every == 0
                sent = self._reply(actor, Reply.STOP if not queued else Reply.WEIGHTS if due else Reply.CONTINUE)
        except Exception as e:  # a closed socket: the actor is gone
            self._put(Arrival(actor, error=(str(e).strip().splitlines() or ["lost"])[0][:200]), always=True)

    def _put(self, arrival: Arrival, always: bool = False) -> bool:
        """Queue ``arrival`` unless the learner is stopping; False when it was not queued."""
        while not self.stopping.is_set():
            try:
                self.inbox.put(arrival, timeout=PUT_POLL_S)
                return True
            except queue.Full:
                continue
        if always:  # a death during shutdown: still reported by close()
            try:
                self.inbox.put_nowait(arrival)
            except queue.Full:
                self.inbox.get_nowait()
                self.inbox.put_nowait(arrival)
        return False

    def _reply(self, actor: int, kind: Reply) -> Reply:
        """Send ``kind`` (STOP instead once the learner is stopping); returns what was sent."""
        if self.stopping.is_set():
            kind = Reply.STOP
        with self._lock:
            weights, version = self._weights, self.version
        send_reply(self.comm, actor, kind, version, weights)
        return kind

    # -- what the summary reports ------------------------------------------------------------------
    def report(self) -> dict:
        active = (self.stopped or time.time()) - self.started
        return {"learner": self.comm.rank, "actors": self.actors, "segments": {str(a): self.segments[a] for a in self.actors},
                "env_steps": self.env_steps, "active_s": active, "queue_wait_s": self.queue_wait_s,
                "policy_lag": {str(k): v for k, v in sorted(self.policy_lag.items())}, "lost": self.lost,
                "bytes_received": self.comm.stats.bytes_received, "bytes_sent": self.comm.stats.bytes_sent}


def merge_reports(reports: list[dict], learner_samples_per_s: float | None) -> dict:
    """The summary's ``actors`` section from every learner's :meth:`Feed.report`."""
    lag: Counter[int] = Counter()
    for r in reports:
        lag.update({int(k): v for k, v in r["policy_lag"].items()})
    segments = sum(lag.values())
    env_steps = sum(r["env_steps"] for r in reports)
    active = max(r["active_s"] for r in reports)
    return {
        "count": sum(len(r["actors"]) for r in reports),
        "env_steps": env_steps,
        "env_steps_per_s": env_steps / active if active > 0 else 0.0,
        "learner_samples_per_s": learner_samples_per_s,
        "segments_by_rank": {k: v for r in reports for k, v in r["segments"].items()},
        "policy_lag": {str(k): lag[k] for k in sorted(lag)},
        "policy_lag_mean": sum(k * v for k, v in lag.items()) / segments if segments else 0.0,
        "queue_wait_s": sum(r["queue_wait_s"] for r in reports),
        "learner_idle_fraction": sum(r["queue_wait_s"] / r["active_s"] for r in reports if r["active_s"] > 0)
        / len(reports),
        "bytes": sum(r["bytes_received"] + r["bytes_sent"] for r in reports),
        "lost": [x for r in reports for x in r["lost"]],
    }
