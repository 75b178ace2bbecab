"""The local launcher's fork server: a fresh process that imports torch and agentsync once and
forks every rank of a job from there, so a rank starts training at once (a spawned rank would
spend seconds importing first).

The console script starts it first thing, before importing torch itself: the server's imports
(about 2 s) then run beside the command's own (torch, the preflight) instead of after them. A
command that ends without starting a rank from it (bad input, another launcher) stops it, rather
than leave it importing for seconds with the command's output streams still open.

This module imports nothing heavy: the console script imports it before torch.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

PRELOAD = ["agentsync.runtime", "agentsync.tasks", "torch._dynamo", "torch.distributed.checkpoint",
           "torch.utils.tensorboard", "agentsync.launch.fork_server"]
"""Imported once by the fork server, so each rank starts as a fork of a process that has them
already. ``torch._dynamo`` is there because every optimizer's constructor imports it, DCP because
every rank writes its own checkpoint with it, TensorBoard's writer because every rank's metrics
log opens one; ``agentsync.launch.fork_server`` comes last: it makes the server quick to leave
and freezes what the others allocated."""

_forked = False  # whether a rank was ever started from the server


def start_fork_server() -> None:
    """Start the fork server now if it is not running (it returns at once; the server imports
    :data:`PRELOAD` in the background)."""
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def rank_context() -> BaseContext:
    """The context a job's ranks are started from: a clean process (no threads, no CUDA) forks them."""
    global _forked
    start_fork_server()
    _forked = True
    return mp.get_context("forkserver")


def discard_unused_fork_server() -> None:
    """Stop the server if no rank was ever started from it; it may be in the middle of its imports,
    which do not look at the pipe that tells it its parent is gone, so it is killed."""
    server = forkserver._forkserver  # multiprocessing's own singleton; _stop() then tidies its socket
    if _forked or server._forkserver_pid is None:
        return
    os.kill(server._forkserver_pid, signal.SIGKILL)
    server._stop()
