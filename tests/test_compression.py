"""Compression with error feedback: codecs and residuals in one process, then the codec stage in
real two-worker runs (allreduce, local-sgd, diloco, the parameter servers): ``none`` changes nothing, a lossless codec changes
nothing, bytes are the encoded payload's, and resume is exact."""
from __future__ import annotations

import json
import math

import pytest
import torch

from agentsync.comm import Comm, CommConfig
from agentsync.compress import Compression, ErrorFeedback, parse_codec
from agentsync.errors import ConfigError
from agentsync.sync.compressed import all_sum_async
from conftest import agentsync, assert_train_refused, torchrun_script, train

N = 3000
SPECS = ["none", "fp16", "bf16", "int8", "qsgd:bits=4", "qsgd:bits=2", "sign", "topk:ratio=0.01",
         "topk:ratio=0.01:bits=4", "topk:ratio=0.05:bits=2", "randk:ratio=0.05"]  # powersgd is a transport over matrices, tested below
SGD = ["--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.05", "--set", "optimizer.momentum=0"]


def topk_nbytes(n: int, k: int, bits: int = 32) -> int:
    """Top-k's payload by hand: the count (int32), k indices at ⌈log₂ n⌉ bits, k values (fp32, or
    ``bits`` each plus an fp32 scale)."""
    values = 4 * k if bits == 32 else math.ceil(k * bits / 8) + 4
    return 4 + math.ceil(k * math.ceil(math.log2(n)) / 8) + values


def analytic_nbytes(spec: str, n: int) -> int:
    """Bytes on the wire for an fp32 tensor of n elements, worked out by hand."""
    if spec in ("fp16", "bf16"):
        return 2 * n
    if spec == "int8":
        return n + 4 * math.ceil(n / 1024)
    if spec.startswith("qsgd"):
        bits = int(spec.split("=")[1])
        return math.ceil(n * bits / 8) + 4 * math.ceil(n / 1024)
    if spec == "sign":
        return math.ceil(n / 8) + 4
    if spec.startswith("topk"):
        return topk_nbytes(n, max(1, math.ceil(float(spec.split(":")[1].split("=")[1]) * n)),
                           int(spec.split("bits=")[1]) if "bits=" in spec else 32)
    if spec.startswith("randk"):
        return 4 * max(1, math.ceil(float(spec.split("=")[1]) * n))  # indices shared by seed, not sent
    return 4 * n


# -- one process ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_encoded_size_is_the_analytic_size_and_travels_as_bytes(spec):
    codec = parse_codec(spec)
    x = torch.randn(N, generator=torch.Generator().manual_seed(1))
    encoded = codec.encode(x)
    assert codec.nbytes(encoded) == analytic_nbytes(spec, N) == encoded.to_bytes().numel()
    assert torch.equal(codec.decode(encoded.like(encoded.to_bytes())), codec.decode(encoded))


@pytest.mark.parametrize("spec", SPECS)
def test_error_feedback_loses_nothing(spec):
    """After T steps: Σ transmitted (decoded) + final residual = Σ raw inputs."""
    codec, gen = parse_codec(spec), torch.Generator().manual_seed(2)
    feedback = ErrorFeedback(codec)
    inputs = [torch.randn(N, generator=gen) for _ in range(20)]
    sent = sum(codec.decode(feedback.compress(x)) for x in inputs)
    assert torch.allclose(sent + feedback.residual, sum(inputs), atol=1e-4, rtol=0)
    before = feedback.residual.clone()
    feedback.compress(torch.full((N,), float("nan")))
    assert torch.equal(feedback.residual, before)  # a skipped (non-finite) step is not remembered


def test_qsgd_is_unbiased_and_lossless_codecs_are_exact():
    codec = parse_codec("qsgd:bits=4")
    x = torch.randn(N, generator=torch.Generator().manual_seed(3))
    mean = sum(codec.decode(codec.encode(x)) for _ in range(400)) / 400
    assert (mean - x).abs().mean() < 0.02
    for spec in ("none", "topk:ratio=1.0"):
        lossless = parse_codec(spec)
        assert torch.equal(lossless.decode(lossless.encode(x)), x)


def test_stochastic_rounding_differs_by_rank_and_random_k_indices_do_not():
    x = torch.randn(N, generator=torch.Generator().manual_seed(6))
    qsgd = [parse_codec("qsgd:bits=2", rank=r).encode(x).to_bytes() for r in (0, 1)]
    assert not torch.equal(*qsgd)
    randk = [parse_codec("randk:ratio=0.1", rank=r).encode(x).to_bytes() for r in (0, 1)]
    assert torch.equal(*randk)


def test_compression_state_round_trip_continues_identically():
    """Residuals and the codec's generator come back from a state dict: what follows is the same."""
    gen = torch.Generator().manual_seed(4)
    inputs = [torch.randn(N, generator=gen) for _ in range(6)]
    a = Compression(parse_codec("qsgd:bits=2"))
    for x in inputs[:3]:
        a.compress("bucket0", x)
    b = Compression(parse_codec("qsgd:bits=2"))
    b.load_state_dict(a.state_dict())
    for x in inputs[3:]:
        assert torch.equal(a.compress("bucket0", x).to_bytes(), b.compress("bucket0", x).to_bytes())


def test_all_sum_on_one_rank_is_the_decoded_payload():
    comm = Comm(0, 1, CommConfig())
    x = torch.randn(N, generator=torch.Generator().manual_seed(5))
    for spec in ("fp16", "topk:ratio=0.1"):
        compression, out = Compression(parse_codec(spec)), x.clone()
        all_sum_async(comm, compression, "t", out).wait()
        assert torch.allclose(out + compression.feedback["t"].residual, x, atol=1e-6)


def test_powersgd_error_feedback_loses_nothing():
    """One rank: Σ transmitted P Qᵀ (and the bias, sent as it is) + final residuals = Σ raw gradients."""
    comm, compression = Comm(0, 1, CommConfig()), Compression(parse_codec("powersgd:rank=2"))
    shapes = [torch.Size([20, 30]), torch.Size([30]), torch.Size([10, 20])]
    gen = torch.Generator().manual_seed(7)
    inputs = [torch.randn(830, generator=gen) for _ in range(30)]
    sent = torch.zeros(830)
    for x in inputs:
        out = x.clone()
        all_sum_async(comm, compression, "b", out, shapes).wait()
        sent += out
    residual = torch.cat([compression.copies["b/e0"].reshape(-1), torch.zeros(30),
                          compression.copies["b/e2"].reshape(-1)])
    assert torch.allclose(sent + residual, sum(inputs), atol=1e-4, rtol=0)


BAD = {
    "unknown codec": (["--compress", "zip"], "comm.compression: unknown codec 'zip'; available: none, fp16"),
    "ratio out of range": (["--compress", "topk:ratio=2"], "ratio must be in (0, 1] (got '2')"),
    "bad bits": (["--compress", "qsgd:bits=3"], "bits must be 2, 4 or 8"),
    "bad top-k bits": (["--compress", "topk:ratio=0.01:bits=16"], "bits must be 2, 4, 8 or 32 (got '16')"),
    "unknown option": (["--compress", "fp16:ratio=0.1"], "bad option 'ratio=0.1' for fp16"),
    "via --set": (["--set", "comm.compression=topk:ratio=0"], "ratio must be in (0, 1]"),
    **{f"{s} refuses": (["--strategy", s, "--compress", "fp16"],
                        f"comm.compression=fp16 is not supported by strategy {s}; "
                        "strategies that support it: allreduce, gossip, local-sgd, diloco, ps-sync, ps-async, ssp, easgd")
       for s in ("none", "ensemble")},
    "randk on a parameter server": (["--strategy", "ps-async", "--compress", "randk"],
                                    "not supported by strategy ps-async (its indices come from a generator"),
    "powersgd outside allreduce": (["--strategy", "local-sgd", "--compress", "powersgd:rank=2"],
                                   "(powersgd needs gradients laid out as parameter matrices); strategies that "
                                   "support powersgd: allreduce"),
    "randk in gossip": (["--strategy", "gossip", "--compress", "randk"],
                        "strategies that support randk: allreduce, local-sgd, diloco"),
    "consensus step without a codec": (["--strategy", "gossip", "--set", "strategy.consensus_step=0.5"],
                                       "strategy.consensus_step=0.5 needs comm.compression"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_compression_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    argv, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    assert_train_refused(argv, expected, tmp_path, capsys)


def test_strategy_built_outside_the_cli_refuses_too():
    from agentsync.sync import STRATEGIES
    cls = STRATEGIES["ensemble"]
    with pytest.raises(ConfigError, match="not supported by strategy ensemble"):
        cls(cls.Config(name="ensemble"), Comm(0, 1, CommConfig(compression="sign")))


# -- two workers ------------------------------------------------------------------------------
def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())


@pytest.fixture(scope="module")
def allreduce_plain(tmp_path_factory):
    """allreduce, W=2, 50 SGD steps, no compression option at all."""
    run = tmp_path_factory.mktemp("plain") / "run"
    train(run, "--workers", "2", "--steps", "50", *SGD)
    return run


@pytest.mark.timeout(240)
def test_allreduce_none_and_lossless_topk_are_bit_identical(tmp_path, allreduce_plain):
    plain = final_model(allreduce_plain)
    train(tmp_path / "none", "--workers", "2", "--steps", "50", "--compress", "none", *SGD)
    assert_identical(final_model(tmp_path / "none"), plain)
    train(tmp_path / "topk", "--workers", "2", "--steps", "50", "--compress", "topk:ratio=1.0", *SGD)
    assert_identical(final_model(tmp_path / "topk"), plain)


@pytest.mark.timeout(240)
def test_allreduce_fp16_is_close_to_fp32_and_counts_half_the_bytes(tmp_path, allreduce_plain):
    summary = train(tmp_path / "fp16", "--workers", "2", "--steps", "50", "--compress", "fp16", *SGD)
    plain, half = final_model(allreduce_plain), final_model(tmp_path / "fp16")
    for key in plain:
        assert (half[key] - plain[key]).norm() <= 1e-2 * plain[key].norm(), key
    n = sum(t.numel() for t in plain.values())  # one bucket: the digits MLP is under 1 MiB
    plain_summary = json.loads((allreduce_plain / "summary.json").read_text())
    for rank, stats in enumerate(summary["comm_per_rank"]):
        assert stats["bytes_sent"] == 50 * 2 * (2 - 1) / 2 * 2 * n  # ring all-reduce of fp16 values
        assert stats["bytes_sent"] * 2 == plain_summary["comm_per_rank"][rank]["bytes_sent"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "sign"])
def test_allreduce_gathered_codec_counts_the_encoded_payload(tmp_path, allreduce_plain, spec):
    """An all-gather of W payloads: each rank sends its payload to W-1 others and receives theirs."""
    steps, workers = 20, 2
    summary = train(tmp_path / "run", "--workers", str(workers), "--steps", str(steps), "--compress", spec, *SGD)
    n = sum(t.numel() for t in final_model(allreduce_plain).values())
    for stats in summary["comm_per_rank"]:
        assert stats["bytes_sent"] == stats["bytes_received"] == steps * (workers - 1) * analytic_nbytes(spec, n)
        assert stats["messages"] == steps * (workers - 1)


@pytest.mark.timeout(240)
def test_a_nan_gradient_is_skipped_once_and_not_kept_in_the_residual(tmp_path):
    """Rank 1's loss is NaN at step 10: that step is skipped on both ranks, and only that one."""
    summary = train(tmp_path / "nan", "--workers", "2", "--steps", "15", "--compress", "topk:ratio=0.1", *SGD,
                    "--set", "comm.fault=1:nan@10")
    assert summary["nonfinite_skipped"] == 1
    assert all(torch.isfinite(t).all() for t in final_model(tmp_path / "nan").values())


@pytest.mark.timeout(240)
def test_powersgd_all_reduces_p_and_q_after_plain_steps(tmp_path, allreduce_plain):
    """powersgd:rank=2:start=5, W = 2, 20 steps: 5 plain all-reduces of the bucket, then per step one
    of P (n×2 per weight matrix, biases as they are) and one of Q (m×2 per matrix); and with start past
    the last step it is plain allreduce, bit for bit."""
    train(tmp_path / "late", "--workers", "2", "--steps", "50", "--compress", "powersgd:rank=2:start=50", *SGD)
    assert_identical(final_model(tmp_path / "late"), final_model(allreduce_plain))
    summary = train(tmp_path / "psgd", "--workers", "2", "--steps", "20", "--compress", "powersgd:rank=2:start=5",
                    *SGD)
    model = final_model(allreduce_plain)
    n = sum(t.numel() for t in model.values())
    matrices = [t.shape for t in model.values() if t.dim() == 2]  # digits MLP: (128,64), (128,128), (10,128)
    p = sum(rows * 2 for rows, _ in matrices) + sum(t.numel() for t in model.values() if t.dim() == 1)
    q = sum(cols * 2 for _, cols in matrices)
    for stats in summary["comm_per_rank"]:  # a ring all-reduce of B bytes sends 2(W−1)/W × B = B at W = 2
        assert stats["bytes_sent"] == 5 * 4 * n + 15 * 4 * (p + q)
    assert summary["comm"]["codec_time_s"] > 0


LOCAL = ["--strategy", "local-sgd", "--set", "strategy.period=3", "--workers", "2", *SGD]


@pytest.mark.timeout(240)
def test_local_sgd_none_is_bit_identical_to_no_option(tmp_path):
    train(tmp_path / "plain", *LOCAL, "--steps", "30")
    train(tmp_path / "none", *LOCAL, "--steps", "30", "--compress", "none")
    assert_identical(final_model(tmp_path / "none"), final_model(tmp_path / "plain"))


DILOCO = ["--strategy", "diloco", "--set", "strategy.inner_steps=3", "--workers", "2", *SGD]


GOSSIP = ["--strategy", "gossip", "--set", "strategy.period=3", "--set", "strategy.consensus_step=0.5",
          "--workers", "2", *SGD]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["local-sgd", "diloco", "gossip"])
def test_compressed_run_resumes_exactly(tmp_path, strategy):
    """Residuals, the anchor (θ_start), gossip's public copies and qsgd's generator are in the
    checkpoint: 20 + 20 steps = 40 steps. Every 3 steps a synchronisation, so the split falls between two."""
    args = [*{"local-sgd": LOCAL, "diloco": DILOCO, "gossip": GOSSIP}[strategy], "--compress", "qsgd:bits=4"]
    whole = train(tmp_path / "whole", *args, "--steps", "40")
    train(tmp_path / "split", *args, "--steps", "20")
    result = agentsync("train", "--resume", str(tmp_path / "split"), "--steps", "40")
    assert result.returncode == 0, result.stderr
    assert_identical(final_model(tmp_path / "split"), final_model(tmp_path / "whole"))
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert resumed["comm"]["bytes_sent"] == whole["comm"]["bytes_sent"]


# -- parameter servers: workers push through the codec, servers decode -----------------------
PS = ["--set", "eval_every=0", *SGD]


def push_bytes(spec: str, n: int) -> int:
    """One push on the wire: the int64 header (8 float32 slots) and the encoded bytes in float32 slots."""
    return 32 + 4 * math.ceil(analytic_nbytes(spec, n) / 4)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy,workers", [("ps-sync", 2), ("ps-async", 1)])
def test_ps_none_and_lossless_topk_are_bit_identical(tmp_path, strategy, workers):
    """ps-async with one worker is deterministic; ssp is ps-async with a bound, the same push path."""
    args = ["--strategy", strategy, "--workers", str(workers), "--steps", "20", *PS]
    plain = train(tmp_path / "plain", *args)
    runs = ["none", "topk:ratio=1.0"] if strategy == "ps-sync" else ["topk:ratio=1.0"]
    for spec in runs:
        summary = train(tmp_path / spec, *args, "--compress", spec)
        assert_identical(final_model(tmp_path / spec), final_model(tmp_path / "plain"))
    n = sum(t.numel() for t in final_model(tmp_path / "plain").values())
    for before, after in zip(plain["comm_per_rank"], summary["comm_per_rank"]):
        if after["rank"] < workers:  # a worker pushes values and indices, gets the dense shard back
            assert after["bytes_sent"] == 20 * push_bytes("topk:ratio=1.0", n)
            assert after["bytes_received"] == before["bytes_received"] == 20 * (32 + 4 * n)
        else:
            assert after["bytes_received"] == workers * 20 * push_bytes("topk:ratio=1.0", n)


@pytest.mark.timeout(300)
def test_easgd_with_a_lossless_codec_is_easgd(tmp_path):
    """One worker (deterministic), an exchange every 2 steps: the public copy θ̂ equals θ after each
    push, so the elastic move is plain easgd's up to rounding; the pushes carry values and indices."""
    args = ["--strategy", "easgd", "--set", "strategy.tau=2", "--workers", "1", "--steps", "20", *PS]
    train(tmp_path / "plain", *args)
    summary = train(tmp_path / "lossless", *args, "--compress", "topk:ratio=1.0")
    plain, lossless = final_model(tmp_path / "plain"), final_model(tmp_path / "lossless")
    for key in plain:
        assert torch.allclose(lossless[key], plain[key], rtol=0, atol=1e-6), key
    n = sum(t.numel() for t in plain.values())
    worker = next(r for r in summary["comm_per_rank"] if r["rank"] == 0)
    assert worker["bytes_sent"] == 10 * push_bytes("topk:ratio=1.0", n)


@pytest.mark.timeout(300)
def test_compressed_ps_sync_resumes_exactly_and_counts_the_encoded_pushes(tmp_path):
    """The workers' residuals and generators travel in the checkpoint: 10 + 10 steps = 20 steps.
    (easgd does not resume exactly even uncompressed: a finished worker takes the center.)"""
    workers = 2
    whole = assert_resumes_exactly(tmp_path, ["--strategy", "ps-sync", "--workers", str(workers), *PS,
                                              "--compress", "qsgd:bits=4"])
    n = sum(t.numel() for t in final_model(tmp_path / "whole").values())
    for stats in whole["comm_per_rank"]:
        if stats["rank"] < workers:
            assert stats["bytes_sent"] == 20 * push_bytes("qsgd:bits=4", n)


def assert_resumes_exactly(tmp_path, args: list[str]) -> dict:
    """Train ARGS 20 steps in ``whole``, and 10 + 10 in ``split`` (``--resume``): the same final model
    and per-rank bytes and messages. Returns the uninterrupted run's summary."""
    whole = train(tmp_path / "whole", *args, "--steps", "20")
    train(tmp_path / "split", *args, "--steps", "10")
    result = agentsync("train", "--resume", str(tmp_path / "split"), "--steps", "20")
    assert result.returncode == 0, result.stderr
    assert_identical(final_model(tmp_path / "split"), final_model(tmp_path / "whole"))
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    keys = ("rank", "bytes_sent", "bytes_received", "messages")
    for a, b in zip(whole["comm_per_rank"], resumed["comm_per_rank"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    return whole


# -- gossip: CHOCO-SGD, public copies and compressed differences --------------------------------
@pytest.fixture(scope="module")
def choco(tmp_path_factory):
    out = tmp_path_factory.mktemp("choco")
    result = torchrun_script("choco_mixing.py", 4, str(out))
    assert result.returncode == 0, result.stderr
    return json.loads((out / "choco.json").read_text())


@pytest.mark.timeout(200)
def test_choco_gossip_with_a_lossless_codec_is_gossip(choco):
    """x̂ = x after each exchange, so x_i + (1 − α)(x_j − x_i) = α x_i + (1 − α) x_j up to rounding:
    the same trajectory of consensus distances (W = 4, ring, α = 0.75), to float32 precision."""
    plain, lossless = choco["none"]["distances"], choco["topk:ratio=1.0"]["distances"]
    assert plain[-1] < 1e-3 * plain[0]
    assert lossless == pytest.approx(plain, rel=1e-5, abs=1e-5)
    exchanges = choco["none"]["bytes_sent"] // (4 * 36)  # values and packed indices, per exchange
    assert choco["topk:ratio=1.0"]["bytes_sent"] == exchanges * analytic_nbytes("topk:ratio=1.0", 36)


@pytest.mark.timeout(200)
def test_choco_gossip_with_top_k_reaches_consensus(choco):
    """lr 0, top 10 % of 36 parameters per exchange (γ = 0.2): the distance falls below 1 % of its start,
    and each round sends the encoded payload only (a count, 4 values, 4 six-bit indices)."""
    run = choco["topk:ratio=0.1"]
    assert run["distances"][-1] < 1e-2 * run["distances"][0]
    assert run["bytes_sent"] == 100 * analytic_nbytes("topk:ratio=0.1", 36) == 100 * 23


# -- advise: codec bytes and measured encode/decode in the step-time model -----------------------
def test_advise_models_the_encoded_payload_and_warns_for_lossy_codecs():
    from agentsync.comm import NetSim
    from agentsync.config import load_config
    from agentsync.report.advise import model_bytes, predict

    net, workers = NetSim.parse("latency=0ms,bandwidth=100Mbit"), 4

    def run(strategy, spec):
        cfg = load_config(None, flags={"strategy.name": strategy, "workers": workers, "comm.compression": spec})
        return predict(cfg, net, compute_s=0.0, nbytes=model_bytes(cfg), cores=workers)

    dense, half, sparse = run("allreduce", "none"), run("allreduce", "fp16"), run("allreduce", "topk:ratio=0.01")
    n = model_bytes(load_config(None, flags={})) // 4
    assert half.bytes_per_step == dense.bytes_per_step / 2  # fp16 is all-reduced: the ring's bytes halve
    assert sparse.bytes_per_step == (workers - 1) * analytic_nbytes("topk:ratio=0.01", n)  # all-gathered
    assert sparse.comm_s == pytest.approx(sparse.bytes_per_step / net.bandwidth_Bps)
    assert sparse.codec_s > 0 and sparse.step_time_s == sparse.codec_s + sparse.comm_s
    assert "residual" in sparse.warning and half.warning == "" and dense.codec == "none"
    push = run("ps-sync", "topk:ratio=0.01")  # encoded push, dense answer: headers on both
    assert push.bytes_per_step == analytic_nbytes("topk:ratio=0.01", n) + 32
    assert push.comm_s == pytest.approx((push.bytes_per_step + 4 * n + 32) / net.bandwidth_Bps)
    cfg = load_config(None, flags={"strategy.name": "ps-sync", "workers": workers},
                      overrides=["strategy.pull_compression=qsgd:bits=4"])  # dense push, encoded answer
    answered = predict(cfg, net, compute_s=0.0, nbytes=model_bytes(cfg), cores=workers)
    assert answered.bytes_per_step == 4 * n + 32  # a worker's bytes: its push
    assert answered.comm_s == pytest.approx((4 * n + analytic_nbytes("qsgd:bits=4", n) + 64) / net.bandwidth_Bps)
    assert answered.codec_s > 0 and "stochastic rounding" in answered.warning


def test_advise_models_powersgd_from_the_model_matrices():
    """digits' MLP, rank 2: P has 2 rows per matrix row plus the biases as they are, Q 2 per column;
    two ring all-reduces send 2(W − 1)/W of them; the factorisation is timed; local-sgd cannot take it."""
    from agentsync.comm import NetSim
    from agentsync.config import load_config
    from agentsync.report.advise import advise, model_bytes, predict

    net, workers = NetSim.parse("latency=0ms,bandwidth=100Mbit"), 4
    cfg = load_config(None, flags={"workers": workers, "comm.compression": "powersgd:rank=2"})
    low = predict(cfg, net, compute_s=0.0, nbytes=model_bytes(cfg), cores=workers)
    p = (128 + 128 + 10) * 2 + 128 + 128 + 10  # (128,64), (128,128), (10,128) and three biases
    q = (64 + 128 + 128) * 2
    assert low.bytes_per_step == 2 * (workers - 1) / workers * 4 * (p + q)
    assert low.comm_s == pytest.approx(low.bytes_per_step / net.bandwidth_Bps)
    assert low.codec_s > 0 and low.step_time_s == low.codec_s + low.comm_s
    names = [(r.strategy, r.codec) for r in advise("digits", ["allreduce", "local-sgd"], workers, net,
                                                  compressions=["powersgd:rank=2"])]
    assert names == [("allreduce", "powersgd:rank=2")]
