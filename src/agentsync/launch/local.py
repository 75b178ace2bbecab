"""The default launcher: the job's processes started on this machine, rendezvous over loopback.

Ranks are forked from a fork server (a fresh process that imported torch and agentsync once, see
:mod:`agentsync.forking`), not spawned: a spawned rank spends seconds importing before its first step.

The parent watches its children. When a rank dies under a strategy that cannot lose workers,
the others get ``comm.timeout_s`` plus a grace period to stop on their own (they normally fail
at once, their peer's socket closed); any still running then are killed, and the job fails with
a message naming the rank that died first. Where the job can go on without the rank (an actor,
or a worker under a strategy that tolerates losses), survivors finish and report the loss
themselves. A job succeeds only if this run wrote summary.json and every failure was a tolerated
loss — never because a file from an earlier run exists.

With ``launch.max_restarts`` (``--max-restarts N``) a failed job starts again by itself, as
``torchrun --max-restarts`` does: from the latest checkpoint (``checkpoint_every``), or from the
start where there is none. Each restart is said on
stderr and counted in the summary's ``restarts``; injected kill and hang faults act in the first
attempt only.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

import datetime

from agentsync.comm import LAUNCHER_STORE, free_port, leave_process, rendezvous_store
from agentsync.membership import announce_lost
from agentsync.config import RunConfig
from agentsync.errors import JobFailed
from agentsync.forking import rank_context
from agentsync.launch import Announce, prepare_run_dir, restart_point, tolerated_loss, without_injected_failures
from agentsync.metrics import SUMMARY
from agentsync.runtime import ProgressFactory, run_worker

GRACE_S = 10.0
POLL_S = 0.05


def _entry(cfg: RunConfig, run_dir: str, resume: bool, progress: ProgressFactory | None, env: dict) -> None:
    """A child process: one rank of the job."""
    os.environ.update(env)
    torch.set_num_threads(cfg.launch.threads_per_worker)
    rank = int(env["RANK"])
    code = 0
    try:
        run_worker(cfg, run_dir, resume=resume, progress=progress)
    except KeyboardInterrupt:
        code = 130
    except BaseException as e:  # report on one line; the traceback goes to the run folder
        errors = Path(run_dir) / "errors"
        errors.mkdir(exist_ok=True)
        (errors / f"rank-{rank}.txt").write_text(traceback.format_exc())
        first_line = (str(e).strip().splitlines() or [""])[0]
        print(f"agentsync: rank {rank}: {type(e).__name__}: {first_line}", file=sys.stderr, flush=True)
        code = 1
    leave_process(code)  # everything is written: files atomically, logs closed


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch_local(cfg: RunConfig, *, resume: bool, progress: ProgressFactory | None,
                 announce: Announce | None = None) -> bool:
    run_dir = prepare_run_dir(cfg, resume=resume, announce=announce)
    for attempt in range(cfg.launch.max_restarts + 1):
        failures, hung = run_attempt(cfg, run_dir, resume=resume, progress=progress, restarts=attempt)
        if not failures and not hung:
            return True
        if attempt == cfg.launch.max_restarts:
            raise JobFailed(failure_message(failures, hung))
        step = restart_point(run_dir)
        resume, cfg = step > 0, without_injected_failures(cfg)
        print(f"agentsync: {failure_message(failures, hung)}; restart {attempt + 1} of {cfg.launch.max_restarts} "
              f"from {f'the checkpoint at step {step}' if step else 'the start'}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def run_attempt(cfg: RunConfig, run_dir: Path, *, resume: bool, progress: ProgressFactory | None,
                restarts: int) -> tuple[list[tuple[int, str]], list[int]]:
    """Spawn every rank and wait; returns the failures that end the job (none when it succeeded)."""
    before = summary_signature(run_dir)
    world, addr = cfg.world_size, cfg.comm.master_addr
    port = cfg.comm.master_port or free_port(addr)
    # the launcher hosts the store, as torchrun's agent does: no rank's death takes it down, and
    # it is where the launcher announces a lost rank to the survivors (agentsync.membership)
    store = rendezvous_store(addr, port, 0, world, datetime.timedelta(seconds=cfg.comm.timeout_s))
    base_env = {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": addr,
                "MASTER_PORT": str(port), "TORCHELASTIC_RESTART_COUNT": str(restarts), LAUNCHER_STORE: "1"}
    ctx = rank_context()
    procs = []
    try:
        for rank in range(world):
            env = {**base_env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            proc = ctx.Process(target=_entry, args=(cfg, str(run_dir), resume, progress, env),
                               name=f"agentsync-rank-{rank}", daemon=False)
            proc.start()
            procs.append(proc)
        failures, hung = watch(procs, tolerated=lambda rank: tolerated_loss(cfg, rank),
                               grace_s=cfg.comm.timeout_s + GRACE_S, on_failure=lambda rank: announce_lost(store, rank))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
    written = summary_signature(run_dir) not in (None, before)  # by this run: a resumed folder has an old one
    tolerated = written and not hung and all(tolerated_loss(cfg, rank) for rank, _ in failures)
    if (failures or hung) and not tolerated:
        return failures, hung
    if not written:
        raise JobFailed("every rank exited, but none wrote summary.json; the job did not finish")
    return [], []


def summary_signature(run_dir: Path) -> tuple[int, int] | None:
    """Identifies the summary file now in ``run_dir`` (written atomically: a new one is a new inode)."""
    try:
        stat = (run_dir / SUMMARY).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def watch(procs: list, *, tolerated: Callable[[int], bool], grace_s: float,
          on_failure: Callable[[int], None] = lambda rank: None) -> tuple[list[tuple[int, str]], list[int]]:
    """Wait for every process; returns failures in the order seen (signal deaths first within a poll)
    and the ranks killed for not stopping within ``grace_s`` after a failure the job cannot go on without.
    ``on_failure(rank)`` is called as each failure is seen."""
    failures: list[tuple[int, str]] = []
    seen: set[int] = set()
    deadline = None
    while True:
        fresh = [(rank, p.exitcode) for rank, p in enumerate(procs)
                 if rank not in seen and p.exitcode not in (None, 0)]
        for rank, code in sorted(fresh, key=lambda rc: rc[1] >= 0):
            seen.add(rank)
            failures.append((rank, describe_exit(code)))
            on_failure(rank)
        alive = [rank for rank, p in enumerate(procs) if p.is_alive()]
        if not alive:
            return failures, []
        if any(not tolerated(rank) for rank, _ in failures):
            deadline = deadline or time.monotonic() + grace_s
            if time.monotonic() > deadline:
                for rank in alive:
                    procs[rank].kill()
                return failures, alive
        time.sleep(POLL_S)


def failure_message(failures: list[tuple[int, str]], hung: list[int]) -> str:
    if not failures:
        return f"rank(s) {', '.join(map(str, hung))} stopped responding; the job was stopped"
    rank, what = failures[0]
    message = f"rank {rank} {what}; the job stopped"
    rest = [f"rank {r} {w}" for r, w in failures[1:]] + [f"rank {r} was killed after not stopping" for r in hung]
    return message + (f" (then {'; '.join(rest)})" if rest else "")
