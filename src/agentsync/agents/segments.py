"""Trajectory segments an actor sends a learner: fixed-length, as tensors over :class:`Comm`, never pickles.

A segment is T vector steps of B envs as the behaviour policy μ collected them: observations,
actions, rewards, terminations, which steps are transitions (not Gymnasium's autoreset steps),
μ's log-probabilities of the actions, the observation after the
last step (the learner bootstraps V(x_T) from it) and the policy version that acted (the
learner's version minus it is the policy lag). Both ends know (T, B, observation shape) from the
job's options, so a segment travels as three messages whose sizes are fixed: an int64 header
(version, T, B), one float32 block, and the int64 actions. The receiver checks the header
against the shape it expects, so a mismatched actor fails loudly instead of misreading floats.
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.comm import Comm

TAG = 7  # segment messages, apart from the strategies' own


@dataclasses.dataclass
class Segment:
    obs: torch.Tensor             # (T, B, *obs_shape) float32
    actions: torch.Tensor         # (T, B) int64
    rewards: torch.Tensor         # (T, B) float32
    dones: torch.Tensor           # (T, B) float32, 1 where the episode terminated after that step (no bootstrap)
    valid: torch.Tensor           # (T, B) float32, 0 on autoreset steps (not transitions)
    behaviour_logp: torch.Tensor  # (T, B) float32, log μ(a_t | x_t)
    bootstrap_obs: torch.Tensor   # (B, *obs_shape) float32
    version: int                  # the policy version that acted

    FLOAT_FIELDS = ("obs", "rewards", "dones", "valid", "behaviour_logp", "bootstrap_obs")


class SegmentChannel:
    """Sends and receives segments of one shape (T steps, B envs, ``obs_shape``) between ranks."""

    def __init__(self, comm: Comm, *, length: int, envs: int, obs_shape: tuple[int, ...]) -> None:
        self.comm, self.length, self.envs, self.obs_shape = comm, length, envs, tuple(obs_shape)
        T, B = length, envs
        self.shapes = {"obs": (T, B, *obs_shape), "rewards": (T, B), "dones": (T, B), "valid": (T, B),
                       "behaviour_logp": (T, B), "bootstrap_obs": (B, *obs_shape)}
        self.float_numel = sum(torch.Size(s).numel() for s in self.shapes.values())

    def send(self, segment: Segment, dst: int) -> None:
        for name in Segment.FLOAT_FIELDS:
            got = tuple(getattr(segment, name).shape)
            if got != self.shapes[name]:
                raise ValueError(f"segment field {name} has shape {got}, the channel carries {self.shapes[name]}")
        header = torch.tensor([segment.version, self.length, self.envs], dtype=torch.int64)
        floats = torch.cat([getattr(segment, name).detach().to(torch.float32).reshape(-1).cpu()
                            for name in Segment.FLOAT_FIELDS])
        for tensor in (header, floats, segment.actions.detach().to(torch.int64).reshape(-1).cpu()):
            self.comm.send(tensor.to(self.comm.device), dst, tag=TAG)

    def recv(self, src: int) -> Segment:
        header = torch.empty(3, dtype=torch.int64, device=self.comm.device)
        self.comm.recv(header, src, tag=TAG)
        version, length, envs = (int(v) for v in header.cpu())
        if (length, envs) != (self.length, self.envs):
            raise ValueError(f"rank {src} sent a segment of {length} steps × {envs} envs; "
                             f"this channel carries {self.length} × {self.envs}")
        floats = torch.empty(self.float_numel, dtype=torch.float32, device=self.comm.device)
        actions = torch.empty(self.length * self.envs, dtype=torch.int64, device=self.comm.device)
        self.comm.recv(floats, src, tag=TAG)
        self.comm.recv(actions, src, tag=TAG)
        fields, offset = {}, 0
        for name in Segment.FLOAT_FIELDS:
            shape = self.shapes[name]
            n = torch.Size(shape).numel()
            fields[name] = floats[offset:offset + n].view(shape)
            offset += n
        return Segment(actions=actions.view(self.length, self.envs), version=version, **fields)
