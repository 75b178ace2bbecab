"""Checkpoints written atomically and read back safely.

A checkpoint is one file, ``checkpoint.pt``: the step reached, the worker count, the model to
evaluate, and one serialized state per rank (model, optimizer, strategy, task, RNG) so every rank
resumes exactly (or, on another worker count, from the state :func:`source_rank` names).
It is written to a temporary file in the same folder, flushed to disk, then renamed over the old
one, so a crash leaves either the previous checkpoint or the new one, never half of one. It is
read with ``weights_only=True``: a checkpoint cannot run code.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from agentsync.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


def to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(run_dir: Path, *, step: int, elapsed_s: float, workers: int, model: dict,
                    ranks: list[bytes]) -> None:
    payload = {"format": FORMAT_VERSION, "step": step, "elapsed_s": elapsed_s, "workers": workers, "model": model,
               "ranks": [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in ranks]}
    atomic_write(Path(run_dir) / CHECKPOINT, to_bytes(payload))


def load_checkpoint(run_dir: Path) -> dict:
    """The checkpoint in ``run_dir``; a missing or unreadable one is a :class:`ConfigError`."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"no checkpoint in {str(run_dir)!r} (expected {CHECKPOINT}); nothing to resume or evaluate")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        if payload.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {payload.get('format')!r}")
        payload["ranks"] = [bytes(t.numpy().tobytes()) for t in payload["ranks"]]
        return payload
    except Exception as e:  # any unpickling or format failure means the file cannot be trusted
        raise ConfigError(f"corrupt checkpoint {str(path)!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


def source_rank(rank: int, *, workers: int, saved_workers: int, saved_ranks: list[int]) -> int | None:
    """The saved rank whose state ``rank`` resumes from: itself on the same worker count; on another,
    worker r takes saved worker r mod W' (among those saved: a lost one has no state), and server j
    (the ranks after the workers) saved server j. None when there is no such state."""
    if workers == saved_workers:
        return rank if rank in saved_ranks else None
    if rank >= workers:
        mapped = saved_workers + rank - workers
        return mapped if mapped in saved_ranks else None
    saved = [r for r in saved_ranks if r < saved_workers]
    return saved[rank % len(saved)] if saved else None
