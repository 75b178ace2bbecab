"""Run outputs: ``metrics.jsonl`` (one event a line, from every rank), TensorBoard event files
beside it (``tb/rank-R``, one TensorBoard run per rank) and ``summary.json``.

Every numeric field of a logged event becomes a TensorBoard scalar at the event's step, tagged by
:func:`scalar_tag`: ``train/loss``, ``eval/accuracy``, ``comm/bytes_sent``, ``sync/consensus_distance``.
``tensorboard --logdir RUN`` shows one run's ranks; ``tensorboard --logdir STUDY`` (a ``compare``
folder, each cell a run folder under ``runs/``) overlays every cell.
"""
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
TENSORBOARD = "tb"

COMM_FIELDS = ("bytes_sent", "bytes_received", "messages", "comm_time_s", "codec_time_s")
"""Cumulative per-rank counters; a train event's go under ``comm/``."""
SYNC_FIELDS = ("consensus_distance", "clock_gap")
"""What a strategy measures about the replicas' agreement (with ``staleness*``); tagged ``sync/``."""


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def scalar_tag(event: str, field: str) -> str:
    """The TensorBoard tag of one field of one event.

    A train event's communication counters are ``comm/<field>`` (cumulative bytes, messages and
    seconds, one point per logged step); consensus distance, staleness and the clock gap are
    ``sync/<field>``; every other field, the counters of eval events included, is ``<event>/<field>``
    (``train/loss``, ``eval/accuracy``, ``eval/eval_return``, ``final/accuracy``)."""
    if event == "train" and field in COMM_FIELDS:
        return f"comm/{field}"
    if field in SYNC_FIELDS or field.startswith("staleness"):
        return f"sync/{field}"
    return f"{event}/{field}"


def numeric_fields(fields: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of an event, nested dicts flattened with ``/``; booleans, text and None are skipped."""
    out: dict[str, float] = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            out.update(numeric_fields(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoardLog:
    """One rank's TensorBoard run, ``RUN/tb/rank-R``, written with ``torch.utils.tensorboard``.

    Flushed after every event: ranks leave with ``os._exit`` (no atexit handler, no writer thread
    finishing its queue), and events come every ``log_every`` steps, so a flush each is cheap.
    The event file is opened at the first event, so a rank that logs nothing (a parameter server)
    adds no empty run; the module is imported here, up front, because its import (~0.1 s) at the
    first event would land inside the training loop's clock."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only by runs that log to TensorBoard

        self.folder, self._writer_type = folder, SummaryWriter
        self.writer = None

    def add(self, event: str, step: int, fields: dict) -> None:
        if self.writer is None:
            self.writer = self._writer_type(log_dir=str(self.folder))
        for name, value in numeric_fields(fields).items():
            self.writer.add_scalar(scalar_tag(event, name), value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MetricsLog:
    """Appends one JSON object per event; each line is a single ``write`` on an O_APPEND file,
    so ranks sharing the file never interleave inside a line. The same numbers go to this rank's
    TensorBoard run (``tb/rank-R``) unless ``tensorboard=False``."""

    def __init__(self, run_dir: Path, rank: int, start_time: float, *, tensorboard: bool = True) -> None:
        self.rank, self.start = rank, start_time
        self._fd = os.open(Path(run_dir) / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._tb = TensorBoardLog(Path(run_dir) / TENSORBOARD / f"rank-{rank}") if tensorboard else None

    def log(self, event: str, step: int, **fields: Any) -> dict:
        record = {"event": event, "rank": self.rank, "step": step,
                  "time_s": round(time.time() - self.start, 4), **fields}
        os.write(self._fd, (json.dumps(_finite(record)) + "\n").encode())
        if self._tb is not None:
            self._tb.add(event, step, fields)
        return record

    def close(self) -> None:
        os.close(self._fd)
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(Path(run_dir) / SUMMARY, (json.dumps(_finite(summary), indent=2) + "\n").encode())


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY).read_text())
