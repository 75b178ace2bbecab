"""Pipeline stages against data parallel at equal processes, on a charlm 4× the default size.

    .venv/bin/python bench/pipeline.py [--steps 40] [--layers 10] [--repeats 1] > bench/results/pipeline.json

The model: charlm with ``task.layers`` blocks (10 blocks: 520,576 parameters, 4.3× the default
2-block model's 120,704). Two processes either way: P = 1 × W = 2 (allreduce) against P = 2 × W = 1
(GPipe, M = 2, 4, 8). Reported per configuration: the largest rank's parameter and optimizer (AdamW)
bytes, and the training loop's step time (summary.json). The measured bubble is the summary's
``bubble.measured``: the share of each stage's time in the schedule not spent computing a
microbatch's forward or backward (waiting on its neighbour, and the messages), mean over the stages.
A second estimate from step times alone is 1 − (T₁ / P) / T_P, T₁ the step of one process holding
the whole model on the same batch (P = W = 1, run just before) and T_P the pipeline's. GPipe's
bubble is (P − 1) / (M + P − 1). On a machine with fewer free cores than processes both estimates
include waiting for a core.
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import run


def train(steps: int, layers: int, *extra: str) -> dict:
    summary, _ = run("--task", "charlm", "--strategy", "allreduce", "--steps", str(steps), "--set", "eval_every=0",
                     "--set", f"task.layers={layers}", "--set", "checkpoint_every=0", *extra)
    return summary


def figures(summary: dict) -> dict:
    memory = summary["memory_per_rank"]
    out = {"step_time_s": summary["step_time_s"], "param_bytes_per_rank": memory["param_bytes"],
           "optimizer_bytes_per_rank": memory["optimizer_bytes"],
           "state_bytes_per_rank": memory["param_bytes"] + memory["optimizer_bytes"],
           "sync_bytes_sent": summary["comm"]["bytes_sent"], "final_loss": summary["metrics"]["loss"]}
    if summary.get("pipeline_comm"):
        out["pipeline_bytes_sent"] = summary["pipeline_comm"]["bytes_sent"]
        out["bubble_measured"] = summary["bubble"]["measured"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    stages, runs = 2, []
    for repeat in range(args.repeats):
        dp = figures(train(args.steps, args.layers, "--workers", "2"))
        pp, ones = {}, []
        for m in (2, 4, 8):  # each pipeline run right after its own one-process baseline: load drifts
            one = figures(train(args.steps, args.layers, "--workers", "1"))
            ones.append(one["step_time_s"])
            fig = figures(train(args.steps, args.layers, "--workers", "1", "--stages", str(stages),
                                "--set", "parallel.schedule=gpipe", "--set", f"parallel.microbatches={m}"))
            fig["one_process_step_time_s"] = one["step_time_s"]
            fig["bubble_from_step_times"] = 1 - (one["step_time_s"] / stages) / fig["step_time_s"]
            fig["bubble_gpipe"] = (stages - 1) / (m + stages - 1)
            fig["state_bytes_vs_dp"] = fig["state_bytes_per_rank"] / dp["state_bytes_per_rank"]
            fig["step_time_vs_dp"] = fig["step_time_s"] / dp["step_time_s"]
            pp[f"M={m}"] = fig
        runs.append({"repeat": repeat, "P1_W1_step_time_s": ones, "P1_W2_allreduce": dp, "P2_W1_gpipe": pp})
    spread = {}
    for m in ("M=2", "M=4", "M=8"):
        for key in ("bubble_measured", "bubble_from_step_times", "step_time_vs_dp", "state_bytes_vs_dp"):
            values = [r["P2_W1_gpipe"][m][key] for r in runs]
            spread[f"{m} {key}"] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    print(json.dumps({"task": "charlm", "layers": args.layers, "steps": args.steps, "processes": 2,
                      "runs": runs, "summary": spread}, indent=2))


if __name__ == "__main__":
    main()
