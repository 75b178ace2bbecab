"""Pipeline model parallelism: the P × W layout, the model split, and stages driven by
``torch.distributed.pipelining`` (see docs/pipeline.md)."""
from agentsync.parallel.layout import SCHEDULES, Layout, ParallelConfig

__all__ = ["SCHEDULES", "Layout", "ParallelConfig"]
