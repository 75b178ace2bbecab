"""The Ray launcher: one Ray actor per rank, placed by a placement group, outputs back at the driver.

    agentsync train --launcher ray --workers 4              # RAY_ADDRESS=HEAD:6379 for a cluster

1. **Placement.** A placement group holds one bundle per rank (``launch.threads_per_worker``
   CPUs each, strategy ``SPREAD``), as Ray Train's ``ScalingConfig`` does; each rank's actor
   runs in its own bundle. A cluster without room for every bundle is an error, not a hang.
2. **Rendezvous.** Found at run time: rank 0's actor reports its node's address and a port free
   there, and every rank meets at ``MASTER_ADDR=that address`` (``comm.master_port`` fixes the
   port). When every rank is on one node they meet at ``comm.master_addr`` (127.0.0.1) instead,
   so a one-machine run listens on loopback only. ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` count the
   ranks on the same node. Where the node's address is not loopback and ``GLOO_SOCKET_IFNAME`` is unset, gloo is told the interface that
   holds it (a hostname that resolves to 127.0.x.x would otherwise send gloo to loopback).
3. **Outputs.** Ranks on the driver's node write into the run folder itself. Ranks on other
   nodes, whose disks may be separate (Ray syncs nothing to the head since 2.7), write into a
   staging folder on their node, seeded with the run folder's checkpoint on ``--resume`` (the
   manifest and its step folder), and hand back what they wrote when they finish (of their rank
   folders, the latest step's); the driver appends their ``metrics.jsonl`` lines, writes their
   other files (summary, manifest, rank folders, TensorBoard runs) into its run folder, then keeps
   the manifest's step folder only. Mid-run checkpoints of ranks on another node arrive only with
   the run's end: a job that crashes before then resumes from its last complete checkpoint, or,
   where a rank folder is missing, is refused.
4. **Failure.** The first rank that fails ends the job: every other actor is killed and the
   error names the rank. Ranks the job goes on without (an actor-learner job's actors, workers of
   a strategy that tolerates their loss) are said on stderr instead, and the survivors finish.

Needs the ``ray`` extra (``pip install 'agentsync[ray]'``). Connects to a running cluster when
``RAY_ADDRESS`` is set, else starts a local one bound to 127.0.0.1 (and shuts it down after), even
where a cluster started with ``ray start`` runs on this machine.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from agentsync.checkpoint import CHECKPOINT, STATES, atomic_write, load_checkpoint, prune_states
from agentsync.comm import free_port
from agentsync.config import RunConfig
from agentsync.errors import ConfigError, JobFailed
from agentsync.launch import Announce, freeze_imports, prepare_run_dir, tolerated_loss
from agentsync.metrics import METRICS
from agentsync.runtime import ProgressFactory, run_worker

PLACEMENT_TIMEOUT_S = 60.0


class Rank:
    """One rank of the job, as a Ray actor: says where it runs, then runs the rank to the end."""

    def node(self) -> tuple[str, str]:
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def free_port(self, host: str) -> int:
        return free_port(host)  # on this rank's node, where it will listen

    def run(self, cfg: RunConfig, run_dir: str, resume: bool, progress, env: dict,
            checkpoint: dict[str, bytes] | None) -> dict[str, bytes] | None:
        """Run the rank in ``run_dir``, or, given ``checkpoint`` (its files) or staging, in a folder of
        this node whose new files come back (relative path -> bytes)."""
        import torch

        os.environ.update(env)
        interface = None if env["MASTER_ADDR"].startswith("127.") else gloo_interface(self.node()[1])
        if interface and "GLOO_SOCKET_IFNAME" not in os.environ:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
        torch.set_num_threads(cfg.launch.threads_per_worker)
        freeze_imports()
        if run_dir:
            run_worker(cfg, run_dir, resume=resume, progress=progress)
            return None
        staging = Path(tempfile.mkdtemp(prefix="agentsync-ray-"))
        try:
            write_files(staging, checkpoint or {})
            run_worker(cfg, staging, resume=resume, progress=progress)
            return new_files(staging, handed=checkpoint or {})
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def gloo_interface(address: str) -> str | None:
    """The network interface holding ``address`` (None for loopback or an address not found here)."""
    import psutil

    if address.startswith("127."):
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addrs):
            return name
    return None


def local_ranks(nodes: list[str]) -> list[tuple[int, int]]:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) of each rank, counting the ranks on the same node in rank order."""
    seen: dict[str, int] = {}
    out = []
    for node in nodes:
        out.append(seen.get(node, 0))
        seen[node] = out[-1] + 1
    return [(r, seen[node]) for r, node in zip(out, nodes)]


def describe_placement(addresses: list[str]) -> str:
    """``ranks 0,1 on 10.0.0.1; 2,3 on 10.0.0.2``: where each rank runs."""
    by_node: dict[str, list[str]] = {}
    for rank, address in enumerate(addresses):
        by_node.setdefault(address, []).append(str(rank))
    return "; ".join(f"rank{'s' if len(r) > 1 else ''} {','.join(r)} on {a}" for a, r in by_node.items())


def checkpoint_files(run_dir: Path) -> dict[str, bytes] | None:
    """The run's checkpoint as files to hand a rank on another node: the manifest and its step folder."""
    if not (run_dir / CHECKPOINT).exists():
        return None
    states = load_checkpoint(run_dir).get("states")  # none in a format 1 checkpoint: one file
    paths = [run_dir / CHECKPOINT, *(p for p in (run_dir / states).rglob("*") if p.is_file() and states)]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in paths}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def new_files(staging: Path, handed: dict[str, bytes]) -> dict[str, bytes]:
    """What a rank wrote in ``staging``: not the files it was handed, and of its rank folders only the
    latest step's (earlier ones belong to checkpoints the reporter has since replaced)."""
    files = {str(p.relative_to(staging)): p for p in staging.rglob("*") if p.is_file()}
    steps = [int(m.group(1)) for name in files if (m := re.match(rf"{STATES}/step-(\d+)/", name))]
    latest = f"{STATES}/step-{max(steps, default=-1)}/"
    out = {}
    for name, path in files.items():
        if name.startswith(f"{STATES}/") and not name.startswith(latest):
            continue
        data = path.read_bytes()
        if handed.get(name) != data:
            out[name] = data
    return out


def merge_outputs(run_dir: Path, files: dict[str, bytes]) -> None:
    """Files a rank on another node wrote: metrics lines appended, everything else written whole."""
    for name, data in files.items():
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == METRICS:
            with open(path, "ab") as f:
                f.write(data)
        else:
            atomic_write(path, data)


def launch_ray(cfg: RunConfig, *, resume: bool, progress: ProgressFactory | None,
               announce: Announce | None = None) -> bool:
    try:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError:
        raise ConfigError("launch.name is ray but Ray is not installed; pip install 'agentsync[ray]'") from None
    run_dir = prepare_run_dir(cfg, resume=resume, announce=announce).resolve()
    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=max(2, cfg.world_size * cfg.launch.threads_per_worker), include_dashboard=False,
                     _node_ip_address="127.0.0.1")
    world, cpus = cfg.world_size, cfg.launch.threads_per_worker
    group = placement_group([{"CPU": cpus}] * world, strategy="SPREAD")
    actors = []
    try:
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise JobFailed(f"the Ray cluster has no room for {world} ranks of {cpus} CPU(s) each "
                            f"(cluster CPUs: {ray.cluster_resources().get('CPU', 0):g}) after {PLACEMENT_TIMEOUT_S:g} s")
        actor = ray.remote(Rank)
        actors = [actor.options(num_cpus=cpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=r)).remote() for r in range(world)]
        nodes = ray.get([a.node.remote() for a in actors])
        print(f"ray: {describe_placement([ip for _, ip in nodes])}", file=sys.stderr)
        # one node: meet over loopback (comm.master_addr); Ray registers even its local instance under the
        # machine's address, where the rendezvous store would listen beyond this machine
        master = nodes[0][1] if len({node for node, _ in nodes}) > 1 else cfg.comm.master_addr
        port = cfg.comm.master_port or ray.get(actors[0].free_port.remote(master))
        here = ray.get_runtime_context().get_node_id()
        checkpoint = checkpoint_files(run_dir) if resume else None
        refs = []
        placed = zip(actors, nodes, local_ranks([node for node, _ in nodes]))
        for r, (a, (node, _), (local_rank, local_world)) in enumerate(placed):
            env = {"RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
                   "LOCAL_WORLD_SIZE": str(local_world), "MASTER_ADDR": master, "MASTER_PORT": str(port)}
            same_node = node == here
            refs.append(a.run.remote(cfg, str(run_dir) if same_node else "", resume, progress, env,
                                     None if same_node else checkpoint))
        for files in wait_all(refs, tolerated=lambda rank: tolerated_loss(cfg, rank)):
            if files:
                merge_outputs(run_dir, files)
        if (run_dir / CHECKPOINT).exists():  # rank folders merged from other nodes: keep the manifest's step only
            prune_states(run_dir, int(load_checkpoint(run_dir)["step"]), later_too=True)
    finally:
        for a in actors:
            ray.kill(a)
        remove_placement_group(group)
        if started:
            ray.shutdown()
    return True


def wait_all(refs: list, tolerated=lambda rank: False) -> list:
    """Every rank's result (None for a tolerated loss); the first other rank to fail ends the job, named."""
    import ray

    results, pending = [None] * len(refs), list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rank = refs.index(done[0])
        try:
            results[rank] = ray.get(done[0])
        except Exception as e:  # RayTaskError / ActorDiedError: its first line says what happened
            what = str(e).strip().splitlines()[0]
            if not tolerated(rank):
                raise JobFailed(f"rank {rank} failed under Ray: {what}") from None
            print(f"agentsync: rank {rank} was lost under Ray ({what}); the job goes on", file=sys.stderr)
    return results
