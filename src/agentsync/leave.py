"""Leaving a process whose outputs are all written, without the interpreter's teardown.

Tearing down torch and the ~2,000 modules a job loads takes about half a second, and a rank's
gloo teardown in torch 2.13 aborts now and then (SIGABRT, "terminate called without an active
exception"), which would make a finished rank read as crashed. Nothing needs that teardown once
every file is written and every stream flushed.

:func:`leave_after_exit_handlers` is for a process that should still run every ``atexit``
handler (logging's flush, multiprocessing's joins, Ray's shutdown): its handler is registered
when agentsync is first imported, before torch or multiprocessing register theirs, so ``atexit``
runs it last. A program that imports agentsync and never calls it exits as usual.
"""
from __future__ import annotations

import atexit
import os
import sys

_code: list[int] = []


def leave_process(code: int) -> None:
    """Exit now with ``code``: streams flushed, no exit handler run, no teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def leave_after_exit_handlers(code: int) -> None:
    """When this process exits, leave with ``code`` once the other exit handlers have run."""
    _code[:] = [code]


def _leave_if_asked() -> None:
    if _code:
        leave_process(_code[0])


atexit.register(_leave_if_asked)
