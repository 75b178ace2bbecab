"""Updates per second of the parameter-server strategies against allreduce, W = 2 and 4, with
and without a straggler (rank 1 sleeping 20 ms per step), on the digits MLP.

    .venv/bin/python bench/ps_throughput.py [--steps 100]

Updates are optimizer steps applied to the model: one per step for allreduce and ps-sync, one
per pushed gradient for ps-async and ssp. Time is the training loop's, start-up excluded.
"""
from __future__ import annotations

import argparse
import json

from common import loop_seconds, run

STRATEGIES = ("allreduce", "ps-sync", "ps-async", "ssp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--straggler", default="1:0.02")
    args = parser.parse_args()
    rows = []
    for workers in (2, 4):
        for straggler in ("", args.straggler):
            base = None
            for strategy in STRATEGIES:
                extra = ["--straggler", straggler] if straggler else []
                summary, events = run("--task", "digits", "--strategy", strategy, "--workers", str(workers),
                                      "--steps", str(args.steps), "--set", "eval_every=0", *extra)
                updates = summary.get("updates", summary["steps"])
                rate = updates / loop_seconds(events)
                base = base or rate
                rows.append({"strategy": strategy, "workers": workers, "straggler": straggler or None,
                             "updates": updates, "updates_per_s": round(rate, 1),
                             "vs_allreduce": round(rate / base, 3),
                             "accuracy": summary["metrics"]["accuracy"]})
    print(json.dumps({"benchmark": "ps_throughput", "steps": args.steps, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
