"""Shared by the bench scripts: run ``agentsync train`` as a user would and read what it wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str) -> tuple[dict, list[dict]]:
    """Train into a temporary folder; returns (summary, metrics events)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = subprocess.run([sys.executable, "-m", "agentsync", "train", "--out", str(out), *args],
                                capture_output=True, text=True, env=ENV)
        if result.returncode != 0:
            raise SystemExit(f"agentsync train {' '.join(args)} failed:\n{result.stderr}")
        summary = json.loads((out / "summary.json").read_text())
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, events


def first_reaching(events: list[dict], metric: str, target: float, *, lower_is_better: bool = False) -> dict | None:
    """The first evaluation at or above ``target`` (at or below it for a loss); rank 0's eval events
    carry time and bytes."""
    sign = -1 if lower_is_better else 1
    for e in sorted((e for e in events if e["event"] == "eval"), key=lambda e: e["step"]):
        if e.get(metric) is not None and sign * e[metric] >= sign * target:
            return e
    return None


def loop_seconds(events: list[dict]) -> float:
    """Seconds from the first to the last training line of any rank: the training loop, no start-up."""
    times = [e["time_s"] for e in events if e["event"] == "train"]
    return max(times) - min(times)
