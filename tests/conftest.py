"""Shared fixtures: run the real CLI in a subprocess, and never leave a child process behind."""
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


def descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def reap() -> None:
    procs = descendants()
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


@pytest.fixture(autouse=True)
def reap_children():
    """Every test ends with no child process alive, whatever it did."""
    yield
    reap()


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


def train(out: Path, *args: str, timeout: float = 240) -> dict:
    """Train into ``out`` and return its summary.json; fails the test with the CLI's output otherwise."""
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
