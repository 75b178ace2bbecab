"""Under torchrun, 2 ranks: rank 1 (an actor) sends two known segments, rank 0 (a learner) receives
them and answers the second with its weights; what arrived on each side is saved for
tests/test_segments.py to compare bit for bit."""
import sys

import torch

from agentsync.actors.protocol import Reply, flat_weights, recv_reply, send_reply
from agentsync.agents.segments import SegmentChannel
from agentsync.comm import Comm, CommConfig

sys.path.insert(0, sys.argv[2])
from test_segments import LENGTH, ENVS, OBS_SHAPE, known_segment, policy  # noqa: E402

comm = Comm.from_env(CommConfig(backend="gloo", device="cpu"))
channel = SegmentChannel(comm, length=LENGTH, envs=ENVS, obs_shape=OBS_SHAPE)
if comm.rank == 1:
    model = policy(seed=99)  # not the learner's: the reply must overwrite every weight and statistic
    for version in (3, 4):
        channel.send(known_segment(version), dst=0)
        kind, version = recv_reply(comm, 0, model)
    torch.save({"kind": int(kind), "version": version, "state": model.state_dict()}, sys.argv[1] + ".actor")
else:
    received = []
    for reply in (Reply.CONTINUE, Reply.WEIGHTS):
        received.append(channel.recv(src=1))
        send_reply(comm, 1, reply, 17, flat_weights(policy(seed=5)))
    torch.save({"segments": [vars(s) for s in received], "bytes_received": comm.stats.bytes_received}, sys.argv[1])
comm.close()
