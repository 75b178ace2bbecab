"""How compressed payloads are summed over the group: ``comm.compressed_sum`` (all-gather, or
1-bit Adam's scatter-gather with error feedback on both encodings), and error feedback's decay β
(SparseLoCo's decayed residual)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from agentsync.compress import ErrorFeedback, MomentumFeedback, parse_codec
from conftest import assert_train_refused, torchrun_script, train
from test_compression import DILOCO, SGD, analytic_nbytes, assert_resumes_exactly, final_model

W = 3
SCATTERED = ("qsgd:bits=2", "topk:ratio=0.1:bits=4", "randk:ratio=0.2", "topk:ratio=0.05:decay=0.5")


# -- error feedback's decay, one process ----------------------------------------------------------
@pytest.mark.parametrize("spec", ["topk:ratio=0.05:decay=0.8", "qsgd:bits=4:decay=0.5", "sign:decay=0.9"])
def test_decayed_error_feedback_keeps_the_discounted_sum(spec):
    """e_t = β e_{t−1} + x_t − sent_t, so after T steps e_T + Σ_t β^(T−t) sent_t = Σ_t β^(T−t) x_t."""
    codec, gen = parse_codec(spec), torch.Generator().manual_seed(3)
    feedback, beta = ErrorFeedback(codec), codec.decay
    assert beta < 1
    sent, inputs = torch.zeros(500), torch.zeros(500)
    for _ in range(15):
        x = torch.randn(500, generator=gen)
        sent, inputs = beta * sent + codec.decode(feedback.compress(x)), beta * inputs + x
    assert torch.allclose(feedback.residual + sent, inputs, atol=1e-5, rtol=0)
    plain = ErrorFeedback(parse_codec(spec.rsplit(":decay", 1)[0]))
    for _ in range(2):
        plain.compress(torch.ones(500))
    assert not torch.allclose(plain.residual, feedback.residual)  # the decay changes what is kept


def test_decay_composes_with_dgc_momentum_correction():
    """Without masking the velocity u_t = m u_{t−1} + g_t does not depend on what is sent, and the
    accumulation v_t = β v_{t−1} + u_t − sent_t: so v_T + Σ_t β^(T−t) sent_t = Σ_t β^(T−t) u_t."""
    codec, gen = parse_codec("topk:ratio=0.05:momentum=0.9:masking=off:decay=0.7"), torch.Generator().manual_seed(5)
    feedback, beta = MomentumFeedback(codec), codec.decay
    velocity, sent, velocities = torch.zeros(400), torch.zeros(400), torch.zeros(400)
    for _ in range(12):
        g = torch.randn(400, generator=gen)
        velocity = 0.9 * velocity + g
        sent = beta * sent + codec.decode(feedback.compress(g))
        velocities = beta * velocities + velocity
    assert torch.allclose(feedback.residual + sent, velocities, atol=1e-5, rtol=0)


def test_decay_one_is_plain_error_feedback():
    a, b = ErrorFeedback(parse_codec("topk:ratio=0.1")), ErrorFeedback(parse_codec("topk:ratio=0.1:decay=1"))
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        x = torch.randn(300, generator=gen)
        assert torch.equal(a.compress(x).to_bytes(), b.compress(x).to_bytes())


# -- scatter-gather, three real processes ---------------------------------------------------------
@pytest.fixture(scope="module")
def scattered(tmp_path_factory):
    out = tmp_path_factory.mktemp("scatter")
    result = torchrun_script("scatter_sum.py", W, str(out))
    assert result.returncode == 0, result.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(W)]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("spec", SCATTERED)
def test_scatter_gather_gives_every_rank_the_same_sum_and_loses_nothing(scattered, spec):
    """Every rank decodes the same owners' sums (bit for bit), and what both encodings dropped is in
    the ranks' chunk residuals and the owners' residuals: the (β-discounted) sum identity holds."""
    for record in scattered:
        assert record[spec]["ranks_differ"] == 0.0
        assert record[spec]["identity_error"] < 1e-4


@pytest.mark.timeout(200)
@pytest.mark.parametrize("spec", SCATTERED)
def test_scatter_gather_sends_two_w_minus_one_chunks(scattered, spec):
    """Per sum, each rank sends W − 1 encoded chunks of ⌈N / W⌉ values (all-to-all) and W − 1 copies of
    its encoded chunk sum (all-gather): 2 (W − 1) chunk payloads, against W − 1 whole payloads."""
    n, steps = 1001, 8
    chunk = analytic_nbytes(spec.split(":decay")[0], math.ceil(n / W))
    for record in scattered:
        assert record[spec]["bytes_sent"] == steps * 2 * (W - 1) * chunk
        assert record[spec]["messages"] == steps * 2 * (W - 1)


@pytest.mark.timeout(240)
def test_allreduce_scatter_gather_counts_the_chunk_payloads(tmp_path):
    """The CLI, allreduce, W = 3 (one bucket): bytes are 2 (W − 1) encoded chunks a step, the model
    differs from the all-gather run's (the sums are encoded twice), and rank 1's NaN gradient at step
    5 reaches every rank through its owner's sum: that step is skipped, once, on every rank."""
    steps, spec = 10, "qsgd:bits=4"
    args = ["--workers", str(W), "--steps", str(steps), "--compress", spec, *SGD, "--set", "comm.fault=1:nan@5"]
    gathered = train(tmp_path / "gather", *args)
    scattered = train(tmp_path / "scatter", *args, "--set", "comm.compressed_sum=scatter-gather")
    assert scattered["nonfinite_skipped"] == gathered["nonfinite_skipped"] == 1
    n = sum(t.numel() for t in final_model(tmp_path / "gather").values())
    for a, b in zip(gathered["comm_per_rank"], scattered["comm_per_rank"], strict=True):
        assert a["bytes_sent"] == steps * (W - 1) * analytic_nbytes(spec, n)
        assert b["bytes_sent"] == steps * 2 * (W - 1) * analytic_nbytes(spec, math.ceil(n / W))
    one, two = final_model(tmp_path / "gather"), final_model(tmp_path / "scatter")
    assert any(not torch.equal(one[k], two[k]) for k in one)
    assert all(torch.isfinite(t).all() for t in two.values())


@pytest.mark.timeout(300)
def test_scatter_gather_diloco_resumes_exactly(tmp_path):
    """The chunk residuals and the owners' residuals are in the checkpoint: 10 + 10 steps of diloco
    (W = 2, a sync every 3 steps) = 20 steps, bytes and messages included."""
    assert_resumes_exactly(tmp_path, [*DILOCO, "--compress", "qsgd:bits=4",
                                      "--set", "comm.compressed_sum=scatter-gather"])


BAD = {
    "scatter-gather on gossip": (["--strategy", "gossip", "--compress", "qsgd", "--set",
                                  "comm.compressed_sum=scatter-gather"],
                                 "not supported by strategy gossip (it sums no payload over the group); "
                                 "strategies that support it: allreduce, local-sgd, diloco"),
    "scatter-gather of a linear codec": (["--compress", "fp16", "--set", "comm.compressed_sum=scatter-gather"],
                                         "needs a codec whose payloads cannot be summed encoded"),
    "scatter-gather without a codec": (["--set", "comm.compressed_sum=scatter-gather"],
                                       "not comm.compression=none"),
    "scatter-gather with DGC": (["--compress", "topk:ratio=0.1:clip=1", "--set",
                                 "comm.compressed_sum=scatter-gather"], "clip= acts on a worker's gradient"),
    "unknown compressed sum": (["--set", "comm.compressed_sum=ring"],
                               "comm.compressed_sum must be one of all-gather, scatter-gather (got 'ring')"),
    "decay out of range": (["--compress", "qsgd:decay=1.5"], "decay must be in (0, 1] (got '1.5')"),
    "decay on gossip": (["--strategy", "gossip", "--compress", "topk:ratio=0.1:decay=0.9"],
                        "decay= is not supported by strategy gossip (CHOCO's error feedback is the pair's public "
                        "copies"),
    "decay on easgd": (["--strategy", "easgd", "--compress", "qsgd:decay=0.9"],
                       "decay= is not supported by strategy easgd"),
    "decay on a pull": (["--strategy", "ps-sync", "--set", "strategy.pull_compression=qsgd:decay=0.9"],
                        "decay= is not supported for a pull"),
    "decay of powersgd": (["--compress", "powersgd:decay=0.9"], "bad option 'decay=0.9' for powersgd"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_compressed_sum_or_decay_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    argv, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    assert_train_refused(argv, expected, tmp_path, capsys)


def test_advise_models_scatter_gather_as_two_rounds_of_chunks():
    """W = 4, qsgd:bits=4: all-gather sends W − 1 payloads; scatter-gather W − 1 chunk payloads by
    all-to-all and W − 1 by all-gather, each round W − 1 messages of a chunk on the simulated link."""
    from agentsync.comm import NetSim
    from agentsync.config import load_config
    from agentsync.report.advise import model_bytes, predict

    net, workers, spec = NetSim.parse("latency=1ms,bandwidth=100Mbit"), 4, "qsgd:bits=4"

    def run(*overrides):
        cfg = load_config(None, flags={"workers": workers, "comm.compression": spec}, overrides=list(overrides))
        return predict(cfg, net, compute_s=0.0, nbytes=model_bytes(cfg), cores=workers)

    gathered, scattered = run(), run("comm.compressed_sum=scatter-gather")
    n = model_bytes(load_config(None, flags={})) // 4
    chunk = analytic_nbytes(spec, math.ceil(n / workers))
    assert gathered.bytes_per_step == (workers - 1) * analytic_nbytes(spec, n)
    assert scattered.bytes_per_step == 2 * (workers - 1) * chunk
    assert scattered.comm_s == pytest.approx(2 * (workers - 1) * (1e-3 + chunk / net.bandwidth_Bps))
