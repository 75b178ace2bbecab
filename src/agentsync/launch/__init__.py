"""Starting the processes of a job. Nothing else in agentsync starts processes.

``launch(cfg, ...)`` picks the launcher named by ``cfg.launch.name``:

* ``local``: spawns the job's processes on this machine, rendezvous over 127.0.0.1 (default);
* ``torchrun``: this process is one rank of a job torchrun started (one or many machines);
* ``ray``: one Ray actor per rank on a Ray cluster.
"""
from __future__ import annotations

import copy
import gc
import json
import shutil
from pathlib import Path
from typing import Callable

from agentsync.checkpoint import CHECKPOINT, atomic_write, load_checkpoint
from agentsync.comm import parse_faults
from agentsync.config import RunConfig
from agentsync.errors import ConfigError
from agentsync.metrics import METRICS, TENSORBOARD, read_metrics
from agentsync.runtime import ProgressFactory


Announce = Callable[[], None]
"""Called once the run folder is ready, before any process starts: says what the run will do."""


def freeze_imports() -> None:
    """Move what this process's imports allocated out of the garbage collector's reach (``gc.freeze``).

    Called where a process has imported what its ranks need and runs no other job after them: the
    local launcher's fork server before it forks ranks (as the ``gc`` docs advise before forking),
    a rank started by torchrun, a Ray actor. A rank's collections, among them the two it makes as it
    leaves its process group, then skip those ~300,000 objects instead of walking them (0.13 s a
    full collection, more in a fork, whose walk copies the pages it shares with the server)."""
    gc.freeze()


def prepare_run_dir(cfg: RunConfig, *, resume: bool, announce: Announce | None = None) -> Path:
    """Create the run folder and write the resolved config.toml (a resumed run keeps its folder, and
    drops the metrics a crashed run logged past its checkpoint: they are logged again)."""
    run_dir = Path(cfg.out)
    if resume:
        restart_point(run_dir)
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run folder {str(run_dir)!r} already exists and is not empty; "
                              "pass --resume to continue it or another --out")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {str(run_dir)!r}: {e.strerror}; choose another --out") from None
    (run_dir / "config.toml").write_text(cfg.to_toml())
    if announce:
        announce()
    return run_dir


def restart_point(run_dir: Path) -> int:
    """Prepare ``run_dir`` for a restart; returns the checkpoint's step to resume from (0: from the start).

    Metrics past that step are dropped (the restart logs them again), so ``metrics.jsonl`` reads
    as one run; from the start, the TensorBoard runs go too.
    """
    step = 0
    if (run_dir / CHECKPOINT).exists():
        step = int(load_checkpoint(run_dir)["step"])
    kept = [e for e in read_metrics(run_dir) if e["step"] <= step] if step else []
    atomic_write(run_dir / METRICS, "".join(json.dumps(e) + "\n" for e in kept).encode())
    if not step:
        shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
    return step


def without_injected_failures(cfg: RunConfig) -> RunConfig:
    """``cfg`` without injected kill and hang faults, for a restarted attempt: they act in the first only."""
    faults = {rank: fault for rank, fault in parse_faults(cfg.comm.fault).items() if fault[0] not in ("kill", "hang")}
    restarted = copy.deepcopy(cfg)
    restarted.comm.fault = ",".join(f"{rank}:{kind}@{step}" for rank, (kind, step) in faults.items())
    return restarted


def tolerated_loss(cfg: RunConfig, rank: int) -> bool:
    """Whether the job goes on without ``rank``: an actor (stateless; its learner goes on), or a worker
    under a strategy that tolerates worker loss, or whose survivors regroup (under the local launcher,
    which announces the loss to them; not in actor-learner jobs). A server's loss never is, nor a
    pipeline stage's (the other stages of its replica wait on its activations)."""
    from agentsync.sync import strategy_class
    strategy = strategy_class(cfg.strategy.name)
    regroups = strategy.regroups and cfg.launch.name == "local" and not cfg.actors.count
    return rank >= cfg.learner_ranks or (rank < cfg.workers and cfg.parallel.stages == 1
                                         and (strategy.tolerates_worker_loss or regroups))


def launch(cfg: RunConfig, *, resume: bool = False, progress: ProgressFactory | None = None,
           announce: Announce | None = None) -> bool:
    """Run the job to the end; returns True on the rank that reports (prints the summary)."""
    if cfg.launch.name == "local":
        from agentsync.launch.local import launch_local
        return launch_local(cfg, resume=resume, progress=progress, announce=announce)
    if cfg.launch.name == "torchrun":
        from agentsync.launch.torchrun import launch_torchrun
        return launch_torchrun(cfg, resume=resume, progress=progress, announce=announce)
    from agentsync.launch.ray import launch_ray
    return launch_ray(cfg, resume=resume, progress=progress, announce=announce)
