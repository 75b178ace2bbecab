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

import importlib
from typing import TYPE_CHECKING, Any

from agentsync import leave  # noqa: F401  (first: its exit handler must be registered before torch's)

if TYPE_CHECKING:
    from agentsync.api import init, make_strategy, shutdown
    from agentsync.parallel.byo import Pipeline, pipeline

__version__ = "0.1.0"
__all__ = ["Pipeline", "init", "make_strategy", "pipeline", "shutdown", "__version__"]

_HOMES = {"init": "agentsync.api", "make_strategy": "agentsync.api", "shutdown": "agentsync.api",
          "Pipeline": "agentsync.parallel.byo", "pipeline": "agentsync.parallel.byo"}


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so that importing the package does not import torch: the
    console script starts its fork server before that (:mod:`agentsync.forking`)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'agentsync' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
