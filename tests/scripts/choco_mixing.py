"""CHOCO gossip with learning rate 0 through the bring-your-own-loop API (run under torchrun).

As gossip_mixing.py: every rank overwrites its parameters with its own random vector (seed 100 +
rank), then steps with lr 0, so only mixing moves the parameters, on a ring. One run per codec
(``none``: plain gossip); rank 0 writes each run's consensus distance before the first round and
after every round, and the bytes it sent.
"""
import json
import sys
from pathlib import Path

import torch

import agentsync
from agentsync.comm import leave_process
from agentsync.sync.averaging import consensus_distance, set_flat_params_

RUNS = {  # codec: (rounds, alpha, consensus_step)
    "none": (40, 0.75, 1.0),
    "topk:ratio=1.0": (40, 0.75, 1.0),
    "topk:ratio=0.1": (100, 0.5, 0.2),
}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    comm = agentsync.init()
    x = torch.ones(2, 8)
    record = {}
    for spec, (rounds, alpha, gamma) in RUNS.items():
        comm.config.compression = spec
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)  # 36 parameters
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        extra = {} if gamma == 1.0 else {"consensus_step": gamma}
        sync = agentsync.make_strategy("gossip", alpha=alpha, topology="ring", **extra)
        sync.setup(model, optimizer)
        set_flat_params_(model, torch.randn(36, generator=torch.Generator().manual_seed(100 + comm.rank)))
        distances, sent = [consensus_distance(comm, model)], comm.stats.bytes_sent
        for _ in range(rounds):
            optimizer.zero_grad()
            model(x).sum().backward()
            sync.step()
            distances.append(sync.measure()["consensus_distance"])
        record[spec] = {"distances": distances, "bytes_sent": comm.stats.bytes_sent - sent}
    if comm.rank == 0:
        (out / "choco.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    agentsync.shutdown()
    leave_process(0)  # the distances are saved
