"""How close `agentsync advise` comes to measured step times on the simulated network it models.

    .venv/bin/python bench/advise_accuracy.py [--task digits] [--steps 30] [--workers 2,4]

For each (network, W) the grid runs real `agentsync train` jobs of each strategy (one at a time,
through the compare matrix) with `--net`, reads each run's measured `step_time_s` (training loop
only), and asks advise for its prediction. Prints JSON: every point, and the mean absolute
percentage error (MAPE) overall and per strategy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from agentsync.comm import NetSim
from agentsync.report.advise import advise
from agentsync.report.matrix import StrategySpec, Study, run_matrix
from agentsync.report.results import collect

NETS = ("latency=5ms,bandwidth=1Gbit", "latency=20ms,bandwidth=100Mbit", "latency=2ms,bandwidth=20Mbit")
STRATEGIES = ("allreduce", "ps-sync", "gossip", "local-sgd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--nets", default=";".join(NETS), help="networks separated by ';'")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    strategies, workers = args.strategies.split(","), [int(w) for w in args.workers.split(",")]
    points = []
    for spec in args.nets.split(";"):
        study = Study(task=args.task, strategies=tuple(StrategySpec(s) for s in strategies), workers=tuple(workers),
                      steps=args.steps, net=spec, overrides=("eval_every=0",))
        with tempfile.TemporaryDirectory() as out:
            run_matrix(study, Path(out))
            measured = {(r.cell.strategy.name, r.cell.workers): r.summary["step_time_s"]
                        for r in collect(study, Path(out)) if r.ok}
        for w in workers:
            for p in advise(args.task, strategies, w, NetSim.parse(spec)):
                actual = measured.get((p.strategy, w))
                if actual:
                    points.append({"net": spec, "workers": w, "strategy": p.strategy, "predicted_s": p.step_time_s,
                                   "measured_s": actual, "error": abs(p.step_time_s - actual) / actual})
    by_strategy = {s: statistics.fmean(p["error"] for p in points if p["strategy"] == s)
                   for s in strategies if any(p["strategy"] == s for p in points)}
    print(json.dumps({"task": args.task, "steps": args.steps, "points": points,
                      "mape": statistics.fmean(p["error"] for p in points) if points else None,
                      "mape_by_strategy": by_strategy, "max_error": max((p["error"] for p in points), default=None)},
                     indent=2))


if __name__ == "__main__":
    main()
