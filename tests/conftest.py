"""Shared fixtures: run the real CLI, and never leave a child process behind.

Tests of the command itself (exit codes, what it prints) run it in a subprocess as a user would
(:func:`agentsync`). Tests that only need a run's outputs call the CLI's ``main`` in this process
(:func:`train`): the ranks are then forked from one fork server that the whole session shares, so a
run starts in a fraction of a second instead of importing torch twice. That server (and
multiprocessing's resource tracker) outlives each test; every other child process does not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


FORK_SERVER = "from multiprocessing.forkserver import main"  # in a fork server's command line
SHARED = (FORK_SERVER, "from multiprocessing.resource_tracker import main")


def descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def shared(proc: psutil.Process) -> bool:
    """This session's fork server or resource tracker (a child of this process, not of a rank)."""
    try:
        return proc.ppid() == os.getpid() and any(s in " ".join(proc.cmdline()) for s in SHARED)
    except psutil.Error:
        return False


def reap(keep_shared: bool = False) -> None:
    procs = [p for p in descendants() if not (keep_shared and shared(p))]
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


@pytest.fixture(autouse=True)
def reap_children():
    """Every test ends with no child process alive, whatever it did, but the shared fork server."""
    yield
    reap(keep_shared=True)


@pytest.fixture(scope="session", autouse=True)
def reap_children_at_exit():
    yield
    reap()


def agentsync(*args: str, timeout: float = 240, cwd: Path | None = None, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run ``python -m agentsync ARGS`` as a user would; a hang fails the test instead of blocking CI."""
    return subprocess.run([sys.executable, "-m", "agentsync", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=env or ENV)


def torchrun_script(script: str, nproc: int, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/SCRIPT ARGS`` under ``torchrun --standalone`` with ``nproc`` processes."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                           str(ROOT / "tests" / "scripts" / script), *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def train(out: Path, *args: str) -> dict:
    """Train into ``out`` with the local launcher, through the CLI's ``main`` in this process, and
    return its summary.json; fails the test with the exit code otherwise (pytest shows what the
    command printed). A hang is the test's timeout."""
    from agentsync.cli import main

    code = main(["train", "--out", str(out), *args])
    assert code == 0, f"agentsync train exited {code}"
    return json.loads((out / "summary.json").read_text())


def train_in_subprocess(out: Path, *args: str, timeout: float = 240) -> dict:
    """:func:`train` in a process of its own, for launchers that must not run inside pytest (Ray)."""
    result = agentsync("train", "--out", str(out), *args, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads((out / "summary.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_train_refused(argv: list[str], expected: str, folder: Path, capsys) -> None:
    """``agentsync train ARGV``, run in ``folder`` (the caller's working directory), exits 2 with one
    line that names ``expected``, and writes nothing."""
    from agentsync.cli import main

    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("agentsync: error: ") and expected in err, err
    assert list(folder.iterdir()) == []
