"""Buffers at sync points, through the bring-your-own-loop API (run under torchrun, W = 2).

A small model with BatchNorm takes two steps on rank-specific data, so its running statistics
differ between ranks; the second step is a sync point (local-sgd's average, diloco's outer step,
a gossip round). Every rank saves, per strategy, its buffers just before that step (after the
forward pass that updated them) and just after, with its parameters after.
"""
import sys
from pathlib import Path

import torch

import agentsync
from agentsync.comm import leave_process
from agentsync.sync.averaging import flat_params

STRATEGIES = {
    "local-sgd": {"period": 2},
    "diloco": {"inner_steps": 2},
    "gossip": {"period": 2, "alpha": 0.25},
}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    comm = agentsync.init()
    for name, options in STRATEGIES.items():
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        sync = agentsync.make_strategy(name, **options)
        sync.setup(net, optimizer)
        data = torch.Generator().manual_seed(10 + comm.rank)
        for _ in range(2):
            optimizer.zero_grad()
            x = torch.randn(16, 4, generator=data) * (1 + comm.rank)  # rank-specific statistics
            net(x).pow(2).mean().backward()
            pre = {k: b.clone() for k, b in net.named_buffers()}
            sync.step()
        post = {k: b.clone() for k, b in net.named_buffers()}
        distance = sync.measure()["consensus_distance"]
        torch.save({"pre": pre, "post": post, "params": flat_params(net), "distance": distance},
                   out / f"{name}-rank{comm.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    agentsync.shutdown()
    leave_process(0)  # the buffers are saved
