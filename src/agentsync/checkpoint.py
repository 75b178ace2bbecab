"""Checkpoints: one file per rank written by the rank itself, committed by a manifest written atomically.

Every rank writes its own state (model, optimizer, strategy, task, RNG) with
``torch.distributed.checkpoint`` into ``checkpoints/step-<S>/rank-<r>/``, so no process ever holds
W copies of the model. The reporter then writes the manifest, ``checkpoint.pt``: the step reached,
the worker count, the model to evaluate (one copy), each rank's small statistics and the step
folder. The manifest is the commit point: it is written to a temporary file, flushed to disk and
renamed over the old one, and only then are older step folders deleted, so a crash leaves either
the previous checkpoint or the new one, never half of one. A rank on another worker count resumes
from the state :func:`source_rank` names.

Nothing read back can run code: the manifest is read with ``weights_only=True``; a rank folder holds
tensors only (what is not a tensor is serialized with :func:`to_bytes` into one uint8 tensor and
read with ``weights_only=True``), and DCP's own ``.metadata`` pickle is read by an unpickler that
admits DCP's metadata classes only. Format 1 (one file holding every rank's state) still loads.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from agentsync.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 2
STATES = "checkpoints"
"""The folder of the step folders, each holding one folder per rank."""
SKELETON = "skeleton"
"""The key, in a rank folder, of everything that is not a tensor (serialized, as one uint8 tensor)."""
TENSOR_MARK = "\x00agentsync-tensor:"


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
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- per-rank states ------------------------------------------------------------------------------
def step_folder(step: int) -> str:
    """The step's folder, relative to the run folder (the manifest names it)."""
    return f"{STATES}/step-{step}"


def rank_folder(run_dir: Path, states: str, rank: int) -> Path:
    return Path(run_dir) / states / f"rank-{rank}"


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` with every tensor moved into ``tensors`` and a mark left in its place."""
    if torch.is_tensor(obj):
        key = f"tensor_{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return TENSOR_MARK + key
    if isinstance(obj, dict):
        return {k: split_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(split_tensors(v, tensors) for v in obj)
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tensors`."""
    if isinstance(obj, str) and obj.startswith(TENSOR_MARK):
        return tensors[obj[len(TENSOR_MARK):]]
    if isinstance(obj, dict):
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(join_tensors(v, tensors) for v in obj)
    return obj


def save_rank_state(run_dir: Path, step: int, rank: int, state: dict) -> None:
    """Write this rank's ``state`` into its folder of step ``step``.

    Written with DCP (no process group: the ranks that checkpoint together are not always one group)
    into a temporary folder renamed into place, so a crash never leaves a folder that looks complete.
    """
    folder = rank_folder(run_dir, step_folder(step), rank)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    tensors[SKELETON] = torch.frombuffer(bytearray(to_bytes(skeleton)), dtype=torch.uint8)
    import torch.distributed.checkpoint as dcp  # here: importing it costs a process ~1.5 s

    with warnings.catch_warnings():  # DCP warns that it saves without a process group: that is the intent
        warnings.simplefilter("ignore")
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp), no_dist=True)
    replace_folder(tmp, folder)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an older ``folder`` (the same step written again) goes first."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        shutil.rmtree(old)
    os.replace(tmp, folder)
    fsync_folder(folder.parent)


class MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's ``.metadata`` pickle admitting DCP's metadata classes only: it cannot run code."""
    ALLOWED = {("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")} | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


@functools.cache
def safe_reader() -> type:
    """DCP's file reader, with its metadata read by :class:`MetadataUnpickler` (a class made on first
    use: importing DCP costs a process ~1.5 s, which a run that never checkpoints should not pay)."""
    import torch.distributed.checkpoint as dcp

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = MetadataUnpickler(f).load()
            metadata.storage_meta = dcp.metadata.StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def check_rank_folder(folder: Path) -> None:
    """Fail unless ``folder`` holds a complete rank state: its metadata reads, tensors only, every file
    as long as the metadata says."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing")
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = safe_reader()(folder).read_metadata()
    if any(not isinstance(m, TensorStorageMetadata) for m in metadata.state_dict_metadata.values()):
        raise ValueError("it holds values that are not tensors")
    for info in metadata.storage_data.values():
        path = folder / info.relative_path
        if not path.is_file() or path.stat().st_size < info.offset + info.length:
            raise ValueError(f"{info.relative_path} is missing or truncated")


def read_rank_state(folder: Path) -> dict:
    """The state :func:`save_rank_state` wrote in ``folder``; an unreadable one is a :class:`ConfigError`."""
    try:
        check_rank_folder(folder)
        import torch.distributed.checkpoint as dcp

        reader = safe_reader()(folder)
        template = {key: torch.empty(m.size, dtype=m.properties.dtype)
                    for key, m in reader.read_metadata().state_dict_metadata.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(template, storage_reader=reader, no_dist=True)
        skeleton = from_bytes(template.pop(SKELETON).numpy().tobytes())
        return join_tensors(skeleton, template)
    except Exception as e:
        raise ConfigError(f"corrupt checkpoint: rank state {str(folder)!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


# -- the manifest -----------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, *, step: int, elapsed_s: float, workers: int, model: dict,
                    ranks: list[bytes]) -> None:
    """Commit the checkpoint of ``step``, whose rank folders every rank has written: write the manifest
    (``ranks``: each rank's small payload, serialized), then delete the older step folders."""
    payload = {"format": FORMAT_VERSION, "step": step, "elapsed_s": elapsed_s, "workers": workers, "model": model,
               "states": step_folder(step),
               "ranks": [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in ranks]}
    atomic_write(Path(run_dir) / CHECKPOINT, to_bytes(payload))
    prune_states(Path(run_dir), step)


def prune_states(run_dir: Path, step: int, *, later_too: bool = False) -> None:
    """Delete the step folders before ``step`` (older checkpoints, and any a crash left behind).

    Later ones stay unless ``later_too`` (once the job has ended): a rank that runs ahead of the
    reporter (no strategy step waits for it) may be writing the next checkpoint's folder already.
    """
    folder = Path(run_dir) / STATES
    for child in folder.iterdir() if folder.is_dir() else []:
        found = re.fullmatch(r"step-(\d+)", child.name)
        if found and (int(found.group(1)) < step or (later_too and int(found.group(1)) > step)):
            shutil.rmtree(child, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> dict:
    """The manifest in ``run_dir`` (format 2, or a format 1 single file); a missing or unreadable one
    is a :class:`ConfigError`. ``ranks`` holds each rank's serialized payload."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"no checkpoint in {str(run_dir)!r} (expected {CHECKPOINT}); nothing to resume or evaluate")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        if payload.get("format") not in (1, FORMAT_VERSION):
            raise ValueError(f"format {payload.get('format')!r}")
        if payload["format"] == FORMAT_VERSION and not re.fullmatch(rf"{STATES}/step-\d+", payload["states"]):
            raise ValueError(f"step folder {payload['states']!r}")
        payload["ranks"] = [bytes(t.numpy().tobytes()) for t in payload["ranks"]]
        return payload
    except Exception as e:  # any unpickling or format failure means the file cannot be trusted
        raise ConfigError(f"corrupt checkpoint {str(path)!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


def rank_state(run_dir: Path, checkpoint: dict, payload: dict) -> dict:
    """The saved state of the rank whose payload is ``payload`` (format 1 kept it in the payload)."""
    if "state" in payload:
        return payload["state"]
    return read_rank_state(rank_folder(run_dir, checkpoint["states"], payload["rank"]))


def check_rank_states(run_dir: Path, checkpoint: dict) -> None:
    """Fail now, with a :class:`ConfigError`, unless every rank the manifest names has a complete folder."""
    if checkpoint["format"] == 1:
        return
    for payload in map(from_bytes, checkpoint["ranks"]):
        folder = rank_folder(run_dir, checkpoint["states"], payload["rank"])
        try:
            check_rank_folder(folder)
        except Exception as e:
            raise ConfigError(f"corrupt checkpoint: rank state {str(folder)!r}: {type(e).__name__}: {e}"
                              .splitlines()[0]) from None


def load_rank_states(run_dir: Path) -> list[dict]:
    """Every saved rank's payload with its ``state`` (for tests and tools: this holds W states at once)."""
    checkpoint = load_checkpoint(run_dir)
    return [{**p, "state": rank_state(run_dir, checkpoint, p)} for p in map(from_bytes, checkpoint["ranks"])]


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
