"""``agentsync compare``: run the matrix, then write results.csv, figures, report.md and report.html."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from agentsync.compress import parse_codec
from agentsync.config import read_toml
from agentsync.errors import ConfigError
from agentsync.report import plots, render
from agentsync.report.matrix import CELL_TIMEOUT_S, Cell, StrategySpec, Study, run_matrix
from agentsync.report.results import collect, write_csv


def compare(study: Study, out: Path, *, target: float | None = None, timeout_s: float = CELL_TIMEOUT_S,
            console: Console | None = None) -> dict:
    """Run what is not finished yet, then (re)write the whole report; returns counts of ok/failed cells."""
    console = console or Console(stderr=True)
    columns = (TextColumn("[bold]compare"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    if study.left_out():
        console.print(f"compare: left out {', '.join(study.left_out())}: these strategies send uncompressed",
                      highlight=False)
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("", total=len(study.cells()))

        def on_cell(cell: Cell, phase: str) -> None:
            if phase == "start":
                progress.update(bar, description=f"{cell.strategy.label} · W={cell.workers} · seed {cell.seed}")
            else:
                progress.advance(bar)
                if phase == "failed":
                    progress.console.print(f"[red]failed[/red] {cell.name} (see logs/{cell.name}.log)", markup=True,
                                           highlight=False)

        outcome = run_matrix(study, out, on_cell=on_cell, timeout_s=timeout_s)
    write_report(study, out, target=target)
    failed = sum(v == "failed" for v in outcome.values())
    return {"cells": len(outcome), "failed": failed, "ok": len(outcome) - failed}


def write_report(study: Study, out: Path, *, target: float | None = None) -> list[Path]:
    results = collect(study, out)
    write_csv(results, out / "results.csv")
    ok = [r for r in results if r.ok]
    metric = ok[0].summary["metric"] if ok else "metric"
    higher = ok[0].summary["higher_is_better"] if ok else True
    target = target if target is not None else render.default_target(results)
    ranks = render.ranking(results, target)
    figures = plots.draw_all(results, metric, out / "plots")
    (out / "report.md").write_text(render.markdown(study, results, ranks, target, metric, higher, figures, out))
    (out / "report.html").write_text(render.html_page(study, results, ranks, target, metric, higher, figures))
    return [out / "results.csv", out / "report.md", out / "report.html", *(f.path for f in figures if f.drawn)]


FIELDS = ("task", "strategies", "compress", "workers", "stages", "seeds", "steps", "net", "straggler", "set", "target", "out")


def study_from_args(args) -> tuple[Study, Path, float | None]:
    """The study the command line (over the ``--config`` file's ``[compare]`` table) asks for, its
    folder and target; checked cell by cell before anything runs, and a folder never mixes two studies."""
    spec = read_compare_table(args.config) if args.config else {}
    given = {"task": args.task, "strategies": args.strategies, "compress": args.compress, "workers": args.workers,
             "stages": args.stages,
             "seeds": args.seeds,
             "steps": args.steps, "net": args.net, "straggler": args.straggler, "target": args.target,
             "out": args.out}
    spec.update({k: v for k, v in given.items() if v is not None})
    spec["set"] = [*as_list(spec.get("set", [])), *args.overrides]
    study = Study(task=spec.get("task", "digits"),
                  strategies=tuple(StrategySpec.parse(s) for s in as_list(spec.get("strategies", "allreduce,local-sgd"))),
                  workers=tuple(positive_ints(spec.get("workers", "1,2"), "workers")),
                  seeds=seed_count(spec.get("seeds", 1)),
                  steps=spec.get("steps"), net=spec.get("net", ""), straggler=spec.get("straggler", ""),
                  overrides=tuple(spec["set"]), compressions=tuple(as_list(spec.get("compress", "none"))),
                  stages=tuple(positive_ints(spec.get("stages", 1), "stages")))
    for codec in study.compressions:
        parse_codec(codec, "--compress")
    if not study.variants():
        raise ConfigError(f"--compress {','.join(study.compressions)}: none of the strategies sends through a codec "
                          f"(left out: {', '.join(study.left_out())}); add none, or a strategy that does")
    for cell in study.cells():
        study.config(cell)
    out = Path(spec.get("out") or f"runs/compare-{study.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    record = out / "study.json"
    wanted = json.dumps(dataclasses.asdict(study), indent=2, sort_keys=True)
    if record.exists() and record.read_text() != wanted:
        raise ConfigError(f"{str(out)!r} holds a different study (see its study.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(wanted)
    return study, out, float(spec["target"]) if spec.get("target") is not None else None


def read_compare_table(path: str) -> dict:
    table = read_toml(path).get("compare")
    if not isinstance(table, dict):
        raise ConfigError(f"{path!r} has no [compare] table")
    unknown = set(table) - set(FIELDS)
    if unknown:
        raise ConfigError(f"unknown key(s) in [compare] of {path!r}: {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(FIELDS)}")
    return dict(table)


def as_list(value) -> list[str]:
    return [str(v).strip() for v in value] if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]


def positive_ints(value, name: str) -> list[int]:
    items = as_list(value)
    if not items or not all(item.isdigit() and int(item) >= 1 for item in items):
        raise ConfigError(f"--{name} must be integers >= 1, like 1,2,4 (got {value!r})")
    return [int(item) for item in items]


def seed_count(value) -> int:
    """``--seeds N`` runs seeds 0..N-1 in every cell: one count, not a list of seeds."""
    if not str(value).strip().isdigit() or int(value) < 1:
        raise ConfigError(f"--seeds must be one integer >= 1, the number of seeds (0..N-1) per cell (got {value!r})")
    return int(value)
