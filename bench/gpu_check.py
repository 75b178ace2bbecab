"""The GPU path against the CPU one: every strategy on ``digits`` and ``charlm`` with ``comm.device=cuda``.

    .venv/bin/python bench/gpu_check.py [--steps 60] [--tasks digits,charlm] [--strategies allreduce,gossip]

For each task × strategy it trains twice through the real CLI, once on the CPU and once with
``--set comm.device=cuda``: W = 1 over NCCL where the job is one process, and W = 2 on one GPU
over gloo (NCCL refuses two ranks on one device). It compares the rank-0 training-loss curves
and the final metric, and prints JSON: per cell ``ok``, the largest relative loss difference, both
final metrics, or the error line of a run that failed. Without a CUDA device it says so and exits 0.
Numbers differ by float non-associativity on the GPU, so a cell is ``close`` when the curves agree
within ``--rtol`` (default 5 %), not bit for bit.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from agentsync.sync import STRATEGIES

AGENTSYNC = [sys.executable, "-m", "agentsync", "train"]


def run(out: Path, args: list[str], timeout: float) -> dict:
    """Train into ``out``; the summary and rank 0's train losses, or the error line."""
    result = subprocess.run([*AGENTSYNC, "--out", str(out), *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        return {"error": lines[-1][:300]}
    summary = json.loads((out / "summary.json").read_text())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [e["loss"] for e in events if e["event"] == "train" and e["rank"] == 0]
    return {"metric": summary["metrics"][summary["metric"]], "losses": losses}


def compare(cpu: dict, gpu: dict, rtol: float) -> dict:
    if "error" in cpu or "error" in gpu:
        return {"ok": False, "cpu_error": cpu.get("error"), "gpu_error": gpu.get("error")}
    pairs = list(zip(cpu["losses"], gpu["losses"]))
    worst = max((abs(a - b) / max(abs(a), 1e-8) for a, b in pairs), default=0.0)
    return {"ok": True, "close": worst <= rtol, "max_rel_loss_diff": worst,
            "cpu_metric": cpu["metric"], "gpu_metric": gpu["metric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tasks", default="digits,charlm")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rtol", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_check", "ran": False, "reason": "no CUDA device on this machine"}))
        return
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for strategy in args.strategies.split(","):
                for workers, backend in ((1, "nccl"), (2, "gloo")):
                    base = ["--task", task, "--strategy", strategy, "--workers", str(workers), "--steps", str(args.steps),
                            "--set", "log_every=5", "--set", "eval_every=0"]
                    if strategy.startswith("ps-") or strategy in ("ssp", "easgd"):
                        backend = "gloo"  # a server is one more process on the same GPU
                    name = f"{task}-{strategy}-w{workers}"
                    cpu = run(Path(tmp) / f"{name}-cpu", [*base, "--set", "comm.device=cpu"], args.timeout)
                    gpu = run(Path(tmp) / f"{name}-gpu", [*base, "--set", "comm.device=cuda",
                                                          "--set", f"comm.backend={backend}"], args.timeout)
                    cells.append({"task": task, "strategy": strategy, "workers": workers, "backend": backend,
                                  **compare(cpu, gpu, args.rtol)})
                    print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "gpu_check", "ran": True, "device": torch.cuda.get_device_name(0),
                      "cells": cells, "all_close": all(c.get("close") for c in cells)}, indent=2))


if __name__ == "__main__":
    main()
