"""Two machines for real: torchrun agents in two network namespaces, one per host (tests/hosts.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ENV, ROOT, train
from hosts import Hosts, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

JOB = ["--task", "digits", "--workers", "4", "--steps", "30", "--seed", "3"]


@pytest.fixture
def hosts():
    with Hosts(2) as made:
        yield made


def torchrun_on(host, rdzv_host, out, *, is_host: bool) -> subprocess.Popen:
    """One torchrun agent with two ranks on ``host``; the c10d rendezvous on ``rdzv_host``.

    The namespaces share the machine's hostname, so each agent says which address it has
    (``--local-addr``) and which interface gloo uses (``GLOO_SOCKET_IFNAME``), and the node that
    hosts the rendezvous store says so (``is_host=1``).
    """
    command = host.command(
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{rdzv_host.address}:29400", "--local-addr", host.address,
        *(["--rdzv-conf", "is_host=1"] if is_host else []),
        "-m", "agentsync", "train", "--launcher", "torchrun", "--out", str(out), *JOB)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**ENV, "GLOO_SOCKET_IFNAME": host.interface})


@pytest.mark.timeout(300)
def test_torchrun_over_two_hosts_equals_the_local_launcher(hosts, tmp_path):
    """2 hosts × 2 ranks over a bridged link give the parameters of the local launcher's W = 4."""
    agents = [torchrun_on(host, hosts[0], tmp_path / "two-hosts", is_host=i == 0) for i, host in enumerate(hosts)]
    outputs = [agent.communicate(timeout=240)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(outputs)
    reference = train(tmp_path / "local", *JOB)
    summary = json.loads((tmp_path / "two-hosts" / "summary.json").read_text())
    assert summary["workers"] == 4 and summary["steps"] == 30
    assert summary["comm"]["bytes_sent"] == reference["comm"]["bytes_sent"]
    ours, local = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("two-hosts", "local"))
    for key, value in local.items():
        assert torch.allclose(ours[key], value, atol=1e-6, rtol=0), key
