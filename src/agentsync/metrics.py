"""Run outputs: ``metrics.jsonl`` (one event a line, from every rank) and ``summary.json``."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from agentsync.checkpoint import atomic_write

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class MetricsLog:
    """Appends one JSON object per event; each line is a single ``write`` on an O_APPEND file,
    so ranks sharing the file never interleave inside a line."""

    def __init__(self, run_dir: Path, rank: int, start_time: float) -> None:
        self.rank, self.start = rank, start_time
        self._fd = os.open(Path(run_dir) / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, event: str, step: int, **fields: Any) -> dict:
        record = {"event": event, "rank": self.rank, "step": step,
                  "time_s": round(time.time() - self.start, 4), **fields}
        os.write(self._fd, (json.dumps(_finite(record)) + "\n").encode())
        return record

    def close(self) -> None:
        os.close(self._fd)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(Path(run_dir) / SUMMARY, (json.dumps(_finite(summary), indent=2) + "\n").encode())


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY).read_text())
