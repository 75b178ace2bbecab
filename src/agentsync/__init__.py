"""agentsync: train models and RL agents on many workers with a chosen synchronization strategy.

Bring your own training loop (start it with ``torchrun --nproc-per-node 2 script.py``)::

    import agentsync
    agentsync.init()
    sync = agentsync.make_strategy("allreduce")
    sync.setup(model, optimizer)
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward()
        sync.step()
    model = sync.finalize()

Pipelined (P stages × W replicas, a strategy per stage): :func:`agentsync.pipeline`, see
``agentsync.parallel.byo`` and docs/pipeline.md.
"""
from __future__ import annotations

from agentsync import leave  # noqa: F401  (first: its exit handler must be registered before torch's)
from agentsync.api import init, make_strategy, shutdown
from agentsync.parallel.byo import Pipeline, pipeline

__version__ = "0.1.0"
__all__ = ["Pipeline", "init", "make_strategy", "pipeline", "shutdown", "__version__"]
