"""gossip, local-sgd, diloco, ensemble: mixing rates, equivalence, accuracy, bytes, buffers, resume,
RL tasks under ensemble, validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agentsync.checkpoint import load_rank_states
from agentsync.cli import main
from agentsync.sync.topology import TOPOLOGIES, mixing_matrix
from conftest import agentsync, read_jsonl, torchrun_script, train

W = 4
MODEL_BYTES = (64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10) * 4  # the digits MLP, float32


# -- gossip mixing, learning rate 0 ------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixing(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixing")
    result = torchrun_script("gossip_mixing.py", W, str(out))
    assert result.returncode == 0, result.stderr
    from scripts.gossip_mixing import ALPHA, ROUNDS  # noqa: E402  (the script's constants)
    initial = np.stack([torch.randn(36, generator=torch.Generator().manual_seed(100 + r)).numpy()
                        for r in range(W)]).astype(np.float64)
    return out, json.loads((out / "distances.json").read_text()), initial, ALPHA, ROUNDS


def ring_matrix_by_hand(round_: int, alpha: float) -> np.ndarray:
    """Ring with W = 4 alternating right and left neighbours: (0,1),(2,3) then (1,2),(3,0)."""
    pairs = [(0, 1), (2, 3)] if round_ % 2 == 0 else [(1, 2), (3, 0)]
    m = np.eye(W)
    for i, j in pairs:
        m[i, i] = m[j, j] = alpha
        m[i, j] = m[j, i] = 1 - alpha
    return m


def distance(x: np.ndarray) -> float:
    return float(np.linalg.norm(x - x.mean(0), axis=1).mean())


@pytest.mark.timeout(200)
@pytest.mark.parametrize("topology", ["ring", "random", "exponential"])
def test_gossip_consensus_follows_the_mixing_matrix(mixing, topology):
    out, measured, initial, alpha, rounds = mixing
    topo = TOPOLOGIES[topology](W, seed=0)
    matrices = [mixing_matrix(topo, k, alpha) for k in range(rounds)]
    if topology == "ring":
        assert all(np.array_equal(m, ring_matrix_by_hand(k, alpha)) for k, m in enumerate(matrices))
    # exact trajectory: x_{k+1} = M_k x_k, the distance after every round to float32 precision
    x, predicted = initial, []
    for m in matrices:
        x = m @ x
        predicted.append(distance(x))
    np.testing.assert_allclose(measured[topology], predicted, rtol=1e-4, atol=1e-5)

    final = np.stack([torch.load(out / f"{topology}-rank{r}.pt").numpy() for r in range(W)])
    np.testing.assert_allclose(final.mean(0), initial.mean(0), atol=1e-6)  # the global mean is conserved
    assert distance(final) < 1e-2 * distance(initial)  # every worker converges to that mean


@pytest.mark.timeout(200)
@pytest.mark.parametrize("topology", ["ring", "exponential"])
def test_gossip_rate_is_the_second_eigenvalue(mixing, topology):
    """Both topologies repeat with period 2 for W = 4; over a period the distance shrinks by
    |λ2| of the period's product matrix once the slowest mode dominates (tolerance 3%)."""
    _, measured, _, alpha, rounds = mixing
    topo = TOPOLOGIES[topology](W, seed=0)
    period = mixing_matrix(topo, 1, alpha) @ mixing_matrix(topo, 0, alpha)
    lambda2 = sorted(np.abs(np.linalg.eigvals(period)))[-2]
    d = measured[topology]
    observed = d[15] / d[13]  # after 14 and 16 rounds: the slow mode dominates, still far above float noise
    assert 0 < lambda2 < 1
    assert observed == pytest.approx(lambda2, rel=0.03)


# -- training runs ---------------------------------------------------------------------------------
RUNS = {
    "gossip": ["--strategy", "gossip", "--set", "strategy.topology=ring", "--set", "strategy.alpha=0.5"],
    "local-sgd": ["--strategy", "local-sgd", "--set", "strategy.period=8"],
    "diloco": ["--strategy", "diloco"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {name: (base / name, train(base / name, "--workers", str(W), "--steps", "300", "--set", "log_every=1",
                                      *args)) for name, args in RUNS.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", RUNS)
def test_reaches_accuracy_on_digits_with_four_workers(runs, name):
    run_dir, summary = runs[name]
    assert summary["metrics"]["accuracy"] >= 0.93
    assert summary["consensus_distance"] is not None and len(summary["members"]["metrics"]) == W
    evals = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "eval"]
    assert all("consensus_distance" in e for e in evals)


def train_increments(run_dir, rank: int, key: str) -> list[int]:
    values = [e[key] for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "train" and e["rank"] == rank]
    return [b - a for a, b in zip([0] + values, values)]


@pytest.mark.timeout(300)
def test_gossip_round_moves_one_model_each_way(runs):
    """Ring with W = 4: every worker has a partner every round and swaps its whole model:
    model bytes sent + model bytes received = 2 x model bytes per worker per round."""
    run_dir, _ = runs["gossip"]
    for rank in range(W):
        for key in ("bytes_sent", "bytes_received"):
            assert all(inc == pytest.approx(MODEL_BYTES, rel=0.05) for inc in train_increments(run_dir, rank, key))


@pytest.mark.timeout(300)
def test_local_sgd_averaging_costs_one_allreduce(runs):
    """Every 8th step one ring all-reduce of the model: 2 (W-1)/W x model bytes; nothing in between."""
    run_dir, _ = runs["local-sgd"]
    increments = train_increments(run_dir, 0, "bytes_sent")
    averaging = [inc for step, inc in enumerate(increments, 1) if step % 8 == 0]
    assert all(inc == pytest.approx(2 * (W - 1) / W * MODEL_BYTES, rel=0.05) for inc in averaging)
    assert all(inc == 0 for step, inc in enumerate(increments, 1) if step % 8)


@pytest.mark.timeout(200)
def test_local_sgd_period_1_equals_allreduce(tmp_path):
    sgd = ["--workers", "2", "--steps", "50", "--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.05",
           "--set", "optimizer.momentum=0"]
    train(tmp_path / "ar", "--strategy", "allreduce", *sgd)
    with pytest.warns(UserWarning, match="local-sgd with period 1 averages every step"):  # and says so
        train(tmp_path / "ls", "--strategy", "local-sgd", "--set", "strategy.period=1", *sgd)
    a = torch.load(tmp_path / "ar" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ls" / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key


@pytest.mark.timeout(200)
def test_ensemble_beats_its_mean_member_and_reports_all(tmp_path):
    summary = train(tmp_path / "run", "--strategy", "ensemble", "--workers", str(W), "--steps", "300")
    members = summary["members"]
    assert len(members["metrics"]) == W
    assert summary["metrics"]["accuracy"] >= members["mean"]
    assert "accuracy" in summary["models"]["param_average"]
    # no message while training; the final gather is a one-off, uncounted like the initial broadcast
    assert summary["comm"]["bytes_sent"] == 0
    from agentsync.cli import main as cli_main  # evaluate rebuilds the ensemble from the checkpoint
    assert cli_main(["evaluate", str(tmp_path / "run"), "--json"]) == 0


RL_RUNS = {
    "frozenlake-q": ["--steps", "40"],
    "cartpole-dqn": ["--steps", "20", "--set", "task.learning_starts=64"],
    "cartpole-ppo": ["--steps", "10"],
    "acrobot-ppo": ["--steps", "8"],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("task", RL_RUNS)
def test_ensemble_runs_every_rl_task_and_evaluate_reproduces_it(task, tmp_path):
    """The ensemble acts through forward only (mean Q-values; mean logits and values of actor-critics)."""
    run_dir = tmp_path / "run"
    summary = train(run_dir, "--task", task, "--strategy", "ensemble", "--workers", "2", "--set", "eval_every=0",
                    "--set", "task.eval_episodes=3", *RL_RUNS[task])
    assert len(summary["members"]["metrics"]) == 2
    result = agentsync("evaluate", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["eval_return"] == summary["metrics"]["eval_return"]


@pytest.mark.timeout(200)
def test_ensemble_members_keep_their_own_buffers(tmp_path):
    """acrobot-ppo normalises observations with running statistics in buffers: each member carries its worker's."""
    run_dir = tmp_path / "run"
    train(run_dir, "--task", "acrobot-ppo", "--strategy", "ensemble", "--workers", "2", "--steps", "4",
          "--set", "eval_every=0", "--set", "task.eval_episodes=1")
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ranks = load_rank_states(run_dir)
    for rank in ranks:
        own = rank["state"]["model"]
        for key, value in own.items():
            assert torch.equal(saved["model"][f"members.{rank['rank']}.{key}"], value), key
    means = [rank["state"]["model"]["policy.norm.mean"] for rank in ranks]
    assert not torch.equal(*means)  # the workers saw different observations


# -- buffers at sync points ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def buffer_sync(tmp_path_factory):
    out = tmp_path_factory.mktemp("buffers")
    result = torchrun_script("buffer_sync.py", 2, str(out))
    assert result.returncode == 0, result.stderr
    return {name: [torch.load(out / f"{name}-rank{r}.pt") for r in range(2)]
            for name in ("local-sgd", "diloco", "gossip")}


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", ["local-sgd", "diloco"])
def test_averaging_sync_points_average_floating_buffers(buffer_sync, name):
    """BatchNorm running statistics differ before the sync point and equal their mean after it;
    num_batches_tracked (an integer counter) is left as it is."""
    ranks = buffer_sync[name]
    for key, before in ranks[0]["pre"].items():
        if before.is_floating_point():
            assert not torch.allclose(before, ranks[1]["pre"][key])
            mean = (ranks[0]["pre"][key] + ranks[1]["pre"][key]) / 2
            for rank in ranks:
                assert torch.allclose(rank["post"][key], mean, atol=1e-7, rtol=0), key
        else:
            for rank in ranks:
                assert torch.equal(rank["post"][key], rank["pre"][key]), key
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert ranks[0]["distance"] == ranks[1]["distance"] == 0.0


@pytest.mark.timeout(200)
def test_gossip_mixes_floating_buffers_with_its_weight(buffer_sync):
    """b_i ← α b_i + (1 − α) b_j with α = 0.25, the weight the parameters are mixed with."""
    ranks = buffer_sync["gossip"]
    for i, j in ((0, 1), (1, 0)):
        for key, mine in ranks[i]["pre"].items():
            if mine.is_floating_point():
                expected = 0.25 * mine + 0.75 * ranks[j]["pre"][key]
                assert torch.allclose(ranks[i]["post"][key], expected, atol=1e-6, rtol=0), key
            else:
                assert torch.equal(ranks[i]["post"][key], mine), key


# -- resume: parameters and every cumulative counter ---------------------------------------------
RESUMED = {
    "gossip": ["--strategy", "gossip", "--set", "strategy.topology=random"],
    "local-sgd": ["--strategy", "local-sgd", "--set", "strategy.period=4"],
    "diloco": ["--strategy", "diloco", "--set", "strategy.inner_steps=4"],
}


def rank_states(run_dir) -> list[dict]:
    return load_rank_states(run_dir)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", RESUMED)
def test_resume_continues_parameters_and_counters(name, tmp_path):
    """10 steps, then --resume to 20, against 20 uninterrupted: parameters of every rank, bytes,
    messages, samples and strategy counters (gossip's rounds) equal; comm time continues."""
    run = ["--workers", "2", "--set", "eval_every=5", *RESUMED[name]]
    whole = train(tmp_path / "whole", *run, "--steps", "20")
    half = train(tmp_path / "split", *run, "--steps", "10")
    result = agentsync("train", "--resume", str(tmp_path / "split"), "--steps", "20")
    assert result.returncode == 0, result.stderr
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    for key in ("bytes_sent", "bytes_received", "messages"):
        assert resumed["comm"][key] == whole["comm"][key] > half["comm"][key], key
        assert [r[key] for r in resumed["comm_per_rank"]] == [r[key] for r in whole["comm_per_rank"]], key
    assert resumed["comm"]["comm_time_s"] >= half["comm"]["comm_time_s"]  # continued, not restarted
    for mine, theirs in zip(rank_states(tmp_path / "split"), rank_states(tmp_path / "whole")):
        assert mine["samples"] == theirs["samples"]
        assert mine["stats"]["steps"] == theirs["stats"]["steps"] == 20
        if name == "gossip":
            assert mine["state"]["strategy"]["rounds"] == theirs["state"]["strategy"]["rounds"] == 20
        for key, value in theirs["state"]["model"].items():
            assert torch.allclose(mine["state"]["model"][key], value, atol=1e-6, rtol=0), key


@pytest.mark.parametrize("setting, expected", [
    ("strategy.alpha=1.5", "strategy.alpha must be in [0, 1] (got 1.5)"),
    ("strategy.topology=star", "strategy.topology must be one of exponential, random, ring (got 'star')"),
])
def test_bad_gossip_options_exit_2(setting, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--strategy", "gossip", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err == f"agentsync: error: {expected}\n"
    assert list(tmp_path.iterdir()) == []
