"""`advise` against a link the kernel shapes: two hosts (network namespaces) joined by veth links
capped with tc's token bucket filter, one torchrun agent and rank on each.

    sudo .venv/bin/python bench/bandwidth_cap.py [--rates 20mbit,100mbit] [--steps 40]

For each rate and strategy the job trains ``digits`` with W = 2 over the capped link (no ``--net``
simulation), reads its measured ``step_time_s`` (training loop only), and asks ``advise`` for the
same bandwidth with no added latency. This checks the cost model against a real shaped link, not
only against its own simulator (bench/advise_accuracy.py). Needs root and iproute2 (tbf; netem is
not needed). Prints JSON: every point and the mean absolute percentage error.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hosts import Hosts, unavailable  # noqa: E402  (the tests' namespace hosts)

from agentsync.comm import NetSim  # noqa: E402
from agentsync.report.advise import advise  # noqa: E402

STRATEGIES = ("allreduce", "gossip", "local-sgd")


def cap(host, rate: str) -> None:
    """Shape everything ``host`` sends to ``rate`` (both directions are capped, each at its sender)."""
    subprocess.run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "replace", "dev", host.interface, "root",
                    "tbf", "rate", rate, "burst", "64kb", "latency", "500ms"], check=True, capture_output=True)


def train_over(hosts, strategy: str, steps: int, out: Path) -> dict:
    agents = []
    for i, host in enumerate(hosts):
        command = host.command(
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{hosts[0].address}:29400", "--local-addr", host.address,
            *(["--rdzv-conf", "is_host=1"] if i == 0 else []),
            "-m", "agentsync", "train", "--launcher", "torchrun", "--out", str(out), "--task", "digits",
            "--strategy", strategy, "--workers", "2", "--steps", str(steps), "--set", "eval_every=0")
        agents.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": host.interface}))
    errors = [agent.communicate(timeout=600)[1] for agent in agents]
    if any(agent.returncode for agent in agents):
        raise SystemExit(f"{strategy} over the capped link failed:\n" + "\n".join(errors))
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20mbit,100mbit", help="tc rates, comma-separated")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    if unavailable():
        raise SystemExit(f"bandwidth_cap: {unavailable()}")
    strategies = args.strategies.split(",")
    points = []
    with Hosts(2, subnet=215) as hosts, tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates.split(","):
            for host in hosts:
                cap(host, rate)
            bandwidth = rate.lower().replace("mbit", "Mbit").replace("gbit", "Gbit")
            predicted = {p.strategy: p.step_time_s for p in advise("digits", strategies, 2,
                                                                   NetSim.parse(f"latency=0ms,bandwidth={bandwidth}"))}
            for strategy in strategies:
                summary = train_over(hosts, strategy, args.steps, Path(tmp) / f"{rate}-{strategy}")
                measured = summary["step_time_s"]
                points.append({"rate": rate, "strategy": strategy, "predicted_s": predicted[strategy],
                               "measured_s": measured, "error": abs(predicted[strategy] - measured) / measured})
    print(json.dumps({"task": "digits", "workers": 2, "steps": args.steps, "points": points,
                      "mape": statistics.fmean(p["error"] for p in points)}, indent=2))


if __name__ == "__main__":
    main()
