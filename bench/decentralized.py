"""Bytes sent and wall time to reach 0.9 accuracy on digits with W = 4, decentralized strategies
against allreduce.

    .venv/bin/python bench/decentralized.py [--steps 400] [--target 0.9]

Each configuration trains once with evaluation every 10 steps; "to target" is read at the first
evaluation reaching the target: its time since start and the bytes all workers sent until then
(rank 0's count × W: every worker of these strategies sends the same volume).
"""
from __future__ import annotations

import argparse
import json

from common import first_reaching, run

CONFIGS = {
    "allreduce": ["--strategy", "allreduce"],
    "gossip-ring": ["--strategy", "gossip", "--set", "strategy.topology=ring"],
    "gossip-random": ["--strategy", "gossip", "--set", "strategy.topology=random"],
    "gossip-exponential": ["--strategy", "gossip", "--set", "strategy.topology=exponential"],
    "local-sgd-1": ["--strategy", "local-sgd", "--set", "strategy.period=1"],
    "local-sgd-4": ["--strategy", "local-sgd", "--set", "strategy.period=4"],
    "local-sgd-16": ["--strategy", "local-sgd", "--set", "strategy.period=16"],
    "diloco": ["--strategy", "diloco"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args()
    results = {}
    for name, extra in CONFIGS.items():
        summary, events = run("--task", "digits", "--workers", str(args.workers), "--steps", str(args.steps),
                              "--set", "eval_every=10", *extra)
        hit = first_reaching(events, "accuracy", args.target)
        results[name] = {
            "final_accuracy": summary["metrics"]["accuracy"],
            "steps_to_target": hit["step"] if hit else None,
            "seconds_to_target": hit["time_s"] if hit else None,
            "bytes_to_target": hit["bytes_sent"] * args.workers if hit else None,
            "bytes_total": summary["comm"]["bytes_sent"],
            "wall_time_s": summary["wall_time_s"],
        }
    base = results["allreduce"]
    for r in results.values():
        if r["bytes_to_target"] and base["bytes_to_target"]:
            r["bytes_to_target_vs_allreduce"] = r["bytes_to_target"] / base["bytes_to_target"]
            r["seconds_to_target_vs_allreduce"] = r["seconds_to_target"] / base["seconds_to_target"]
    print(json.dumps({"benchmark": "decentralized", "task": "digits", "workers": args.workers,
                      "target_accuracy": args.target, "results": results}, indent=2))


if __name__ == "__main__":
    main()
