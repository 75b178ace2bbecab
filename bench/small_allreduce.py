"""Time of a two-rank sum: agentsync's Comm (one exchange up to 256 KiB) against gloo's ring all-reduce.

    .venv/bin/python bench/small_allreduce.py [--calls 300]

Two processes (gloo, 127.0.0.1, one thread each) sum float32 tensors of 18 KiB (cartpole-ppo's
model) to 4 MiB, the two ways interleaved call by call, each call after about a millisecond of
matrix products (a training step's compute, so the ranks arrive as they would in training).
Rank 0 prints JSON: per size, the median and mean milliseconds of each and their ratios
(agentsync / gloo). Above 256 KiB agentsync uses the ring itself, so those rows measure nothing
but noise: they show where the exchange stops paying.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentsync.comm import Comm, CommConfig, free_port

SIZES = (4_578, 16_384, 65_536, 262_144, 1_048_576)  # float32 values: 18 KiB ... 4 MiB


def worker(rank: int, port: int, calls: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    comm = Comm.from_env(CommConfig(backend="gloo", device="cpu"))
    work = torch.randn(192, 192)
    rows = []
    for numel in SIZES:
        tensor = torch.randn(numel)
        times = {"agentsync": [], "gloo": []}
        for call in range(calls):
            for name in (("agentsync", "gloo") if call % 2 else ("gloo", "agentsync")):
                for _ in range(4):
                    work @ work
                start = time.perf_counter()
                comm.all_reduce_(tensor) if name == "agentsync" else dist.all_reduce(tensor)
                times[name].append(time.perf_counter() - start)
                tensor.div_(2)
        kept = {k: v[calls // 10:] for k, v in times.items()}  # the first tenth warms up
        row = {"kib": numel * 4 / 1024}
        for stat in ("median", "mean"):
            for name, values in kept.items():
                row[f"{name}_ms_{stat}"] = 1e3 * getattr(statistics, stat)(values)
            row[f"ratio_{stat}"] = row[f"agentsync_ms_{stat}"] / row[f"gloo_ms_{stat}"]
        rows.append(row)
    if rank == 0:
        queue.put(rows)
    comm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=worker, args=(rank, port, args.calls, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    rows = queue.get(timeout=1200)
    for p in procs:
        p.join()
    print(json.dumps({"benchmark": "small_allreduce", "workers": 2, "calls": args.calls,
                      "rows": [{k: round(v, 4) for k, v in row.items()} for row in rows]}, indent=1))


if __name__ == "__main__":
    main()
