"""Updates per second of the parameter-server strategies against allreduce, W = 2 and 4, with
and without a straggler (rank 1 sleeping 20 ms per step), on the digits MLP.

    .venv/bin/python bench/ps_throughput.py [--steps 100]

Updates are optimizer steps applied to the model: one per step for allreduce and ps-sync, one
per pushed gradient for ps-async and ssp. Time is the training loop's, start-up excluded.

``backup_workers`` is TensorFlow's SyncReplicasOptimizer claim, measured: ps-sync with W = 3 and
rank 1 sleeping 0.2 s per step, aggregating all 3 replicas (everyone waits for the straggler)
against 2 (it becomes a backup whose late gradients are dropped). Step time is the workers'
mean training-loop step; the claim is ratio < 0.5 (about (0.2 + 2ε)/3 against 0.2).
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
    parser.add_argument("--only-backup", action="store_true", help="run the backup-workers comparison only")
    args = parser.parse_args()
    backup = backup_workers()
    if args.only_backup:
        print(json.dumps({"benchmark": "ps_throughput", "backup_workers": backup}, indent=2))
        return
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
    print(json.dumps({"benchmark": "ps_throughput", "steps": args.steps, "results": rows,
                      "backup_workers": backup}, indent=2))


def backup_workers(steps: int = 20) -> dict:
    """Mean worker step time of ps-sync aggregating 3 of 3 replicas against 2 of 3, with a straggler."""
    times = {}
    for replicas in (3, 2):
        summary, _ = run("--task", "digits", "--strategy", "ps-sync", "--workers", "3", "--steps", str(steps),
                         "--straggler", "1:0.2", "--set", "eval_every=0",
                         "--set", f"strategy.replicas_to_aggregate={replicas}")
        times[replicas] = {"step_time_s": round(summary["step_time_s"], 4),
                           "dropped_gradients": summary["dropped_gradients"], "updates": summary["updates"]}
    return {"aggregate_all_3": times[3], "aggregate_2": times[2],
            "step_time_ratio": round(times[2]["step_time_s"] / times[3]["step_time_s"], 3)}


if __name__ == "__main__":
    main()
