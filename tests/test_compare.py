"""compare, the network simulator and advise: real runs (gloo processes on 127.0.0.1) for the
plumbing, unit tests on the pure parts (results rows, the default target, the cost model).

No test here compares measured times: whether the simulated latency slows allreduce by what the
model says, which strategy finishes first, and how close advise's predictions come are benchmark
claims (``bench/slow_network.py``, ``bench/advise_accuracy.py``).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agentsync.comm import NetSim
from agentsync.config import load_config
from agentsync.report.advise import model_bytes, predict
from agentsync.report.matrix import Cell, StrategySpec
from agentsync.report.results import Result
from conftest import agentsync

LATENCY = "latency=20ms"
STUDY = ["--task", "digits", "--strategies", "allreduce,local-sgd:period=8", "--workers", "1,2",
         "--steps", "48", "--net", LATENCY, "--set", "eval_every=16"]
FIGURES = ("metric_vs_time.png", "metric_vs_bytes.png", "scaling.png", "staleness_consensus.png")


def compare(out: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    result = agentsync("compare", "--out", str(out), *args, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def read_rows(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open() as stream:
        return {row["cell"]: row for row in csv.DictReader(stream)}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    compare(out, *STUDY)
    return out


@pytest.mark.timeout(400)
def test_compare_writes_every_file_with_one_csv_row_per_run(study):
    for name in ("results.csv", "report.md", "report.html", *(f"plots/{f}" for f in FIGURES)):
        assert (study / name).is_file() and (study / name).stat().st_size > 0, name
    rows = read_rows(study)
    assert sorted(rows) == ["allreduce-w1-s0", "allreduce-w2-s0", "local-sgd-period-8-w1-s0", "local-sgd-period-8-w2-s0"]
    for name, row in rows.items():
        summary = json.loads((study / "runs" / name / "summary.json").read_text())
        assert row["status"] == "ok" and int(row["workers"]) == summary["workers"]
        for field in ("wall_time_s", "step_time_s"):
            assert float(row[field]) == pytest.approx(summary[field], rel=1e-12)
        assert float(row["metrics.accuracy"]) == pytest.approx(summary["metrics"]["accuracy"], rel=1e-6)
        assert int(row["comm.bytes_sent"]) == summary["comm"]["bytes_sent"]
    assert rows["local-sgd-period-8-w2-s0"]["strategy"] == "local-sgd period=8"
    html, md = (study / "report.html").read_text(), (study / "report.md").read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES) and "<script" not in html
    assert "local-sgd period=8" in md
    for stem in (f.removesuffix(".png") for f in FIGURES):  # captions are sentences, not file names
        assert f"<figcaption>{stem}" not in html and f"![{stem}]" not in md
    assert html.count("<figcaption>") == len(FIGURES) and "Accuracy against wall time" in html


@pytest.mark.timeout(400)
def test_step_times_and_comm_are_recorded_and_the_model_ranks_local_sgd_first(study):
    """Plumbing, not speed: every run reports a positive training-loop step time, the W = 2 runs
    paid communication time, local SGD sent fewer bytes (a count, not a time), and the cost model
    alone puts local SGD ahead of allreduce on this network (bench/slow_network.py measures it)."""
    rows = read_rows(study)
    for name, row in rows.items():
        assert float(row["step_time_s"]) > 0 and float(row["throughput.train_samples_per_s"]) > 0, name
    assert float(rows["allreduce-w2-s0"]["comm.comm_time_s"]) > 0
    assert int(rows["local-sgd-period-8-w2-s0"]["comm.bytes_sent"]) < int(rows["allreduce-w2-s0"]["comm.bytes_sent"])
    net = NetSim.parse(LATENCY)
    configs = {s: load_config(study / "configs" / f"{s}-w2-s0.toml") for s in ("allreduce", "local-sgd-period-8")}
    predicted = {s: predict(cfg, net, compute_s=0.0, nbytes=model_bytes(cfg)).step_time_s for s, cfg in configs.items()}
    assert predicted["local-sgd-period-8"] < predicted["allreduce"]


def test_tensorboard_overlays_every_cell_of_a_study(study):
    """``tensorboard --logdir STUDY`` finds one run per cell and rank, each with the loss and the metric."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer(size_guidance={"scalars": 0}).AddRunsFromDirectory(str(study))
    multiplexer.Reload()
    runs = multiplexer.Runs()
    expected = {f"runs/{cell}/tb/rank-{rank}" for cell in read_rows(study)
                for rank in range(2 if cell.endswith("-w2-s0") else 1)}
    assert set(runs) == expected
    for cell in read_rows(study):
        tags = runs[f"runs/{cell}/tb/rank-0"]["scalars"]
        assert {"train/loss", "eval/accuracy", "final/accuracy", "comm/bytes_sent"} <= set(tags), (cell, tags)


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
# Appended to a copy of the page (report.html itself has no script): once everything has loaded,
# write each image's decoded width into the DOM, where --dump-dom shows it.
PROBE = ("<script>window.addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'probe'; "
         "p.textContent = JSON.stringify([...document.images].map(i => i.naturalWidth)); "
         "document.body.appendChild(p); });</script>")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(400)
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: `make test` installs Debian's chromium "
                                             "when run as root with apt available, and says why when it cannot")
def test_report_renders_every_figure_in_headless_chromium(study, tmp_path):
    page = (study / "report.html").read_text()
    assert "<script" not in page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    result = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
    assert found, result.stdout[-2000:]
    widths = json.loads(found.group(1))
    assert len(widths) == len(FIGURES) and all(w > 0 for w in widths), widths
    shot = tmp_path / "report.png"
    result = chromium("--window-size=1200,2400", "--hide-scrollbars", f"--screenshot={shot}",
                      (study / "report.html").as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0 and shot.is_file(), result.stderr
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24)
    assert len(colours) > 100, f"the screenshot looks blank: {len(colours)} colours"


@pytest.mark.timeout(400)
def test_a_failed_cell_is_reported_and_the_matrix_completes_and_resumes(tmp_path):
    # Rank 1 exists only at W = 2: that cell is killed at step 5, the W = 1 cell must still finish.
    args = ["--task", "digits", "--strategies", "allreduce", "--workers", "2,1", "--steps", "20",
            "--set", "eval_every=0", "--set", "comm.fault=1:kill@5"]
    compare(tmp_path, *args)
    rows = read_rows(tmp_path)
    assert rows["allreduce-w2-s0"]["status"] == "failed" and "rank 1" in rows["allreduce-w2-s0"]["error"]
    assert rows["allreduce-w1-s0"]["status"] == "ok" and float(rows["allreduce-w1-s0"]["metrics.accuracy"]) > 0
    assert "`allreduce-w2-s0`: FAILED" in (tmp_path / "report.md").read_text()
    assert "<code>allreduce-w2-s0</code>: FAILED" in (tmp_path / "report.html").read_text()
    finished = (tmp_path / "runs" / "allreduce-w1-s0" / "summary.json").stat().st_mtime_ns
    compare(tmp_path, *args)  # resume: the finished cell is kept, the failed one is tried again
    assert (tmp_path / "runs" / "allreduce-w1-s0" / "summary.json").stat().st_mtime_ns == finished
    assert read_rows(tmp_path)["allreduce-w2-s0"]["status"] == "failed"
    changed = agentsync("compare", "--out", str(tmp_path), *args[:-4], "--set", "eval_every=0")
    assert changed.returncode == 2 and "different study" in changed.stderr


def test_advise_ranks_strategies_by_the_latencies_each_pays():
    """advise from the model alone (no run): on a 50 ms link with no bandwidth limit a step of
    allreduce waits 2(W−1) latencies (at W = 2 one: digits' model is summed by one exchange),
    ps-sync 2 (push, pull) and gossip 1; compute adds the same to each, so at W = 4 the ranking
    is gossip, ps-sync, allreduce, and at W = 2 ps-sync last. bench/advise_accuracy.py measures
    how close this comes."""
    from agentsync.report.advise import advise

    net = NetSim.parse("latency=50ms")
    for workers in (2, 4):
        predictions = advise("digits", ["allreduce", "ps-sync", "gossip"], workers, net)
        order = [p.strategy for p in predictions]
        assert order == ["gossip", "ps-sync", "allreduce"] if workers == 4 else order[-1] == "ps-sync", order
        assert [p.step_time_s for p in predictions] == sorted(p.step_time_s for p in predictions)
        comm = {p.strategy: p.comm_s for p in predictions}
        assert comm["allreduce"] == pytest.approx((2 * (workers - 1) if workers > 2 else 1) * 0.05, rel=0.01)
        assert comm["ps-sync"] == pytest.approx(2 * 0.05, rel=0.01) and comm["gossip"] == pytest.approx(0.05, rel=0.01)
        assert all(p.step_time_s > p.comm_s > 0 and p.bytes_per_step > 0 for p in predictions)


def test_bad_compare_and_advise_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "seed-list.toml").write_text("[compare]\nseeds = [1, 2]\n")  # a count, not a list of seeds
    for args in (["compare", "--config", str(tmp_path / "seed-list.toml"), "--out", str(tmp_path / "f")],
                 ["compare", "--strategies", "allreduce,nope", "--out", str(tmp_path / "a")],
                 ["compare", "--workers", "0,2", "--out", str(tmp_path / "b")],
                 ["compare", "--strategies", "local-sgd:period", "--out", str(tmp_path / "c")],
                 ["compare", "--net", "latency=fast", "--out", str(tmp_path / "d")],
                 ["compare", "--seeds", "0", "--out", str(tmp_path / "e")],
                 ["advise", "--latency", "2 parsecs"]):
        result = agentsync(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith("agentsync: error:")
    assert not any((tmp_path / name).exists() for name in "abcdef")


@pytest.mark.parametrize("example", sorted(Path(__file__).parents[1].glob("examples/compare-*.toml")), ids=lambda p: p.stem)
def test_example_studies_resolve_every_cell(example, tmp_path):
    from agentsync.cli import make_parser
    from agentsync.report.compare import study_from_args

    study, out, _ = study_from_args(make_parser().parse_args(["compare", "--config", str(example), "--out", str(tmp_path)]))
    assert len(study.cells()) == len(study.strategies) * len(study.workers) * study.seeds >= 2
    assert json.loads((out / "study.json").read_text())["task"] == study.task


def test_net_spec_units_and_the_alpha_beta_formulas():
    net = NetSim.parse("latency=2ms,bandwidth=1Gbit")
    assert (net.latency_s, net.bandwidth_Bps) == (pytest.approx(2e-3), pytest.approx(1.25e8))
    assert NetSim.parse("bandwidth=100Mbps").bandwidth_Bps == pytest.approx(12.5e6)
    assert NetSim.parse("latency=50us,bandwidth=10MB").bandwidth_Bps == pytest.approx(1e7)
    assert NetSim.parse("") is None  # off: comm checks `net is None` and adds nothing
    # ring all-reduce of M bytes on W = 4: 2(W-1) rounds of (α + M/(Wβ)); tree broadcast: ⌈log2 W⌉ (α + M/β)
    assert net.all_reduce(4e6, 4) == pytest.approx(6 * (2e-3 + 1e6 / 1.25e8))
    assert net.broadcast(1e6, 4) == pytest.approx(2 * (2e-3 + 1e6 / 1.25e8))


def fake_result(spec: str, final: float | None, *, higher: bool = True, workers: int = 2) -> Result:
    """A finished (or, with ``final`` None, failed) cell, as collect() would read it back."""
    cell = Cell(StrategySpec.parse(spec), workers, 0)
    if final is None:
        return Result(cell, "failed", error="agentsync: error: rank 1 was killed by SIGKILL; the job stopped")
    summary = {"task": "t", "strategy": cell.strategy.name, "workers": workers, "seed": 0, "metric": "m",
               "higher_is_better": higher, "metrics": {"m": final}, "comm": {"bytes_sent": 10}, "ok": True}
    return Result(cell, "ok", summary=summary, curve=[{"step": 1, "time_s": 1.0, "m": final}])


def test_results_csv_keeps_each_strategys_options_on_ok_and_failed_rows(tmp_path):
    from agentsync.report.results import write_csv

    results = [fake_result("local-sgd:period=4", 0.9), fake_result("local-sgd:period=16", 0.8),
               fake_result("local-sgd:period=64", None)]
    write_csv(results, tmp_path / "results.csv")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["strategy"] for r in rows] == ["local-sgd period=4", "local-sgd period=16", "local-sgd period=64"]
    assert {r["strategy_name"] for r in rows} == {"local-sgd"}
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"] and rows[0]["metrics.m"] == "0.9"


@pytest.mark.parametrize("finals, higher, expected", [
    ((0.96, 0.90), True, 0.912),      # 95 % of an accuracy, as before
    ((-80.0, -95.0), True, -84.0),    # negative returns: 5 % of |best| below the best, not 0.95 × −80 = −76
    ((1.2, 1.5), False, 1.26),        # a loss: 5 % above the lowest
    ((-2.0, -1.0), False, -1.9),      # a negative lower-is-better metric
    ((0.0, -3.0), True, 0.0),         # best exactly 0: the best run reaches it
])
def test_default_target_is_reached_by_the_best_run_whatever_the_sign(finals, higher, expected):
    from agentsync.report.render import default_target, first_hit

    results = [fake_result(f"none:seed_offset={i}", f, higher=higher) for i, f in enumerate(finals)]
    target = default_target([*results, fake_result("gossip", None)])
    assert target == pytest.approx(expected)
    best = max(results, key=lambda r: r.summary["metrics"]["m"] * (1 if higher else -1))
    assert first_hit(best, target) is not None
    assert default_target([fake_result("gossip", None)]) is None


def test_a_figure_with_too_few_points_is_left_out_with_one_line(tmp_path):
    """One evaluation per run: no curve, no consensus line; each left out with the reason, none drawn empty."""
    from agentsync.report import plots, render
    from agentsync.report.matrix import Study

    results = [fake_result("gossip", 0.9), fake_result("allreduce", 0.95)]
    results[0].curve[0]["consensus_distance"] = 0.1  # measured once
    for r in results:
        r.summary["throughput"] = {"train_samples_per_s": 100.0}
    figures = plots.draw_all(results, "m", tmp_path / "plots")
    assert not any(f.drawn for f in figures) and not list((tmp_path / "plots").iterdir())
    reasons = [f.caption for f in figures]
    assert len(reasons) == 4 and all("left out" in r for r in reasons), reasons
    assert any("single worker count" in r for r in reasons) and any("Consensus distance" in r for r in reasons)
    study = Study(task="digits", strategies=(StrategySpec("gossip"), StrategySpec("allreduce")), workers=(2,))
    page = render.html_page(study, results, render.ranking(results, 0.9), 0.9, "m", True, figures)
    assert page.count('<p class="omitted">') == 4 and "<img" not in page


@pytest.mark.timeout(400)
def test_compression_is_a_dimension_of_the_matrix(tmp_path):
    """--compress none,fp16 runs each strategy that sends through a codec with each codec, and the
    others with none only (said once); fp16 halves allreduce's bytes exactly (a model without buffers)."""
    result = compare(tmp_path, "--task", "digits", "--strategies", "allreduce,ensemble", "--compress", "none,fp16",
                     "--workers", "2", "--steps", "12", "--set", "eval_every=0")
    assert "left out ensemble +fp16: these strategies send uncompressed" in result.stderr
    rows = read_rows(tmp_path)
    assert sorted(r["strategy"] for r in rows.values()) == ["allreduce", "allreduce +fp16", "ensemble"]
    by_label = {r["strategy"]: r for r in rows.values()}
    assert by_label["allreduce +fp16"]["compression"] == "fp16" and by_label["ensemble"]["compression"] == "none"
    assert int(by_label["allreduce +fp16"]["comm.bytes_sent"]) * 2 == int(by_label["allreduce"]["comm.bytes_sent"])


def test_a_codec_no_strategy_of_the_study_can_use_is_one_line_and_exit_2(tmp_path):
    result = agentsync("compare", "--out", str(tmp_path / "c"), "--strategies", "ensemble", "--compress", "fp16")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "none of the strategies sends through a codec" in result.stderr
    bad = agentsync("compare", "--out", str(tmp_path / "d"), "--compress", "zip")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("agentsync: error: --compress")
