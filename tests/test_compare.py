"""compare, the network simulator and advise, with real runs (gloo processes on 127.0.0.1).

Timing assertions here are the issue's *model* checks, not speed claims: under a simulated
network of tens of milliseconds per message the simulated delay dominates a digits step (a few
hundred microseconds of compute), so they hold with wide margins on a loaded machine too.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agentsync.comm import NetSim
from agentsync.config import load_config
from agentsync.report.advise import model_bytes, predict
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
    html = (study / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES) and "<script" not in html
    assert "local-sgd period=8" in (study / "report.md").read_text()


@pytest.mark.timeout(400)
def test_simulated_latency_slows_allreduce_by_the_model_and_local_sgd_wins(study):
    rows = read_rows(study)
    step = {name: float(row["step_time_s"]) for name, row in rows.items()}
    net = NetSim.parse(LATENCY)
    # W = 1 sends nothing; W = 2 waits 2(W-1) = 2 latencies a step. Up to one backward pass of
    # the delay may hide behind compute (the bucket is launched from the gradient hook).
    simulated = net.all_reduce(0, 2)
    assert step["allreduce-w2-s0"] - step["allreduce-w1-s0"] >= 0.95 * simulated
    measured_wins = float(rows["local-sgd-period-8-w2-s0"]["wall_time_s"]) < float(rows["allreduce-w2-s0"]["wall_time_s"])
    assert measured_wins and step["local-sgd-period-8-w2-s0"] < step["allreduce-w2-s0"]
    configs = {s: load_config(study / "configs" / f"{s}-w2-s0.toml") for s in ("allreduce", "local-sgd-period-8")}
    predicted = {s: predict(cfg, net, compute_s=0.0, nbytes=model_bytes(cfg)).step_time_s for s, cfg in configs.items()}
    assert predicted["local-sgd-period-8"] < predicted["allreduce"]


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None)


@pytest.mark.timeout(400)
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (browsers cannot be downloaded here)")
def test_report_opens_in_headless_chromium_without_errors(study, tmp_path):
    result = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", f"--user-data-dir={tmp_path}", "--dump-dom", (study / "report.html").as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<img") == len(FIGURES)
    errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line and ("error" in line.lower())]
    assert not errors, errors


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


@pytest.mark.timeout(600)
def test_advise_predicts_measured_step_times_within_30_percent(tmp_path):
    """advise's α–β model against runs on the simulated network it models (50 ms a message)."""
    strategies, latency = "allreduce,ps-sync,gossip", "50ms"
    compare(tmp_path, "--task", "digits", "--strategies", strategies, "--workers", "2,4", "--steps", "20",
            "--net", f"latency={latency}", "--set", "eval_every=0", timeout=580)
    measured = {(row["strategy"], int(row["workers"])): float(row["step_time_s"]) for row in read_rows(tmp_path).values()}
    for workers in (2, 4):
        result = agentsync("advise", "--task", "digits", "--workers", str(workers), "--latency", latency,
                           "--strategies", strategies, "--json")
        assert result.returncode == 0, result.stderr
        for p in json.loads(result.stdout):
            actual = measured[p["strategy"], workers]
            assert abs(p["step_time_s"] - actual) / actual <= 0.30, (p["strategy"], workers, p["step_time_s"], actual)


def test_bad_compare_and_advise_input_is_one_line_and_exit_2(tmp_path):
    for args in (["compare", "--strategies", "allreduce,nope", "--out", str(tmp_path / "a")],
                 ["compare", "--workers", "0,2", "--out", str(tmp_path / "b")],
                 ["compare", "--strategies", "local-sgd:period", "--out", str(tmp_path / "c")],
                 ["compare", "--net", "latency=fast", "--out", str(tmp_path / "d")],
                 ["advise", "--latency", "2 parsecs"]):
        result = agentsync(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith("agentsync: error:")
    assert not any((tmp_path / name).exists() for name in "abcd")


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
