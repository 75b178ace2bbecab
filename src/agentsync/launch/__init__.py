"""Starting the processes of a job. Nothing else in agentsync starts processes.

``launch(cfg, ...)`` picks the launcher named by ``cfg.launch.name``:

* ``local``: spawns the job's processes on this machine, rendezvous over 127.0.0.1 (default);
* ``torchrun``: this process is one rank of a job torchrun started (one or many machines);
* ``ray``: one Ray actor per rank on a Ray cluster.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from agentsync.config import RunConfig
from agentsync.errors import ConfigError
from agentsync.runtime import ProgressFactory


Announce = Callable[[], None]
"""Called once the run folder is ready, before any process starts: says what the run will do."""


def prepare_run_dir(cfg: RunConfig, *, resume: bool, announce: Announce | None = None) -> Path:
    """Create the run folder and write the resolved config.toml (a resumed run keeps its folder)."""
    run_dir = Path(cfg.out)
    if not resume:
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
