"""What a simulated slow network does to measured step times (claims the unit tests no longer time).

    .venv/bin/python bench/slow_network.py [--latency 20ms] [--steps 48] [--period 8]

Runs digits with allreduce and local-sgd:period=P at W = 1 and 2 on a ``--net latency=L`` link
(one at a time, through the compare matrix) and prints JSON with three checks:

* ``allreduce_slowdown_vs_model``: (step time at W = 2 − at W = 1) / the cost model's all-reduce
  time (digits' model is small, so two workers sum it by one exchange: one latency). At least
  about 0.95 is expected (up to one backward pass of the delay may hide behind compute).
* ``local_sgd_faster_step``: local SGD's measured step time is below allreduce's at W = 2.
* ``local_sgd_faster_wall``: ... and so is its whole run's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from agentsync.comm import NetSim
from agentsync.config import load_config
from agentsync.report.advise import model_bytes
from agentsync.report.costs import StepCost
from agentsync.report.matrix import StrategySpec, Study, run_matrix
from agentsync.report.results import collect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", default="20ms")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--period", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    net = f"latency={args.latency}"
    local = StrategySpec("local-sgd", (("period", str(args.period)),))
    study = Study(task="digits", strategies=(StrategySpec("allreduce"), local), workers=(1, 2), steps=args.steps,
                  net=net, overrides=("eval_every=16",))
    with tempfile.TemporaryDirectory() as out:
        run_matrix(study, Path(out))
        runs = {(r.cell.strategy.label, r.cell.workers): r.summary for r in collect(study, Path(out)) if r.ok}
    step = {key: s["step_time_s"] for key, s in runs.items()}
    wall = {key: s["wall_time_s"] for key, s in runs.items()}
    model = StepCost.all_reduce(NetSim.parse(net), model_bytes(load_config(None, flags={})), 2).seconds
    print(json.dumps({
        "net": net, "steps": args.steps,
        "step_time_s": {f"{label} W={w}": t for (label, w), t in step.items()},
        "wall_time_s": {f"{label} W={w}": t for (label, w), t in wall.items()},
        "allreduce_model_extra_s": model,
        "allreduce_slowdown_vs_model": (step["allreduce", 2] - step["allreduce", 1]) / model,
        "local_sgd_faster_step": step[local.label, 2] < step["allreduce", 2],
        "local_sgd_faster_wall": wall[local.label, 2] < wall["allreduce", 2],
    }, indent=2))


if __name__ == "__main__":
    main()
