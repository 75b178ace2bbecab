"""The step contract on the parameter servers: clipping by the global norm, non-finite skips."""
from __future__ import annotations

import pytest
import torch

from agentsync.comm import Comm, CommConfig
from agentsync.sync import strategy_class
from conftest import train

PLAIN_SGD = ["--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.05", "--set", "optimizer.momentum=0",
             "--set", "eval_every=0"]
CLIP = ["--set", "optimizer.max_grad_norm=0.05"]  # digits' gradient norms are ~1: it binds every step
STEPS = ["--workers", "2", "--steps", "20"]


def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("servers", [1, 2])
def test_ps_sync_clips_the_averaged_gradient_like_allreduce(tmp_path, servers):
    """ps-sync with every replica aggregated ≡ allreduce, clipping included: the servers clip the
    averaged gradient by its global norm, combined over the shards when S = 2."""
    train(tmp_path / "ar", "--strategy", "allreduce", *STEPS, *PLAIN_SGD, *CLIP)
    summary = train(tmp_path / "ps", "--strategy", "ps-sync", "--servers", str(servers), *STEPS, *PLAIN_SGD, *CLIP)
    train(tmp_path / "free", "--strategy", "ps-sync", "--servers", str(servers), *STEPS, *PLAIN_SGD)
    reference, ours, unclipped = (final_model(tmp_path / d) for d in ("ar", "ps", "free"))
    assert summary["updates"] == 20 and summary["nonfinite_skipped"] == 0
    for key, value in reference.items():
        assert torch.allclose(ours[key], value, atol=1e-5, rtol=0), key
    assert max((ours[k] - unclipped[k]).abs().max().item() for k in ours) > 1e-3  # clipping did bind


@pytest.mark.timeout(300)
def test_ps_sync_servers_step_with_the_scaled_learning_rate_and_its_schedule(tmp_path):
    """lr_scaling composes with the servers' optimizers and the linear schedule: ps-sync (W = 2, both
    replicas averaged) with lr 0.05 scaled ×2 equals the run given lr 0.1 outright, both decaying."""
    decay = ["--set", "optimizer.lr_schedule=linear"]
    train(tmp_path / "scaled", "--strategy", "ps-sync", *STEPS, *PLAIN_SGD, *decay,
          "--set", "optimizer.lr_scaling=linear")
    train(tmp_path / "given", "--strategy", "ps-sync", *STEPS, *PLAIN_SGD, *decay, "--set", "optimizer.lr=0.1")
    train(tmp_path / "plain", "--strategy", "ps-sync", *STEPS, *PLAIN_SGD, *decay)
    scaled, given, plain = (final_model(tmp_path / d) for d in ("scaled", "given", "plain"))
    assert all(torch.equal(scaled[k], given[k]) for k in scaled)
    assert max((scaled[k] - plain[k]).abs().max().item() for k in scaled) > 1e-3


@pytest.mark.timeout(200)
def test_ps_sync_skips_a_nonfinite_average_and_counts_it(tmp_path):
    """Rank 1's loss is NaN at step 5: the average of that step is not finite, so every server
    skips the update (the version still advances) and the summary counts it."""
    summary = train(tmp_path / "run", "--strategy", "ps-sync", "--servers", "2", *STEPS, *PLAIN_SGD,
                    "--set", "comm.fault=1:nan@5")
    assert summary["nonfinite_skipped"] == 1 and summary["updates"] == 20
    assert all(torch.isfinite(t).all() for t in final_model(tmp_path / "run").values())


@pytest.mark.parametrize("name, horizon", [("ps-sync", 50), ("ps-async", 100), ("ssp", 100)])
def test_the_servers_learning_rate_horizon_is_the_updates_they_make(name, horizon):
    """ps-sync makes one update per step, ps-async and ssp one per push: steps × workers."""
    strategy = strategy_class(name)(strategy_class(name).Config(name=name), Comm(2, 3, CommConfig()), num_workers=2)
    strategy.max_steps = 50
    assert strategy.server_updates() == horizon


@pytest.mark.timeout(300)
def test_asynchronous_servers_with_one_worker_equal_no_sync(tmp_path):
    """With W = 1 nobody else pushes: ps-async and ssp apply exactly the worker's own gradients,
    in order, with the same optimizer — the run equals `none` (clipping included)."""
    args = ["--workers", "1", "--steps", "20", *PLAIN_SGD, *CLIP]
    train(tmp_path / "none", "--strategy", "none", *args)
    reference = final_model(tmp_path / "none")
    for strategy in ("ps-async", "ssp"):
        train(tmp_path / strategy, "--strategy", strategy, *args)
        ours = final_model(tmp_path / strategy)
        assert max((ours[k] - reference[k]).abs().max().item() for k in reference) < 1e-6, strategy
