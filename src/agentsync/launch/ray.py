"""The Ray launcher: one Ray task per rank, all meeting at ``comm.master_addr``.

Every rank is a zero-CPU remote call of :func:`_rank_main` handed the torchrun-style environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` = ``comm.master_addr``, ``MASTER_PORT`` = ``comm.master_port``
or a port found free on the driver), so rank 0 listens on that address: on a cluster set it to an
address of the node rank 0 runs on (``--set comm.master_addr=HEAD_NODE_IP``); the default 127.0.0.1
suits a one-machine cluster. A failed rank cancels the others and the job fails naming it.

Needs the ``ray`` extra (``pip install 'agentsync[ray]'``). Connects to a running cluster when
``RAY_ADDRESS`` is set, else starts a local one bound to 127.0.0.1 (and shuts it down after).
"""
from __future__ import annotations

import os

from agentsync.comm import free_port
from agentsync.config import RunConfig
from agentsync.errors import ConfigError, JobFailed
from agentsync.launch import Announce, prepare_run_dir
from agentsync.runtime import ProgressFactory, run_worker


def _rank_main(cfg: RunConfig, run_dir: str, resume: bool, progress, env: dict) -> None:
    import torch

    os.environ.update(env)
    torch.set_num_threads(cfg.launch.threads_per_worker)
    run_worker(cfg, run_dir, resume=resume, progress=progress)


def launch_ray(cfg: RunConfig, *, resume: bool, progress: ProgressFactory | None,
                 announce: Announce | None = None) -> bool:
    try:
        import ray
    except ImportError:
        raise ConfigError("launch.name is ray but Ray is not installed; pip install 'agentsync[ray]'") from None
    run_dir = prepare_run_dir(cfg, resume=resume, announce=announce)
    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=True)
        else:
            ray.init(num_cpus=max(2, cfg.world_size), include_dashboard=False, _node_ip_address="127.0.0.1")
    world = cfg.world_size
    remote = ray.remote(num_cpus=0)(_rank_main)
    env = {"WORLD_SIZE": str(world), "MASTER_ADDR": cfg.comm.master_addr,
           "MASTER_PORT": str(cfg.comm.master_port or free_port(cfg.comm.master_addr))}
    refs = [remote.remote(cfg, str(run_dir), resume, progress, {**env, "RANK": str(r), "LOCAL_RANK": "0"})
            for r in range(world)]
    try:
        ray.get(refs)
    except Exception as e:  # RayTaskError wraps the rank's exception; its first line names it
        for ref in refs:
            ray.cancel(ref, force=True)
        raise JobFailed(f"a Ray worker failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        if started:
            ray.shutdown()
    return True
