"""Gossip with learning rate 0 through the bring-your-own-loop API (run under torchrun).

Every rank overwrites its parameters with its own random vector (seed 100 + rank), then runs
ROUNDS steps with lr 0, so only mixing moves the parameters. Rank 0 writes, per topology, the
consensus distance after each round; every rank writes its final parameters.
"""
import json
import sys
from pathlib import Path

import torch

import agentsync
from agentsync.comm import leave_process
from agentsync.sync.averaging import flat_params, set_flat_params_

ROUNDS, ALPHA = 40, 0.75


def main(out: Path) -> None:
    torch.set_num_threads(1)
    comm = agentsync.init()
    x = torch.ones(2, 8)
    record = {}
    for topology in ("ring", "random", "exponential"):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)  # 36 parameters
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        sync = agentsync.make_strategy("gossip", alpha=ALPHA, topology=topology)
        sync.setup(model, optimizer)
        set_flat_params_(model, torch.randn(36, generator=torch.Generator().manual_seed(100 + comm.rank)))
        distances = []
        for _ in range(ROUNDS):
            optimizer.zero_grad()
            model(x).sum().backward()
            sync.step()
            distances.append(sync.measure()["consensus_distance"])
        torch.save(flat_params(model), out / f"{topology}-rank{comm.rank}.pt")
        record[topology] = distances
    if comm.rank == 0:
        (out / "distances.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    agentsync.shutdown()
    leave_process(0)  # the distances are saved
