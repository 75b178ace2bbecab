"""Two machines for real: torchrun agents, and a Ray cluster, in two network namespaces (tests/hosts.py)."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ENV, ROOT, train
from hosts import Hosts, unavailable

JOB = ["--task", "digits", "--workers", "4", "--steps", "30", "--seed", "3"]


@pytest.fixture
def hosts():
    if unavailable():
        pytest.skip(unavailable())
    hosts = Hosts(2)
    try:
        made = hosts.__enter__()
    except subprocess.CalledProcessError as e:  # e.g. a container without CAP_NET_ADMIN
        pytest.skip(f"network namespaces cannot be made here: {' '.join(e.cmd)}: {e.stderr.decode().strip()}")
    try:
        yield made
    finally:
        hosts.__exit__()


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
    assert_same_model(tmp_path / "two-hosts", tmp_path / "local")


@pytest.fixture
def ray_cluster(hosts, tmp_path):
    """A Ray head on the first host and a node on the second, each started from its own working
    directory, with token authentication; yields the environment a driver on the head needs."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="asray-")  # short: Ray's unix sockets live under it
    env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head, node = hosts
    common = ["--num-cpus", "2", "--disable-usage-stats", "--temp-dir", temp]
    for host, args in ((head, ["--head", "--port", "6379", "--include-dashboard", "false"]),
                       (node, ["--address", f"{head.address}:6379"])):
        workdir = tmp_path / f"wd-{host.address}"
        workdir.mkdir()
        subprocess.run(host.command(ray, "start", "--node-ip-address", host.address, *args, *common),
                       check=True, capture_output=True, timeout=120, cwd=workdir, env=env)
    try:
        yield {**env, "RAY_ADDRESS": f"{head.address}:6379"}
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # the hosts' teardown kills Ray's processes


def ray_driver(host, env, out, *args):
    return subprocess.run(host.command(sys.executable, "-m", "agentsync", "train", "--launcher", "ray", "--out", str(out),
                                       *args), capture_output=True, text=True, timeout=240, cwd=out.parent, env=env)


@pytest.mark.timeout(400)
def test_ray_over_two_nodes_spreads_ranks_and_brings_outputs_to_the_driver(hosts, ray_cluster, tmp_path):
    """Ranks spread over both nodes by a placement group, meet at rank 0's node address, and
    every output (metrics of all ranks, TensorBoard runs, summary, checkpoint) lands in the
    driver's run folder; the result equals the local launcher's."""
    result = ray_driver(hosts[0], ray_cluster, tmp_path / "ray", *JOB)
    assert result.returncode == 0, result.stderr
    placement = next(line for line in result.stderr.splitlines() if line.startswith("ray: "))
    assert all(host.address in placement for host in hosts), placement
    run = tmp_path / "ray"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {e["rank"] for e in events if e["event"] == "train"} == {0, 1, 2, 3}
    assert sorted(p.name for p in (run / "tb").iterdir()) == [f"rank-{r}" for r in range(4)]
    reference = train(tmp_path / "local", *JOB)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["comm"]["bytes_sent"] == reference["comm"]["bytes_sent"]
    assert_same_model(run, tmp_path / "local")
    # --resume: ranks on the other node get the checkpoint in their staging folder, and the run
    # continues as the local launcher's resumed run does
    resumed = subprocess.run(hosts[0].command(sys.executable, "-m", "agentsync", "train", "--resume", str(run),
                                              "--steps", "45"),
                             capture_output=True, text=True, timeout=240, cwd=tmp_path, env=ray_cluster)
    assert resumed.returncode == 0, resumed.stderr
    train(tmp_path / "local45", *JOB[:-4], "--steps", "45", "--seed", "3")
    assert json.loads((run / "summary.json").read_text())["steps"] == 45
    assert_same_model(run, tmp_path / "local45")


def assert_same_model(run_dir, reference_dir) -> None:
    ours, local = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (run_dir, reference_dir))
    for key, value in local.items():
        assert torch.allclose(ours[key], value, atol=1e-6, rtol=0), key


@pytest.mark.timeout(400)
def test_a_killed_ray_rank_ends_the_job_naming_it(hosts, ray_cluster, tmp_path):
    start = time.monotonic()
    result = ray_driver(hosts[0], ray_cluster, tmp_path / "ray", *JOB[:-4], "--steps", "200",
                        "--set", "comm.fault=2:kill@10", "--set", "comm.timeout_s=30")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("agentsync: error: rank 2 failed under Ray"), result.stderr
    assert time.monotonic() - start < 120


def test_local_ranks_count_the_ranks_of_each_node_in_rank_order():
    from agentsync.launch.ray import describe_placement, local_ranks

    assert local_ranks(["a", "b", "a", "b", "a"]) == [(0, 3), (0, 2), (1, 3), (1, 2), (2, 3)]
    assert describe_placement(["10.0.0.1", "10.0.0.2", "10.0.0.1"]) == "ranks 0,2 on 10.0.0.1; rank 1 on 10.0.0.2"
