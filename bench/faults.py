"""What a lost worker costs: time lost per restart, survivors' accuracy, the reporter's memory.

    .venv/bin/python bench/faults.py [--steps 400] [--repeats 2] [--only restarts|survivors|memory]

* **Restarts.** ``allreduce`` on digits, W = 3, rank 1 SIGKILLed at 50 % of the steps,
  ``--max-restarts 1`` and ``checkpoint_every`` = steps / 10, against the same run uninterrupted:
  wall time lost per failure (both runs include start-up; the restarted one starts twice).
* **Survivors.** ``gossip``, ``local-sgd``, ``diloco`` (and ``ps-async`` for reference), W = 3,
  rank 1 killed at 50 %: final accuracy of the survivors' model against no failure.
* **Reporter memory.** ``charlm`` at 4× the default width (d_model 256, 16× the parameters), W = 4: peak resident
  memory of the reporter against the other ranks' peaks. Every rank writes its own checkpoint
  state; the reporter gathers only statistics and writes one model into the manifest, so the
  difference is what reporting costs. ``checkpoint_rise_mb`` is how much the reporter's peak rose
  while it gathered and wrote the final checkpoint (before per-rank checkpoints: 54–99 MB; now 0).

Each configuration runs ``--repeats`` times; the JSON gives every figure and the spread.
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import run

DIGITS = ["--task", "digits", "--workers", "3", "--set", "comm.timeout_s=30"]


def spread(values: list[float]) -> dict:
    return {"values": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def restarts(steps: int, repeats: int) -> dict:
    every = ["--steps", str(steps), "--set", f"checkpoint_every={steps // 10}", "--set", "eval_every=0"]
    whole, restarted = [], []
    for _ in range(repeats):
        whole.append(run(*DIGITS, *every)[0]["wall_time_s"])
        summary, _ = run(*DIGITS, *every, "--set", f"comm.fault=1:kill@{steps // 2}", "--max-restarts", "1")
        assert summary["restarts"] == 1
        restarted.append(summary["wall_time_s"])
    lost = [r - w for r, w in zip(restarted, whole)]
    return {"strategy": "allreduce", "kill_at_step": steps // 2, "checkpoint_every": steps // 10,
            "uninterrupted_s": spread(whole), "with_one_restart_s": spread(restarted),
            "time_lost_per_failure_s": spread(lost),
            "ratio": spread([r / w for r, w in zip(restarted, whole)])}


def survivors(steps: int, repeats: int) -> dict:
    out = {}
    for strategy in ("gossip", "local-sgd", "diloco", "ps-async"):
        extra = ["--set", "optimizer.lr=0.1"] if strategy == "ps-async" else []
        clean, lost = [], []
        for _ in range(repeats):
            clean.append(run(*DIGITS, "--strategy", strategy, "--steps", str(steps), *extra)[0]["metrics"]["accuracy"])
            summary, _ = run(*DIGITS, "--strategy", strategy, "--steps", str(steps), *extra,
                             "--set", f"comm.fault=1:kill@{steps // 2}")
            assert [x["rank"] for x in summary["lost_ranks"]] == [1]
            lost.append(summary["metrics"]["accuracy"])
        out[strategy] = {"no_failure": spread(clean), "rank_1_lost_at_50pct": spread(lost),
                         "points_lost": statistics.median(clean) - statistics.median(lost)}
    return out


def reporter_memory(repeats: int) -> dict:
    peaks = []
    for _ in range(repeats):
        summary, _ = run("--task", "charlm", "--workers", "4", "--steps", "20", "--set", "task.d_model=256",
                         "--set", "eval_every=0")
        by_rank = summary["peak_rss_mb_by_rank"]
        others = [mb for rank, mb in by_rank.items() if rank != "0"]
        peaks.append({"reporter_mb": by_rank["0"], "other_ranks_max_mb": max(others),
                      "reporter_minus_others_mb": by_rank["0"] - max(others),
                      "checkpoint_rise_mb": summary["checkpoint_rss_rise_mb"]})
    return {"task": "charlm d_model=256", "workers": 4, "runs": peaks,
            "checkpoint_rise_mb": spread([p["checkpoint_rise_mb"] for p in peaks]),
            "reporter_minus_others_mb": spread([p["reporter_minus_others_mb"] for p in peaks])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("restarts", "survivors", "memory"), help="run one part")
    args = parser.parse_args()
    parts = {"restarts": lambda: restarts(args.steps, args.repeats),
             "survivors": lambda: survivors(args.steps, args.repeats),
             "reporter_memory": lambda: reporter_memory(args.repeats)}
    chosen = {k: f for k, f in parts.items() if args.only in (None, k, k.split("_")[-1])}
    print(json.dumps({"benchmark": "faults", **{k: f() for k, f in chosen.items()}}, indent=2))


if __name__ == "__main__":
    main()
