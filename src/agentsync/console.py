"""The ``agentsync`` command (console script and ``python -m agentsync``).

``train`` with the local launcher starts the fork server (:mod:`agentsync.forking`) before this
process imports torch, so the two import side by side; everything else is :func:`agentsync.cli.main`.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence


def trains_locally(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether the command line asks for ``train`` on the local launcher, as far as it says: a
    config file may still name another launcher, and then the CLI stops the server again."""
    if environ.get("TORCHELASTIC_RUN_ID") or "-h" in argv or "--help" in argv:
        return False
    if argv and not argv[0].startswith("-") and argv[0] != "train":  # no command means train
        return False
    for i, arg in enumerate(argv):
        if arg == "--launcher" and i + 1 < len(argv):
            return argv[i + 1] == "local"
        if arg.startswith("--launcher="):
            return arg.split("=", 1)[1] == "local"
    return True


def entry() -> None:
    if trains_locally(sys.argv[1:], os.environ):
        from agentsync.forking import start_fork_server

        start_fork_server()
    from agentsync.cli import entry as run_command

    run_command()
