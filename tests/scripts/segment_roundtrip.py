"""Under torchrun, 2 ranks: rank 1 (an actor) sends two known segments, rank 0 (a learner) receives
them and saves what arrived, for tests/test_segments.py to compare bit for bit."""
import sys

import torch

from agentsync.agents.segments import SegmentChannel
from agentsync.comm import Comm, CommConfig

sys.path.insert(0, sys.argv[2])
from test_segments import LENGTH, ENVS, OBS_SHAPE, known_segment  # noqa: E402

comm = Comm.from_env(CommConfig(backend="gloo", device="cpu"))
channel = SegmentChannel(comm, length=LENGTH, envs=ENVS, obs_shape=OBS_SHAPE)
if comm.rank == 1:
    for version in (3, 4):
        channel.send(known_segment(version), dst=0)
else:
    received = [channel.recv(src=1) for _ in range(2)]
    torch.save({"segments": [vars(s) for s in received], "bytes_received": comm.stats.bytes_received}, sys.argv[1])
comm.close()

