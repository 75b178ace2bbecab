"""Per-rank checkpoints: each rank writes its own state, the reporter a small manifest that commits them."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

from agentsync.checkpoint import (CHECKPOINT, from_bytes, load_checkpoint, load_rank_states, read_rank_state,
                                  save_rank_state, to_bytes)
from agentsync.errors import ConfigError
from conftest import agentsync, train

W = 4
RUN = ["--task", "digits", "--workers", str(W), "--steps", "40", "--set", "checkpoint_every=20",
       "--set", "eval_every=0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 4 workers that checkpointed at steps 20 and 40 (shared: tests copy it before changing it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(run, *RUN)
    return run


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def tensor_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def final_model(run) -> dict:
    return torch.load(run / CHECKPOINT, weights_only=True)["model"]


def test_a_rank_state_reads_back_as_written(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
             "strategy": {"steps": 3, "pair": (1, 2)}}
    save_rank_state(tmp_path, 7, 1, state)
    save_rank_state(tmp_path, 7, 1, state)  # the same step written again replaces it whole
    back = read_rank_state(tmp_path / "checkpoints" / "step-7" / "rank-1")
    assert back["strategy"] == {"steps": 3, "pair": (1, 2)}
    assert back["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(back["rng"], state["rng"]) and torch.equal(back["model"]["weight"], model.weight)
    assert [p.name for p in (tmp_path / "checkpoints" / "step-7").iterdir()] == ["rank-1"]


class RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_a_rank_folder_whose_metadata_would_run_code_is_refused(tmp_path):
    save_rank_state(tmp_path, 1, 0, {"x": torch.ones(2)})
    folder = tmp_path / "checkpoints" / "step-1" / "rank-0"
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(ConfigError, match="not allowed"):
        read_rank_state(folder)


@pytest.mark.timeout(300)
def test_a_run_leaves_one_folder_per_rank_of_its_latest_checkpoint_only(finished):
    steps = sorted(p.name for p in (finished / "checkpoints").iterdir())
    assert steps == ["step-40"]  # step 20's folder went once step 40's manifest was in place
    assert sorted(p.name for p in (finished / "checkpoints" / "step-40").iterdir()) == [f"rank-{r}" for r in range(W)]
    manifest = load_checkpoint(finished)
    assert manifest["format"] == 2 and manifest["step"] == 40 and manifest["states"] == "checkpoints/step-40"
    ranks = load_rank_states(finished)
    assert [r["rank"] for r in ranks] == list(range(W))
    for key, value in ranks[0]["state"]["model"].items():  # allreduce: every replica is the reported model
        assert torch.equal(manifest["model"][key], value), key
    result = agentsync("evaluate", str(finished), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step"] == 40


@pytest.mark.timeout(300)
def test_the_reporter_gathers_statistics_not_models(finished):
    """The manifest holds one model and W small payloads: far less than W models."""
    model = tensor_bytes(final_model(finished))
    assert (finished / CHECKPOINT).stat().st_size < 2 * model
    for payload in load_checkpoint(finished)["ranks"]:
        assert len(payload) < model / 10 and "state" not in from_bytes(payload)
    for r in range(W):  # each rank's folder holds its own model (and optimizer state)
        folder = finished / "checkpoints" / "step-40" / f"rank-{r}"
        assert sum(p.stat().st_size for p in folder.iterdir()) > model


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_manifest_whose_rank_folder_is_damaged_is_refused_on_resume(finished, tmp_path, damage):
    run = copy_of(finished, tmp_path)
    folder = run / "checkpoints" / "step-40" / "rank-2"
    if damage == "missing":
        shutil.rmtree(folder)
    else:
        data = next(folder.glob("*.distcp"))
        data.write_bytes(data.read_bytes()[:100])
    result = agentsync("train", "--resume", str(run), "--steps", "60")
    assert result.returncode == 2
    assert result.stderr.startswith("agentsync: error: corrupt checkpoint: rank state") and "rank-2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def write_format_1(run) -> None:
    """``run``'s checkpoint rewritten as format 1 wrote it: one file holding every rank's state."""
    manifest = torch.load(run / CHECKPOINT, weights_only=True)
    ranks = [to_bytes(p) for p in load_rank_states(run)]
    old = {"format": 1, "step": manifest["step"], "elapsed_s": manifest["elapsed_s"], "workers": manifest["workers"],
           "model": manifest["model"], "ranks": [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in ranks]}
    (run / CHECKPOINT).write_bytes(to_bytes(old))
    shutil.rmtree(run / "checkpoints")


@pytest.mark.timeout(400)
def test_a_format_1_checkpoint_resumes_as_the_per_rank_one(finished, tmp_path):
    old, new = copy_of(finished, tmp_path / "old"), copy_of(finished, tmp_path / "new")
    write_format_1(old)
    for run in (old, new):
        result = agentsync("train", "--resume", str(run), "--steps", "60")
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (old / "checkpoints").iterdir()) == ["step-60"]  # written as format 2 from now
    ours, reference = final_model(old), final_model(new)
    for key, value in reference.items():
        assert torch.allclose(ours[key], value, atol=1e-6, rtol=0), key
