"""``none``: each worker trains alone on its shard; the no-communication baseline."""
from __future__ import annotations

from agentsync.sync.base import Strategy


class NoSync(Strategy):
    """Independent workers: no message is ever sent after the shared initialisation."""

    description = "independent workers, no communication (baseline)"
    replicas_differ = True
    fixed_workers = "each worker trains a model of its own"

    def _step(self) -> None:
        self.update()
