"""Segments from an actor reach a learner bit-exact, as tensors over gloo between two processes."""
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
                   behaviour_logp=-torch.rand(LENGTH, ENVS, generator=g), bootstrap_obs=torch.randn(ENVS, *OBS_SHAPE, generator=g),
                   version=version)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                                                                     b.view(torch.int32) if b.dtype == torch.float32 else b)


@pytest.mark.timeout(180)
def test_a_learner_receives_an_actors_segments_bit_exact(tmp_path):
    out = tmp_path / "received.pt"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(ROOT / "tests/scripts/segment_roundtrip.py"), str(out), str(ROOT / "tests")],
                            capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    for got, version in zip(saved["segments"], (3, 4)):
        sent = known_segment(version)
        assert got["version"] == version
        for name in ("obs", "actions", "rewards", "dones", "behaviour_logp", "bootstrap_obs"):
            assert same_bits(got[name], getattr(sent, name)), name
    floats = LENGTH * ENVS * (OBS_SHAPE[0] + 3) + ENVS * OBS_SHAPE[0]
    assert saved["bytes_received"] == 2 * (3 * 8 + floats * 4 + LENGTH * ENVS * 8)  # header, floats, actions


def test_a_segment_of_the_wrong_shape_is_refused_before_anything_is_sent():
    from agentsync.agents.segments import SegmentChannel
    from agentsync.comm import Comm, CommConfig

    channel = SegmentChannel(Comm(0, 1, CommConfig()), length=LENGTH + 1, envs=ENVS, obs_shape=OBS_SHAPE)
    with pytest.raises(ValueError, match="segment field obs has shape"):
        channel.send(known_segment(0), dst=0)
