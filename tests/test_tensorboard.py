"""TensorBoard event files beside metrics.jsonl: one TensorBoard run per rank, the same numbers."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agentsync.metrics import MetricsLog, numeric_fields, scalar_tag
from conftest import ROOT, train


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of one TensorBoard run, read back as TensorBoard reads it."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tags_group_fields_by_event_and_kind():
    assert scalar_tag("train", "loss") == "train/loss"
    assert scalar_tag("eval", "accuracy") == "eval/accuracy"
    assert scalar_tag("train", "bytes_sent") == "comm/bytes_sent"
    assert scalar_tag("eval", "bytes_sent") == "eval/bytes_sent"  # one comm/ point per step, from train events
    assert scalar_tag("eval", "consensus_distance") == "sync/consensus_distance"
    assert numeric_fields({"a": 1, "b": True, "c": "x", "d": None, "e": {"f": 2.5}}) == {"a": 1.0, "e/f": 2.5}


def test_events_survive_a_process_that_leaves_with_os_exit(tmp_path):
    """Ranks leave with os._exit and the runtime need not call close(): every event is on disk anyway."""
    script = (f"import os, time; from agentsync.metrics import MetricsLog\n"
              f"log = MetricsLog({str(tmp_path)!r}, 3, time.time())\n"
              f"for step in range(1, 4): log.log('train', step, loss=1.0 / step, bytes_sent=100 * step)\n"
              f"log.log('final', 3, accuracy=0.75)\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=ROOT)
    got = scalars(tmp_path / "tb" / "rank-3")
    assert got["train/loss"] == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert got["comm/bytes_sent"] == {1: 100.0, 2: 200.0, 3: 300.0}
    assert got["final/accuracy"] == {3: 0.75}


def test_tensorboard_can_be_turned_off(tmp_path):
    log = MetricsLog(tmp_path, 0, time.time(), tensorboard=False)
    log.log("train", 1, loss=1.0)
    log.close()
    assert not (tmp_path / "tb").exists() and (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.timeout(300)
def test_a_run_writes_each_ranks_scalars_equal_to_metrics_jsonl(tmp_path):
    train(tmp_path, "--task", "digits", "--strategy", "gossip", "--workers", "2", "--steps", "40",
          "--set", "eval_every=20", "--set", "log_every=10")
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["rank-0", "rank-1"]
    for rank in (0, 1):
        got = scalars(tmp_path / "tb" / f"rank-{rank}")
        trains = [e for e in events if e["rank"] == rank and e["event"] == "train"]
        assert [e["step"] for e in trains] == [10, 20, 30, 40]
        for event in trains:
            assert got["train/loss"][event["step"]] == pytest.approx(event["loss"], rel=1e-6)
            assert got["comm/bytes_sent"][event["step"]] == pytest.approx(event["bytes_sent"], rel=1e-6)
            assert got["comm/comm_time_s"][event["step"]] == pytest.approx(event["comm_time_s"], rel=1e-6)
    got = scalars(tmp_path / "tb" / "rank-0")
    evals = [e for e in events if e["rank"] == 0 and e["event"] in ("eval", "final")]
    assert {e["step"] for e in evals} == {0, 20, 40}
    for event in evals:
        assert got[f"{event['event']}/accuracy"][event["step"]] == pytest.approx(event["accuracy"], rel=1e-6)
        if event["event"] == "eval":  # gossip replicas differ: the consensus distance is measured at each evaluation
            assert got["sync/consensus_distance"][event["step"]] == pytest.approx(event["consensus_distance"], rel=1e-6)


def test_a_rank_that_logs_nothing_adds_no_tensorboard_run(tmp_path):
    MetricsLog(tmp_path, 2, time.time()).close()  # a parameter server's log: opened, never written
    assert not (tmp_path / "tb" / "rank-2").exists()


def test_tensorboard_is_loaded_before_the_training_loop_starts(tmp_path):
    """Importing TensorBoard takes ~0.1 s; at the first event it would land inside the loop's clock
    (step_time_s of a 30-step run read 3 ms high). The log loads it when it is opened."""
    script = (f"import sys, time; from agentsync.metrics import MetricsLog\n"
              f"assert 'torch.utils.tensorboard' not in sys.modules\n"
              f"log = MetricsLog({str(tmp_path)!r}, 0, time.time())\n"
              f"assert 'torch.utils.tensorboard' in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=ROOT)
