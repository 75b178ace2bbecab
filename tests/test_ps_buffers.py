"""Under ``ps-*`` the final model carries the workers' mean buffers, not server 0's initial ones."""
from __future__ import annotations

import pytest
import torch

from agentsync.checkpoint import load_checkpoint, load_rank_states
from conftest import train


@pytest.mark.timeout(300)
def test_the_final_ps_async_agent_carries_the_workers_mean_observation_statistics(tmp_path):
    train(tmp_path / "run", "--task", "acrobot-ppo", "--strategy", "ps-async", "--workers", "2", "--steps", "16",
          "--set", "eval_every=0")
    checkpoint = load_checkpoint(tmp_path / "run")
    model = checkpoint["model"]
    names = [k for k in model if k.endswith((".norm.mean", ".norm.var", ".norm.count"))]
    assert len(names) == 6  # policy and value observation normalisers: mean, var, count
    # each worker's own statistics, as its training left them (kept in its role's state)
    workers = [p for p in load_rank_states(tmp_path / "run") if p["is_worker"]]
    own = [p["state"]["strategy"]["role"]["buffers"] for p in workers]
    assert len(own) == 2 and len(own[0]) == len(names)
    assert not torch.allclose(own[0][0], own[1][0])  # the two workers saw different observations
    for i, name in enumerate(names):
        expected = (own[0][i] + own[1][i]) / 2
        assert torch.allclose(model[name], expected, atol=1e-6, rtol=1e-6), name
    assert model[names[0]].abs().max() > 0.1 and not torch.allclose(model[names[1]], torch.ones_like(model[names[1]]))
