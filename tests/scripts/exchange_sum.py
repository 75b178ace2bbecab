"""Under torchrun, 2 ranks: Comm's sums of several sizes against gloo's own all-reduce of the same
tensors. Each rank writes, per size, whether the two sums are bit-identical and what Comm counted."""
import json
import sys

import torch
import torch.distributed as dist

from agentsync.comm import Comm, CommConfig

comm = Comm.from_env(CommConfig(backend="gloo", device="cpu"))
generator = torch.Generator().manual_seed(comm.rank)
report = {}
for numel in (1, 4_578, 65_536, 65_537, 300_000):  # 65,536 float32 = 256 KiB: the last exchanged size
    tensor = torch.randn(numel, generator=generator) * 10 ** torch.randint(-3, 4, (numel,), generator=generator)
    ring = tensor.clone()
    dist.all_reduce(ring)
    before = comm.stats.as_dict()
    summed = tensor.clone()
    comm.all_reduce_(summed)
    after = comm.stats.as_dict()
    report[numel] = {"identical": bool(torch.equal(summed, ring)),
                     **{k: after[k] - before[k] for k in ("bytes_sent", "bytes_received", "messages")}}
half = torch.arange(6.0).view(2, 3).t()  # not contiguous: goes by the ring
expected = half * 2
comm.all_reduce_(half)
report["strided"] = bool(torch.equal(half, expected))
with open(f"{sys.argv[1]}.{comm.rank}", "w") as f:
    json.dump(report, f)
comm.close()
