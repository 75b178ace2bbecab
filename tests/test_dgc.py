"""Deep Gradient Compression's tricks as top-k options: momentum correction with factor masking,
local clipping, ratio warm-up. The memory in one process against closed forms, then real two-worker
runs against their uncompressed equivalents, exact resume, and the refusals (one line, exit 2)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from agentsync.comm import Comm, CommConfig
from agentsync.compress import Compression, MomentumFeedback, local_clip_norm, parse_codec
from agentsync.errors import ConfigError
from conftest import agentsync, assert_train_refused, train
from test_compression import topk_nbytes

N = 3000
SGD = ["--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.05"]
NO_MOMENTUM = [*SGD, "--set", "optimizer.momentum=0"]


def warmup_kept(step: int, n: int, ratio: float, warmup: int, start: float = 0.25) -> int:
    """Coordinates kept at ``step`` (from 0): ⌈start · (ratio / start)^(step / warmup) · n⌉, then ⌈ratio · n⌉."""
    r = start * (ratio / start) ** (step / warmup) if step < warmup else ratio
    return max(1, min(n, math.ceil(r * n)))


# -- one process: the memory ------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("masking", ["on", "off"])
def test_sent_coordinates_are_zeroed_and_nothing_is_lost(masking):
    """After each step v is zero where top-k sent, u too under masking; and Σ sent + v = Σ_t u_t,
    with u_t = m · u_(t−1) + g_t the velocity before masking."""
    m = 0.9
    codec = parse_codec(f"topk:ratio=0.05:momentum={m}:masking={masking}")
    feedback, gen = MomentumFeedback(codec), torch.Generator().manual_seed(1)
    sent, velocities = torch.zeros(N), torch.zeros(N)
    for _ in range(20):
        g = torch.randn(N, generator=gen)
        before = torch.zeros(N) if feedback.velocity is None else feedback.velocity
        velocities += m * before + g
        encoded = feedback.compress(g)
        index = codec.indices(encoded)
        sent += codec.decode(encoded)
        assert torch.all(feedback.residual[index] == 0)
        assert torch.all(feedback.velocity[index] == 0) == (masking == "on")
    assert torch.allclose(sent + feedback.residual, velocities, atol=1e-3, rtol=0)
    before = {k: v.clone() for k, v in feedback.state_dict().items() if torch.is_tensor(v)}
    feedback.compress(torch.full((N,), float("nan")))
    assert all(torch.equal(getattr(feedback, k), v) for k, v in before.items())  # a skipped step is not kept


@pytest.mark.timeout(60)
def test_warmup_keeps_the_closed_form_number_of_coordinates_and_counts_their_bytes():
    codec = parse_codec("topk:ratio=0.01:warmup=10")
    compression, gen = Compression(codec), torch.Generator().manual_seed(2)
    for step in range(15):
        encoded = compression.compress("b", torch.randn(N, generator=gen))
        k = warmup_kept(step, N, 0.01, 10)
        assert encoded.tensors["values"].numel() == codec.indices(encoded).numel() == k
        assert codec.nbytes(encoded) == encoded.to_bytes().numel() == topk_nbytes(N, k)
    assert warmup_kept(0, N, 0.01, 10) == 750 and warmup_kept(10, N, 0.01, 10) == 30


def test_local_clipping_threshold_is_dgcs():
    """clip=2, W = 4, allreduce's payload g_i / 4: the threshold is 2 · 4^(−1/2) / 4 = 0.25 on the payload;
    a parameter server's push is g_i itself: 1; a codec without clip: 0 (off)."""
    codec = parse_codec("topk:ratio=1.0:clip=2.0")
    assert local_clip_norm(codec, workers=4, payload_scale=1 / 4) == pytest.approx(0.25)
    assert local_clip_norm(codec, workers=4) == pytest.approx(1.0)
    assert local_clip_norm(parse_codec("topk:ratio=0.1"), workers=4) == 0.0


@pytest.mark.timeout(60)
def test_dgc_state_round_trip_continues_identically():
    """Velocity, accumulation and the warm-up clock come back from a state dict."""
    spec = "topk:ratio=0.02:momentum=0.9:clip=5:warmup=6"
    gen = torch.Generator().manual_seed(4)
    inputs = [torch.randn(N, generator=gen) for _ in range(8)]
    a = Compression(parse_codec(spec))
    for x in inputs[:3]:
        a.compress("bucket0", x)
    b = Compression(parse_codec(spec))
    b.load_state_dict(a.state_dict())
    for x in inputs[3:]:
        assert torch.equal(a.compress("bucket0", x).to_bytes(), b.compress("bucket0", x).to_bytes())


def test_setup_refuses_an_optimizer_with_momentum_outside_the_cli():
    """A bring-your-own loop hands its own optimizer to setup: momentum there is refused too."""
    from agentsync.sync import STRATEGIES
    cls = STRATEGIES["allreduce"]
    sync = cls(cls.Config(name="allreduce"), Comm(0, 1, CommConfig(compression="topk:momentum=0.9")))
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="--set optimizer.momentum=0"):
        sync.setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(ConfigError, match="needs plain SGD, not adam"):
        sync.setup(model, torch.optim.Adam(model.parameters()))


# -- refusals ---------------------------------------------------------------------------------
BAD = {
    "optimizer momentum": (["--compress", "topk:momentum=0.9"],  # digits' default optimizer: SGD, momentum 0.9
                           "momentum correction applies the momentum on the workers, so the optimizer must not "
                           "apply it again (optimizer.momentum=0.9); --set optimizer.momentum=0"),
    "adam": (["--compress", "topk:momentum=0.9", "--set", "optimizer.name=adam"],
             "momentum correction needs plain SGD, not adam"),
    **{f"{option} on {strategy}": (["--strategy", strategy, "--compress", f"topk:{option}", *NO_MOMENTUM],
                                   f"{option.split('=')[0]}= is not supported by strategy {strategy} (it sends "
                                   f"parameters or their changes, not gradients; DGC's options act on gradients); "
                                   "strategies that support it: allreduce" + (", ps-sync, ps-async, ssp"
                                                                               if "warmup" not in option else ""))
       for strategy in ("local-sgd", "diloco", "gossip", "easgd")
       for option in ("momentum=0.9", "clip=1", "warmup=10")},
    "warmup on ps-sync": (["--strategy", "ps-sync", "--compress", "topk:warmup=10"],
                          "warmup= is not supported by strategy ps-sync (a push's wire size is fixed by the "
                          "channel's template"),
    "momentum 1": (["--compress", "topk:momentum=1"], "momentum must be in (0, 1) (got '1')"),
    "momentum 0": (["--compress", "topk:momentum=0"], "momentum must be in (0, 1) (got '0')"),
    "clip 0": (["--compress", "topk:clip=0"], "clip must be > 0 (got '0')"),
    "warmup 0": (["--compress", "topk:warmup=0"], "warmup must be an int >= 1 (got '0')"),
    "warmup_from alone": (["--compress", "topk:warmup_from=0.5"], "warmup_from needs warmup=STEPS"),
    "warmup_from below ratio": (["--compress", "topk:ratio=0.5:warmup=5:warmup_from=0.1"],
                                "warmup decays the kept ratio from warmup_from=0.1 down to ratio=0.5: "
                                "warmup_from must be above ratio"),
    "warmup above the default start": (["--compress", "topk:ratio=0.5:warmup=5"], "warmup_from=0.25 down to"),
    "warmup_from out of range": (["--compress", "topk:warmup=5:warmup_from=2"], "warmup_from must be in (0, 1]"),
    "masking without momentum": (["--compress", "topk:masking=off"], "masking acts on the velocity"),
    "masking value": (["--compress", "topk:momentum=0.9:masking=no", *NO_MOMENTUM], "masking must be on or off"),
    "on another codec": (["--compress", "qsgd:momentum=0.9"],
                         "bad option 'momentum=0.9' for qsgd (options: bits, chunk, seed, decay)"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", BAD)
def test_bad_dgc_option_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    argv, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    assert_train_refused(argv, expected, tmp_path, capsys)


# -- two workers --------------------------------------------------------------------------------
def final_model(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (key, (a[key] - b[key]).abs().max())


ALLREDUCE = ["--workers", "2", "--steps", "30"]


@pytest.mark.timeout(300)
def test_momentum_correction_at_ratio_1_is_sgd_with_momentum(tmp_path):
    """Nothing dropped, no masking: each worker sends u_i ← m·u_i + g_i / W and SGD(momentum 0) steps by
    Σ_i u_i = m·Σ_i u_i + mean g, SGD(momentum m)'s buffer. With masking, sending everything zeroes u
    every step: SGD without momentum."""
    train(tmp_path / "momentum", *ALLREDUCE, *SGD, "--set", "optimizer.momentum=0.9")
    train(tmp_path / "dgc", *ALLREDUCE, *NO_MOMENTUM, "--compress", "topk:ratio=1.0:momentum=0.9:masking=off")
    assert_close(final_model(tmp_path / "dgc"), final_model(tmp_path / "momentum"))
    train(tmp_path / "plain", *ALLREDUCE, *NO_MOMENTUM)
    train(tmp_path / "masked", *ALLREDUCE, *NO_MOMENTUM, "--compress", "topk:ratio=1.0:momentum=0.9")
    assert_close(final_model(tmp_path / "masked"), final_model(tmp_path / "plain"))


@pytest.mark.timeout(300)
def test_ps_sync_momentum_correction_at_ratio_1_is_sgd_with_momentum(tmp_path):
    """The same identity through the parameter servers' pushes: the server's mean of u_i is the buffer."""
    args = ["--strategy", "ps-sync", "--workers", "2", "--steps", "20", "--set", "eval_every=0"]
    train(tmp_path / "momentum", *args, *SGD, "--set", "optimizer.momentum=0.9")
    train(tmp_path / "dgc", *args, *NO_MOMENTUM, "--compress", "topk:ratio=1.0:momentum=0.9:masking=off")
    assert_close(final_model(tmp_path / "dgc"), final_model(tmp_path / "momentum"))


@pytest.mark.timeout(300)
def test_local_clipping_acts_on_the_whole_gradient(tmp_path):
    """Ratio 1 sends everything, so the run is SGD on the mean of the workers' clipped gradients. DGC
    clips each worker's whole gradient to clip · W^(−1/2): the result cannot depend on how the
    gradient is cut into payloads (four allreduce buckets or one; one server shard or two), and the
    clip acts (it differs from the run without it)."""
    codec = ["--compress", "topk:ratio=1.0:clip=0.5"]
    small = ["--set", "strategy.bucket_mb=0.02", "--set", "strategy.first_bucket_mb=0.02"]  # 20 KB buckets
    train(tmp_path / "one", *ALLREDUCE, *NO_MOMENTUM, *codec)
    train(tmp_path / "four", *ALLREDUCE, *NO_MOMENTUM, *codec, *small)
    train(tmp_path / "unclipped", *ALLREDUCE, *NO_MOMENTUM, "--compress", "topk:ratio=1.0", *small)
    one = final_model(tmp_path / "one")
    assert_close(final_model(tmp_path / "four"), one)
    assert any((final_model(tmp_path / "unclipped")[k] - one[k]).abs().max() > 1e-3 for k in one)
    ps = ["--strategy", "ps-sync", "--workers", "2", "--steps", "10", "--set", "eval_every=0", *NO_MOMENTUM, *codec]
    train(tmp_path / "server", *ps)
    train(tmp_path / "servers", *ps, "--servers", "2")
    assert_close(final_model(tmp_path / "servers"), final_model(tmp_path / "server"))


@pytest.mark.timeout(300)
def test_warmup_run_counts_the_bytes_of_each_steps_payload(tmp_path):
    """allreduce, W = 2, one bucket of n values: step t all-gathers the payload of k_t coordinates
    (count, packed indices, fp32 values), k_t the warm-up's."""
    steps, warmup = 20, 10
    summary = train(tmp_path / "run", "--workers", "2", "--steps", str(steps), *NO_MOMENTUM,
                    "--compress", f"topk:ratio=0.01:warmup={warmup}")
    n = sum(t.numel() for t in final_model(tmp_path / "run").values())  # the digits MLP: one bucket
    expected = sum(topk_nbytes(n, warmup_kept(t, n, 0.01, warmup)) for t in range(steps))
    for stats in summary["comm_per_rank"]:
        assert stats["bytes_sent"] == stats["bytes_received"] == expected


@pytest.mark.timeout(300)
def test_dgc_run_resumes_exactly(tmp_path):
    """Velocity, accumulation and the warm-up clock are in the checkpoint: 10 + 10 steps = 20 steps,
    the split inside the warm-up."""
    args = ["--workers", "2", *NO_MOMENTUM, "--compress", "topk:ratio=0.05:momentum=0.9:clip=1:warmup=15"]
    whole = train(tmp_path / "whole", *args, "--steps", "20")
    train(tmp_path / "split", *args, "--steps", "10")
    result = agentsync("train", "--resume", str(tmp_path / "split"), "--steps", "20")
    assert result.returncode == 0, result.stderr
    a, b = final_model(tmp_path / "split"), final_model(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert resumed["comm"]["bytes_sent"] == whole["comm"]["bytes_sent"]
