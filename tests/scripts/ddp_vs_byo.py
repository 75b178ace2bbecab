"""The bring-your-own loop against torch DDP, side by side in one process group (run under torchrun).

    torchrun --standalone --nproc-per-node 2 tests/scripts/ddp_vs_byo.py OUT.json [--clip 0.05] [--batchnorm]

Both models start from the same weights and see the same batches; both loops are the one every
DDP user writes: ``zero_grad(); loss.backward(); [clip_grad_norm_(...)]; step``. Rank 0 writes the
largest parameter and buffer differences between agentsync's ``allreduce`` and DDP to OUT.
"""
import argparse
import json

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import agentsync
from agentsync.comm import leave_process


def make_model(batchnorm: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 32)] + ([torch.nn.BatchNorm1d(32)] if batchnorm else []) + [
        torch.nn.ReLU(), torch.nn.Linear(32, 4)]
    return torch.nn.Sequential(*layers)


def train(model, step, optimizer, batches, clip: float) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--clip", type=float, default=0.0)
    parser.add_argument("--batchnorm", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    comm = agentsync.init(backend="gloo")
    generator = torch.Generator().manual_seed(comm.rank)
    batches = [(torch.randn(8, 16, generator=generator) * 3, torch.randint(4, (8,), generator=generator))
               for _ in range(args.steps)]

    ddp = DistributedDataParallel(make_model(args.batchnorm))
    ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    train(ddp, ddp_opt.step, ddp_opt, batches, args.clip)

    ours = make_model(args.batchnorm)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    sync = agentsync.make_strategy("allreduce")
    sync.setup(ours, optimizer)
    train(ours, sync.step, optimizer, batches, args.clip)
    sync.finalize()

    spread = 0.0  # how far rank 1's replica is from rank 0's
    for tensor in ours.state_dict().values():
        theirs = tensor.clone()
        dist.broadcast(theirs, 0)
        spread = max(spread, (tensor.double() - theirs.double()).abs().max().item())
    spread_tensor = torch.tensor([spread], dtype=torch.float64)
    dist.all_reduce(spread_tensor, op=dist.ReduceOp.MAX)
    spread = spread_tensor.item()
    reference = ddp.module.state_dict()
    differences = {name: (tensor.double() - reference[name].double()).abs().max().item()
                   for name, tensor in ours.state_dict().items()}
    if comm.rank == 0:
        with open(args.out, "w") as f:
            json.dump({"differences": differences, "replica_spread": spread,
                       "moved": max((p - q).abs().max().item() for p, q in
                                    zip(ours.parameters(), make_model(args.batchnorm).parameters()))}, f)
    agentsync.shutdown()


if __name__ == "__main__":
    main()
    leave_process(0)  # the result is written
