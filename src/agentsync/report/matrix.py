"""The compare matrix: which runs (cells) to make, and making them, resumably.

A cell is one ``agentsync train`` in its own process and folder, ``<out>/runs/<cell>``, from the
resolved ``<out>/configs/<cell>.toml``; its output goes to ``<out>/logs/<cell>.log``. A cell whose folder holds a ``summary.json`` is
finished and never rerun; any other folder is a failed or interrupted attempt and is started
afresh. Cells run one at a time, so they never compete for cores and their timings compare.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from agentsync.compress import is_none
from agentsync.config import RunConfig, load_config
from agentsync.errors import ConfigError
from agentsync.metrics import SUMMARY
from agentsync.sync import strategy_class

CELL_TIMEOUT_S = 1800.0


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """``local-sgd:period=8``: a strategy with its own options (``--set strategy.period=8``)."""

    name: str
    options: tuple[tuple[str, str], ...] = ()
    compression: str = "none"
    """The codec its runs send through (``comm.compression``); compare's ``--compress`` sets it."""
    stages: int = 1
    """Pipeline stages P of its runs (``parallel.stages``); compare's ``--stages`` sets it."""

    @classmethod
    def parse(cls, spec: str) -> "StrategySpec":
        name, *items = spec.strip().split(":")
        options = []
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--strategies: {spec!r} must be NAME[:OPTION=VALUE...], e.g. local-sgd:period=8")
            options.append((key.strip(), value.strip()))
        return cls(name, tuple(options))

    @property
    def label(self) -> str:
        codec = "" if is_none(self.compression) else f" +{self.compression}"
        stages = f" P={self.stages}" if self.stages > 1 else ""
        return self.name + "".join(f" {k}={v}" for k, v in self.options) + codec + stages

    @property
    def overrides(self) -> list[str]:
        return [f"strategy.{k}={v}" for k, v in self.options]


@dataclasses.dataclass(frozen=True)
class Cell:
    strategy: StrategySpec
    workers: int
    seed: int

    @property
    def name(self) -> str:
        """Folder-safe and unique: ``local-sgd_period-8-w2-s0``."""
        label = re.sub(r"[^A-Za-z0-9.]+", "-", self.strategy.label.replace(" ", "_")).strip("-")
        return f"{label}-w{self.workers}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class Study:
    """What ``compare`` was asked: the matrix, and the options every cell shares."""

    task: str
    strategies: tuple[StrategySpec, ...]
    workers: tuple[int, ...]
    seeds: int = 1
    steps: int | None = None
    net: str = ""
    straggler: str = ""
    overrides: tuple[str, ...] = ()
    compressions: tuple[str, ...] = ("none",)
    """Codecs, a dimension of the matrix: each strategy that sends through a codec runs with each."""
    stages: tuple[int, ...] = (1,)
    """Pipeline stages, a dimension of the matrix: every strategy runs with each P (its label says P)."""

    def variants(self) -> list[StrategySpec]:
        """Each strategy with each codec it supports (``none`` always), at each number of stages."""
        return [dataclasses.replace(s, compression=c, stages=p) for s in self.strategies for c in self.compressions
                if is_none(c) or strategy_class(s.name).supports_compression for p in self.stages]

    def left_out(self) -> list[str]:
        """``gossip +fp16``: the strategy–codec pairs not run, because the strategy sends uncompressed."""
        return [dataclasses.replace(s, compression=c).label for s in self.strategies for c in self.compressions
                if not is_none(c) and not strategy_class(s.name).supports_compression]

    def cells(self) -> list[Cell]:
        return [Cell(s, w, seed) for s in self.variants() for w in self.workers for seed in range(self.seeds)]

    def config(self, cell: Cell) -> RunConfig:
        """The cell's resolved config; raises ConfigError on bad input (checked before anything runs).

        A straggler or fault is about one rank: it applies to the cells that have that worker and
        is left out of smaller ones (a study over W = 1, 2 with a slow rank 1 runs W = 1 without it).
        """
        flags = {"task.name": self.task, "strategy.name": cell.strategy.name, "workers": cell.workers,
                 "seed": cell.seed, "steps": self.steps, "comm.net": self.net or None,
                 "comm.straggler": ranks_below(self.straggler, cell.workers) or None,
                 "comm.compression": cell.strategy.compression, "parallel.stages": cell.strategy.stages}
        overrides = [ranks_below_override(item, cell.workers) for item in self.overrides]
        return load_config(None, flags=flags, overrides=[*overrides, *cell.strategy.overrides])


def ranks_below(spec: str, workers: int) -> str:
    """``"1:0.05,3:0.1"`` with 2 workers -> ``"1:0.05"``: the entries about ranks this cell has."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    return ",".join(item for item in items if not item.split(":")[0].isdigit() or int(item.split(":")[0]) < workers)


def ranks_below_override(item: str, workers: int) -> str:
    key, sep, value = item.partition("=")
    return f"{key}={ranks_below(value, workers)}" if sep and key.strip() in ("comm.fault", "comm.straggler") else item


def is_finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY).is_file()


def train_command(study: Study, cell: Cell, run_dir: Path) -> list[str]:
    cfg = study.config(cell)
    config_file = run_dir.parent.parent / "configs" / f"{cell.name}.toml"
    config_file.parent.mkdir(exist_ok=True)
    config_file.write_text(cfg.to_toml())
    return [sys.executable, "-m", "agentsync", "train", "--config", str(config_file), "--out", str(run_dir)]


def run_cell(study: Study, cell: Cell, out: Path, timeout_s: float = CELL_TIMEOUT_S) -> int:
    """One ``agentsync train`` in a child process; its exit code (124 on timeout)."""
    run_dir, log = out / "runs" / cell.name, out / "logs" / f"{cell.name}.log"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished attempt: nothing in it is trusted
    log.parent.mkdir(parents=True, exist_ok=True)
    command = train_command(study, cell, run_dir)
    with log.open("w") as stream:
        try:
            return subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            stream.write(f"\nagentsync compare: cell timed out after {timeout_s:.0f} s\n")
            return 124


def failure_reason(out: Path, cell: Cell) -> str:
    """The last error line of a failed cell's log (what ``agentsync train`` printed)."""
    log = out / "logs" / f"{cell.name}.log"
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    errors = [line for line in lines if line.startswith("agentsync")]
    return (errors or lines or ["did not run"])[-1][:300]


def run_matrix(study: Study, out: Path, *, on_cell: Callable[[Cell, str], None] | None = None,
               timeout_s: float = CELL_TIMEOUT_S) -> dict[str, str]:
    """Run every unfinished cell; returns ``{cell name: "ok" | "failed" | "skipped (finished)"}``.

    ``on_cell(cell, phase)`` is told ``"start"`` and then the outcome, for a progress display."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    outcome = {}
    for cell in study.cells():
        run_dir = out / "runs" / cell.name
        if is_finished(run_dir):
            outcome[cell.name] = "skipped (finished)"
        else:
            if on_cell:
                on_cell(cell, "start")
            code = run_cell(study, cell, out, timeout_s)
            outcome[cell.name] = "ok" if code == 0 and is_finished(run_dir) else "failed"
        if on_cell:
            on_cell(cell, outcome[cell.name])
    return outcome
