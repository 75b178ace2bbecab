"""Per-step time of agentsync ``allreduce`` against plain torch DDP, same model, same process group.

    .venv/bin/python bench/allreduce_vs_ddp.py [--workers 2] [--rounds 8] [--steps 20]

Each of W processes (gloo, 127.0.0.1, one thread each) runs DDP (its defaults), DDP with
``gradient_as_bucket_view=True`` and agentsync on identical copies of a 1.06M-parameter MLP,
interleaved step by step (the one that goes first rotates), so all see the same machine load;
a round's time for each is the median of its step times (a step the scheduler stalls does not
count against whoever it hit). Rank 0 prints JSON with the median per-step times and the median
of per-round ratios (agentsync / DDP). The loop is the one a DDP user writes:
``zero_grad(); loss.backward(); step``. agentsync's default step also checks that the gradient is
finite (one pass over it, which DDP does not make); ``ours_unchecked`` runs with
``optimizer.skip_nonfinite`` off, the same work as DDP's step. ``ddp_reducer_only`` drives DDP's
C++ reducer without the wrapper's forward (the same reducer, bucket views on): the floor that
torch's own machinery reaches for this algorithm, against which ``ours_unchecked`` is also
compared.
"""
from __future__ import annotations

import argparse
import functools
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
from agentsync.update import UpdateRule


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 10))


def timed_step(forward, optimizer, step, x, y) -> float:
    start = time.perf_counter()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(forward(x), y).backward()
    step()
    return time.perf_counter() - start


def reducer_forward(ddp: DistributedDataParallel, x: torch.Tensor) -> torch.Tensor:
    """DDP's C++ reducer without the wrapper's Python forward: what DDP's own machinery costs a step
    with no Python between backward's gradients and their all-reduce (private calls; a floor, not a
    way to train)."""
    ddp.reducer.prepare_for_forward()
    out = ddp.module(x)
    ddp.reducer.prepare_for_backward([])
    return out


def worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    agentsync.init(backend="gloo")
    generator = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(args.batch, 512, generator=generator), torch.randint(10, (args.batch,), generator=generator))
               for _ in range(args.steps)]

    contenders = {}  # name -> (forward, optimizer, step)
    for name, as_view in (("ddp", False), ("ddp_bucket_view", True)):
        model = DistributedDataParallel(make_model(), gradient_as_bucket_view=as_view)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        contenders[name] = (model, optimizer, optimizer.step)
    reducer_only = DistributedDataParallel(make_model(), gradient_as_bucket_view=True)
    optimizer = torch.optim.SGD(reducer_only.parameters(), lr=0.01)
    contenders["ddp_reducer_only"] = (functools.partial(reducer_forward, reducer_only), optimizer, optimizer.step)
    for name, rule in (("ours", UpdateRule()), ("ours_unchecked", UpdateRule(skip_nonfinite=False))):
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        sync = agentsync.make_strategy("allreduce")
        sync.setup(model, optimizer, rule)
        contenders[name] = (model, optimizer, sync.step)

    names = list(contenders)
    for x, y in batches[:3]:  # warm-up
        for name in names:
            timed_step(*contenders[name], x, y)
    rounds = []
    for r in range(args.rounds):
        dist.barrier()
        times = {name: [] for name in names}
        for i, (x, y) in enumerate(batches):  # step by step, rotating who goes first: same load for all
            k = (r * len(batches) + i) % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(timed_step(*contenders[name], x, y))
        rounds.append({name: statistics.median(t) for name, t in times.items()})
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        ratios = {peer: [t["ours"] / t[peer] for t in rounds] for peer in ("ddp", "ddp_bucket_view")}
        unchecked = [t["ours_unchecked"] / t["ddp"] for t in rounds]
        floor = [t["ours_unchecked"] / t["ddp_reducer_only"] for t in rounds]
        queue.put({
            "benchmark": "allreduce_vs_ddp", "workers": world, "parameters": params, "batch": args.batch,
            "rounds": args.rounds, "steps_per_round": args.steps,
            **{f"{name}_step_ms_median": 1e3 * statistics.median(t[name] for t in rounds) for name in names},
            "ratio_median": statistics.median(ratios["ddp"]), "ratio_min": min(ratios["ddp"]),
            "ratio_max": max(ratios["ddp"]),
            "ratio_vs_bucket_view_median": statistics.median(ratios["ddp_bucket_view"]),
            "ratio_unchecked_median": statistics.median(unchecked),
            "ratio_unchecked_vs_reducer_only_median": statistics.median(floor),
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
