"""Per-step time of agentsync ``allreduce`` against plain torch DDP, same model, same process group.

    .venv/bin/python bench/allreduce_vs_ddp.py [--workers 2] [--rounds 8] [--steps 20]

Each of W processes (gloo, 127.0.0.1, one thread each) alternates rounds of DDP and agentsync
on identical copies of a 1.3M-parameter MLP, so both see the same machine load; rank 0 prints
JSON with the median per-step times and the median of per-round ratios (agentsync / DDP).
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
from torch.nn.parallel import DistributedDataParallel

import agentsync
from agentsync.comm import free_port


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 10))


def timed_steps(model, forward, optimizer, step, batches) -> float:
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        step()
    return (time.perf_counter() - start) / len(batches)


def worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    agentsync.init(backend="gloo")
    generator = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(args.batch, 512, generator=generator), torch.randint(10, (args.batch,), generator=generator))
               for _ in range(args.steps)]

    ddp_model = make_model()
    ddp = DistributedDataParallel(ddp_model)
    ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    ours_model = make_model()
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.01)
    sync = agentsync.make_strategy("allreduce")
    sync.setup(ours_model, ours_opt)

    timed_steps(ddp, ddp, ddp_opt, ddp_opt.step, batches[:3])  # warm-up both
    timed_steps(ours_model, ours_model, ours_opt, sync.step, batches[:3])
    rounds = []
    for r in range(args.rounds):
        pair = {}
        order = ("ddp", "ours") if r % 2 == 0 else ("ours", "ddp")
        for name in order:
            dist.barrier()
            if name == "ddp":
                pair[name] = timed_steps(ddp, ddp, ddp_opt, ddp_opt.step, batches)
            else:
                pair[name] = timed_steps(ours_model, ours_model, ours_opt, sync.step, batches)
        rounds.append(pair)
    if rank == 0:
        params = sum(p.numel() for p in ours_model.parameters())
        ratios = [p["ours"] / p["ddp"] for p in rounds]
        queue.put({
            "benchmark": "allreduce_vs_ddp", "workers": world, "parameters": params, "batch": args.batch,
            "rounds": args.rounds, "steps_per_round": args.steps,
            "ddp_step_ms_median": 1e3 * statistics.median(p["ddp"] for p in rounds),
            "agentsync_step_ms_median": 1e3 * statistics.median(p["ours"] for p in rounds),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "agentsync_bytes_sent_per_step": sync.stats["bytes_sent"] / sync.stats["steps"],
        })
    agentsync.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, args.workers, port, args, queue)) for r in range(args.workers)]
    for p in procs:
        p.start()
    result = queue.get(timeout=1800)
    for p in procs:
        p.join()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
