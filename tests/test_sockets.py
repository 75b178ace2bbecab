"""Every socket a local job listens on is bound to 127.0.0.1, the rendezvous store included
(torch's TCPStore alone would listen on every interface)."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from conftest import ENV, ROOT


def listening(proc: psutil.Process) -> list[str]:
    try:
        return [c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("strategy", ["allreduce", "ps-async"])
def test_every_listening_socket_of_a_local_job_is_on_loopback(tmp_path, strategy):
    # a straggler keeps the job alive long enough to look at it from outside
    job = subprocess.Popen([sys.executable, "-m", "agentsync", "train", "--out", str(tmp_path / "run"),
                            "--strategy", strategy, "--steps", "60", "--straggler", "0:0.05"],
                           cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[int, list[str]] = {}
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:
        for child in psutil.Process(job.pid).children(recursive=True):
            addresses = listening(child)
            if addresses:
                seen[child.pid] = addresses
        time.sleep(0.2)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stderr
    ranks = 3 if strategy == "ps-async" else 2
    assert len(seen) >= ranks, seen  # every rank was seen listening (gloo's pairs, rank 0's store)
    assert {ip for addresses in seen.values() for ip in addresses} == {"127.0.0.1"}, seen

