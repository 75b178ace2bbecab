"""``comm.compressed_sum=scatter-gather`` summed over W ranks (run under torchrun), per codec.

Every rank sums T random vectors of N values (N not a multiple of W, so the last chunk is padded)
through :func:`~agentsync.sync.compressed.all_sum_async`. Each rank writes, per codec: the largest
difference between any two ranks' results; the largest violation of the error-feedback identity
Σ_t β^(T−t) result_t = Σ_{i,t} β^(T−t) x_{i,t} − Σ_i (rank i's chunk residuals) − (the owners'
residuals), β the codec's decay (1: plain sums); and the bytes and messages it sent.
"""
import json
import sys
from pathlib import Path

import torch

import agentsync
from agentsync.comm import leave_process
from agentsync.compress import Compression, parse_codec
from agentsync.sync.compressed import all_sum_async

N, T = 1001, 8
SPECS = ("qsgd:bits=2", "topk:ratio=0.1:bits=4", "randk:ratio=0.2", "topk:ratio=0.05:decay=0.5")


def residual(compression: Compression, key: str) -> torch.Tensor:
    memory = compression.feedback.get(key)
    return torch.zeros(0) if memory is None or memory.residual is None else memory.residual


def main(out: Path) -> None:
    torch.set_num_threads(1)
    comm = agentsync.init(compressed_sum="scatter-gather")
    w, record = comm.world_size, {}
    for spec in SPECS:
        compression = Compression(parse_codec(spec, rank=comm.rank))
        gen = torch.Generator().manual_seed(1000 + comm.rank)
        sent, messages = comm.stats.bytes_sent, comm.stats.messages
        total_in, total_out, decay = torch.zeros(N), torch.zeros(N), compression.codec.decay
        for _ in range(T):
            x = torch.randn(N, generator=gen)
            result = x.clone()
            all_sum_async(comm, compression, "t", result).wait()
            total_in, total_out = decay * total_in + x, decay * total_out + result
        record[spec] = {"bytes_sent": comm.stats.bytes_sent - sent, "messages": comm.stats.messages - messages}
        with comm.uncounted():
            left = torch.cat([residual(compression, f"t/w{w}/{j}") for j in range(w)])[:N]
            owned = torch.cat(comm.all_gather(residual(compression, f"t/w{w}/sum")))[:N]
            results = comm.all_gather(result)
            inputs, residuals = comm.all_reduce_(total_in), comm.all_reduce_(left)
        record[spec].update(
            ranks_differ=max(float((r - results[0]).abs().max()) for r in results),
            identity_error=float((total_out - (inputs - residuals - owned)).abs().max()))
    (out / f"rank{comm.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    agentsync.shutdown()
    leave_process(0)  # the records are saved
