"""Keep your own training loop; agentsync only synchronises it.

    torchrun --standalone --nproc-per-node 2 examples/byo_loop.py
    torchrun --standalone --nproc-per-node 2 examples/byo_loop.py --strategy none --steps 300
    torchrun --standalone --nproc-per-node 3 examples/byo_loop.py --strategy ps-sync   # 2 workers, 1 server

Each worker trains an MLP on its own share of scikit-learn's digits; ``sync.step()`` replaces
``optimizer.step()``. The same script runs under every strategy: a parameter server's ranks
serve inside ``sync.setup()`` and exit there once the final model is delivered, so only
workers run the loop (each says so on one line). Worker 0 prints the accuracy of the model
``finalize()`` returns.
"""
import argparse

import torch
from sklearn.datasets import load_digits

import agentsync


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="allreduce")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    torch.set_num_threads(1)
    comm = agentsync.init()                                   # reads RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    train_x, train_y, test_x, test_y = x[:1500], y[:1500], x[1500:], y[1500:]

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sync = agentsync.make_strategy(args.strategy)
    sync.setup(model, optimizer)                              # a server rank serves here and exits

    worker = sync.worker_rank
    print(f"rank {comm.rank} runs the training loop as worker {worker}", flush=True)
    mine = torch.arange(worker, 1500, sync.num_workers)      # this worker's shard
    generator = torch.Generator().manual_seed(worker)
    for _ in range(args.steps):
        batch = mine[torch.randint(len(mine), (32,), generator=generator)]
        loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        sync.step()                                           # synchronise and update

    model = sync.finalize()
    accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    if worker == 0:
        print(f"accuracy {accuracy:.4f} bytes_sent {sync.stats['bytes_sent']}")


if __name__ == "__main__":
    main()
