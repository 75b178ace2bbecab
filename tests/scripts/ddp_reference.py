"""Reference for the equivalence test: plain torch DDP on agentsync's digits batches.

Run under torchrun; rank 0 writes the final state dict to OUT. It uses the same seed, model,
data shard and SGD settings as ``agentsync train --task digits --strategy allreduce``.
"""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from agentsync.comm import leave_process
from agentsync.tasks.digits import Digits, DigitsConfig


def main(out: str, steps: int, lr: float, seed: int = 0) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    task = Digits(DigitsConfig(), worker_rank=rank, num_workers=world, seed=seed)
    torch.manual_seed(seed)
    model = DistributedDataParallel(task.build_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = task.batch(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
    leave_process(0)  # the reference is saved
