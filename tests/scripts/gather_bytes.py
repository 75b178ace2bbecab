"""Under torchrun, 3 ranks: payloads of different lengths gathered at rank 1; each rank writes what it got."""
import json
import sys

from agentsync.comm import Comm, CommConfig

comm = Comm.from_env(CommConfig(backend="gloo", device="cpu"))
got = comm.gather_bytes(bytes([comm.rank]) * (comm.rank * 1000 + 1), dst=1)
with open(f"{sys.argv[1]}.{comm.rank}", "w") as f:
    json.dump(None if got is None else [p.hex() for p in got], f)
comm.close()
