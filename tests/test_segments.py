"""Segments from an actor reach a learner bit-exact, and the learner's weights reach the actor bit-exact,
as tensors over gloo between two processes."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agentsync.agents.segments import Segment
from conftest import ENV, ROOT

LENGTH, ENVS, OBS_SHAPE = 5, 3, (4,)


def known_segment(version: int) -> Segment:
    """Seeded values plus the floats a lossy path would change: NaN, ±inf, -0.0, a subnormal."""
    g = torch.Generator().manual_seed(version)
    obs = torch.randn(LENGTH, ENVS, *OBS_SHAPE, generator=g)
    obs.view(-1)[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])
    return Segment(obs=obs, actions=torch.randint(0, 2 ** 40, (LENGTH, ENVS), generator=g),
                   rewards=torch.randn(LENGTH, ENVS, generator=g), dones=(torch.rand(LENGTH, ENVS, generator=g) < 0.3).float(),
                   valid=(torch.rand(LENGTH, ENVS, generator=g) < 0.8).float(),
                   behaviour_logp=-torch.rand(LENGTH, ENVS, generator=g), bootstrap_obs=torch.randn(ENVS, *OBS_SHAPE, generator=g),
                   version=version)


def policy(seed: int) -> torch.nn.Module:
    """An actor-critic with observation statistics, its values and statistics drawn from ``seed``."""
    from agentsync.agents.actor import ActorCritic
    from agentsync.agents.perceiver import MLPPerceiver

    torch.manual_seed(seed)
    model = ActorCritic(MLPPerceiver(4, [8], "tanh", True), MLPPerceiver(4, [8], "tanh", True), 2)
    for buffer in model.buffers():
        buffer.copy_(torch.rand_like(buffer) + 0.5)
    return model


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                                                                     b.view(torch.int32) if b.dtype == torch.float32 else b)


@pytest.mark.timeout(180)
def test_segments_reach_the_learner_and_its_weights_reach_the_actor_bit_exact(tmp_path):
    out = tmp_path / "received.pt"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(ROOT / "tests/scripts/segment_roundtrip.py"), str(out), str(ROOT / "tests")],
                            capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    for got, version in zip(saved["segments"], (3, 4)):
        sent = known_segment(version)
        assert got["version"] == version
        for name in ("obs", "actions", "rewards", "dones", "valid", "behaviour_logp", "bootstrap_obs"):
            assert same_bits(got[name], getattr(sent, name)), name
    floats = LENGTH * ENVS * (OBS_SHAPE[0] + 4) + ENVS * OBS_SHAPE[0]
    assert saved["bytes_received"] == 2 * (3 * 8 + floats * 4 + LENGTH * ENVS * 8)  # header, floats, actions
    actor = torch.load(str(out) + ".actor", weights_only=True)
    assert (actor["kind"], actor["version"]) == (1, 17)  # the second reply: WEIGHTS at version 17
    learner = policy(seed=5).state_dict()
    assert actor["state"].keys() == learner.keys()
    for name, value in learner.items():
        assert same_bits(actor["state"][name], value), name


def test_a_segment_of_the_wrong_shape_is_refused_before_anything_is_sent():
    from agentsync.agents.segments import SegmentChannel
    from agentsync.comm import Comm, CommConfig

    channel = SegmentChannel(Comm(0, 1, CommConfig()), length=LENGTH + 1, envs=ENVS, obs_shape=OBS_SHAPE)
    with pytest.raises(ValueError, match="segment field obs has shape"):
        channel.send(known_segment(0), dst=0)
