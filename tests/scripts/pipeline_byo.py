"""Bring-your-own pipelined loop (P = 2 stages × W = 1) on digits; each stage saves its final part.

    torchrun --standalone --nproc-per-node 2 tests/scripts/pipeline_byo.py OUT_DIR STEPS LR SCHEDULE
"""
import sys
from pathlib import Path

import torch

import agentsync
from agentsync.parallel.split import stage_keys, to_whole_keys
from agentsync.tasks.digits import Digits, DigitsConfig

out, steps, lr, schedule = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
agentsync.init(backend="gloo", device="cpu")
task = Digits(DigitsConfig(), worker_rank=0, num_workers=1, seed=0)
torch.manual_seed(0)
model = task.build_model()
x0, _ = task.batch(0)
pp = agentsync.pipeline(task.pipeline_units(model), stages=2, microbatches=4, loss_fn=task.pipeline_loss,
                        example_input=x0[:8], schedule=schedule, strategy="allreduce")
optimizer = torch.optim.SGD(pp.module.parameters(), lr=lr)
pp.sync.setup(pp.module, optimizer)
for step in range(steps):
    x, y = task.batch(step)
    optimizer.zero_grad()
    pp.step(x, y)
    pp.sync.step()
pp.sync.finalize()
torch.save(to_whole_keys(pp.module.state_dict(), stage_keys(model, pp.module)), out / f"stage-{pp.stage}.pt")
