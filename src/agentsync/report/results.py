"""A compare study's results, read back from its run folders: one row per cell, and each cell's curve."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from agentsync.metrics import read_metrics, read_summary
from agentsync.report.matrix import Cell, Study, failure_reason, is_finished

KEYS = ("cell", "strategy", "strategy_name", "compression", "workers", "seed", "status", "error")


@dataclasses.dataclass
class Result:
    cell: Cell
    status: str
    """"ok" or "failed"."""
    error: str = ""
    summary: dict = dataclasses.field(default_factory=dict)
    curve: list[dict] = dataclasses.field(default_factory=list)
    """Worker 0's evaluations in order: step, time_s, bytes_sent, the metric, consensus_distance, ..."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self) -> dict:
        """The cell's own columns win over the summary's: ``strategy`` is the full label
        (``local-sgd period=4``) on every row, ok or failed; the bare name is ``strategy_name``."""
        return {**flatten(self.summary), "cell": self.cell.name, "strategy": self.cell.strategy.label,
                "strategy_name": self.cell.strategy.name, "compression": self.cell.strategy.compression,
                "workers": self.cell.workers, "stages": self.cell.strategy.stages, "seed": self.cell.seed,
                "status": self.status, "error": self.error}


def flatten(value: dict, prefix: str = "") -> dict:
    """``{"comm": {"bytes_sent": 1}}`` → ``{"comm.bytes_sent": 1}``; lists become JSON text."""
    out = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(flatten(item, f"{name}."))
        else:
            out[name] = json.dumps(item) if isinstance(item, list) else item
    return out


def collect(study: Study, out: Path) -> list[Result]:
    results = []
    for cell in study.cells():
        run_dir = out / "runs" / cell.name
        if is_finished(run_dir):
            summary = read_summary(run_dir)
            curve = [e for e in read_metrics(run_dir) if e.get("event") == "eval" and e.get("rank") == 0]
            results.append(Result(cell, "ok", summary=summary, curve=fill_final(curve, summary)))
        else:
            results.append(Result(cell, "failed", error=failure_reason(out, cell)))
    return results


def fill_final(curve: list[dict], summary: dict) -> list[dict]:
    """Worker 0's evaluations, then the final point. The final point is the result's metric at the run's wall time and bytes (the final event
    logs metrics only; for a parameter-server run rank 0 is a worker and the reporter a server)."""
    final = {**summary["metrics"], "step": summary["steps"], "time_s": summary["wall_time_s"],
             "bytes_sent": next((r["bytes_sent"] for r in summary.get("comm_per_rank", []) if r["rank"] == 0), None)}
    return curve + [final]


def write_csv(results: list[Result], path: Path) -> None:
    rows = [r.row() for r in results]
    columns = list(KEYS) + sorted({k for row in rows for k in row} - set(KEYS))
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
