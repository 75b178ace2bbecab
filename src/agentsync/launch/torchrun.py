"""Under torchrun: this process is already one rank; the same command line works on many machines.

    torchrun --standalone --nproc-per-node 2 -m agentsync train --launcher torchrun --task digits
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29400 --nproc-per-node 4 \\
        -m agentsync train --launcher torchrun --workers 8

Rank 0 chooses the run folder and tells the others, so a default, time-stamped name agrees.
Under ``torchrun --max-restarts N`` a restarted attempt resumes from the run's latest checkpoint
(or starts again where there is none), as the local launcher's ``--max-restarts`` does.
"""
from __future__ import annotations

import os
from pathlib import Path

from agentsync.comm import Comm
from agentsync.config import RunConfig
from agentsync.errors import ConfigError
from agentsync.launch import Announce, freeze_imports, prepare_run_dir, restart_point, without_injected_failures
from agentsync.runtime import ProgressFactory, restarts, run_worker


def launch_torchrun(cfg: RunConfig, *, resume: bool, progress: ProgressFactory | None,
                 announce: Announce | None = None) -> bool:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("launch.name is torchrun but RANK/WORLD_SIZE are not set; start the command under "
                          "torchrun, or use --launcher local")
    world = int(os.environ["WORLD_SIZE"])
    if world != cfg.world_size:
        layout = cfg.layout
        parts = [f"workers={cfg.workers}"] + [f"{name}={n}" for name, n in
                                              (("servers", layout.servers_per_stage), ("actors", cfg.actors.count)) if n]
        parts = parts if layout.stages == 1 else [f"stages={layout.stages} × ({' + '.join(parts)})"]
        raise ConfigError(f"torchrun started {world} processes but the job needs {cfg.world_size} "
                          f"({' + '.join(parts)}); set --nproc-per-node/--nnodes or --workers to match")
    restarted = restarts() > 0 and not resume  # torchrun --max-restarts started this attempt again
    if restarted:
        cfg = without_injected_failures(cfg)
    freeze_imports()
    comm = Comm.from_env(cfg.comm)
    with comm.uncounted():
        cfg.out = comm.broadcast_bytes(cfg.out.encode(), src=0).decode()
        if comm.rank == 0:
            step = restart_point(Path(cfg.out)) if restarted else 0
            if not restarted:
                prepare_run_dir(cfg, resume=resume, announce=announce)
            resume = resume or step > 0
        resume = comm.broadcast_bytes(b"1" if resume else b"", src=0) == b"1"
    return run_worker(cfg, cfg.out, resume=resume, progress=progress, comm=comm)
