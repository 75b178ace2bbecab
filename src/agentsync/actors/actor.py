"""An actor process: act in its own vector envs with the learner's latest weights, send segments.

Actors are stateless: nothing of theirs is checkpointed (a resumed run starts them afresh), and a
dead one costs its learner only the segments it would have sent. Actor ``i`` seeds its envs
``seed + ACTOR_SEED_OFFSET + i · envs_per_actor + j``, apart from workers' and evaluation's.
Injected faults (``comm.fault=RANK:kill@N``) and stragglers act before the actor's N-th segment.
"""
from __future__ import annotations

import torch

from agentsync.actors import learner_of
from agentsync.actors.protocol import Reply, recv_reply
from agentsync.agents.segments import SegmentChannel
from agentsync.comm import Comm
from agentsync.config import RunConfig
from agentsync.tasks import build_task

ACTOR_SEED_OFFSET = 500_000


def run_actor(cfg: RunConfig, comm: Comm) -> None:
    """Act until the learner says stop; ``comm`` is the whole job's group."""
    a = cfg.actors
    index = comm.rank - cfg.learner_ranks
    learner = learner_of(index, cfg.workers)
    task = build_task(cfg.task, worker_rank=cfg.workers + index, num_workers=cfg.workers, seed=cfg.seed,
                      device=comm.device)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(comm.device)
    collector = task.actor_collector(cfg.seed + ACTOR_SEED_OFFSET + index * a.envs_per_actor, a.envs_per_actor)
    channel = SegmentChannel(comm, length=a.segment_length, envs=a.envs_per_actor,
                             obs_shape=tuple(task.observation_space.shape))
    try:
        kind, version = recv_reply(comm, learner, model)
        sent = 0
        while kind != Reply.STOP:
            comm.straggle()
            comm.inject_fault(sent, torch.zeros(()))
            channel.send(task.segment(model, collector, a.segment_length, version), learner)
            sent += 1
            kind, version = recv_reply(comm, learner, model)
    finally:
        collector.close()
