"""gossip, local-sgd, diloco, ensemble: mixing rates, equivalence, accuracy, bytes, validation."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from agentsync.cli import main
from agentsync.sync.topology import TOPOLOGIES, mixing_matrix
from conftest import ENV, ROOT, read_jsonl, train

W = 4
MODEL_BYTES = (64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10) * 4  # the digits MLP, float32


# -- gossip mixing, learning rate 0 ------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixing(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixing")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(W), str(ROOT / "tests/scripts/gossip_mixing.py"), str(out)],
                            capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)
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
    assert summary["comm"]["bytes_sent"] > 0 and all(  # no message while training, only the final gather
        e["bytes_sent"] == 0 for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if e["event"] == "train")
    from agentsync.cli import main as cli_main  # evaluate rebuilds the ensemble from the checkpoint
    assert cli_main(["evaluate", str(tmp_path / "run"), "--json"]) == 0


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
