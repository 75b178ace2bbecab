"""Actor–learner training (IMPALA): actor processes act, learners learn from what they send.

The job's ranks are the strategy's (workers, then servers) followed by the actors. Actor ``i``
(rank ``learner_ranks + i``) is *bound* to worker ``i mod W``: it sends that learner its segments
and pulls weights from it alone. Binding rather than a shared queue keeps every message
point-to-point between two known ranks (no central queue process to lose), spreads the actors
evenly, and lets a learner go on when one of its actors dies. Where actors go:

* :mod:`agentsync.actors.actor` — the actor process's loop;
* :mod:`agentsync.actors.feed` — the learner's end: listeners, the segment queue, weights out;
* :mod:`agentsync.actors.protocol` — the replies an actor gets (go on, new weights, stop).
"""
from __future__ import annotations

import dataclasses

from agentsync.options import Options, check


@dataclasses.dataclass(kw_only=True)
class ActorsConfig(Options):
    count: int | None = None
    """Actor processes A (actor-learner tasks only; default 2 per worker). Actor i feeds worker i mod W."""
    envs_per_actor: int = 4
    """Gymnasium environments each actor steps in one vector env."""
    segment_length: int = 32
    """Vector steps per segment an actor sends (a segment holds segment_length × envs_per_actor steps)."""
    weight_sync_every: int = 1
    """An actor pulls its learner's newest weights after every this many segments."""
    queue_segments: int = 2
    """Segments a learner holds received but not yet trained on; a full queue makes its actors wait."""

    def validate(self, section: str) -> None:
        check(self.count is None or self.count >= 0, f"{section}.count", ">= 0", self.count)
        for name in ("envs_per_actor", "segment_length", "weight_sync_every", "queue_segments"):
            check(getattr(self, name) >= 1, f"{section}.{name}", ">= 1", getattr(self, name))


def learner_of(actor: int, workers: int) -> int:
    """The worker (also its rank: workers come first) that actor ``actor`` feeds."""
    return actor % workers


def actors_of(worker: int, workers: int, actors: int) -> list[int]:
    """The actor indices bound to ``worker``."""
    return [a for a in range(actors) if learner_of(a, workers) == worker]
