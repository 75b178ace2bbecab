"""``agentsync``: train, evaluate and list. Parses arguments, maps errors to exit codes, prints.

    agentsync train                                   # digits, allreduce, 2 local workers
    agentsync train --task charlm --strategy allreduce --workers 2 --steps 600
    agentsync train --config examples/digits-allreduce.toml --set optimizer.lr=0.05
    agentsync train --resume runs/digits-allreduce-20261122-101500 --steps 800
    agentsync evaluate runs/digits-allreduce-20261122-101500
    agentsync list

Exit codes: 0 success, 1 the job failed (the message names the rank), 2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agentsync.checkpoint import load_checkpoint
from agentsync.config import RunConfig, load_config, read_toml
from agentsync.errors import ConfigError, JobFailed
from agentsync.metrics import SUMMARY, read_summary

console = Console(stderr=True)


class RichProgress:
    """Rank 0's progress bar: step, loss, the task's metric, samples per second."""

    def __init__(self, total: int, start: int) -> None:
        self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task("train", total=total, completed=start, info="")
        self._fields: dict[str, float] = {}
        self._bar.start()

    def update(self, step: int, **fields: float) -> None:
        self._fields.update(fields)
        info = "  ".join(f"{k} {v:.4g}" for k, v in self._fields.items())
        self._bar.update(self._task, completed=step, info=info)

    def close(self) -> None:
        self._bar.stop()


# -- argument parsing ----------------------------------------------------------------------------
def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    parser.add_argument("--task", help="workload (see `agentsync list`); default digits")
    parser.add_argument("--strategy", help="synchronization strategy (see `agentsync list`); default allreduce")
    parser.add_argument("--workers", type=int, help="training processes W; default 2")
    parser.add_argument("--servers", type=int, help="parameter-server processes S; default 1")
    parser.add_argument("--steps", type=int, help="optimizer steps per worker; default: the task's")
    parser.add_argument("--seed", type=int, help="seed of initialisation, data order, environments; default 0")
    parser.add_argument("--launcher", help="local (default), torchrun or ray")
    parser.add_argument("--straggler", metavar="RANK:SECONDS", help="that rank sleeps SECONDS every step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override any option, e.g. --set strategy.alpha=0.5 (repeatable)")


def run_flags(args: argparse.Namespace) -> dict:
    return {"task.name": args.task, "strategy.name": args.strategy, "workers": args.workers,
            "servers": args.servers, "steps": args.steps, "seed": args.seed, "launch.name": args.launcher,
            "comm.straggler": args.straggler}


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="agentsync", description="Train with a chosen synchronization strategy.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser("train", help="train one run")
    add_run_flags(train)
    train.add_argument("--out", help="run folder; default runs/<task>-<strategy>-<time>")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    evaluate = commands.add_parser("evaluate", help="recompute a run's metrics from its checkpoint")
    evaluate.add_argument("run_dir", metavar="DIR")
    evaluate.add_argument("--episodes", type=int, help="RL tasks: evaluation episodes")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing = commands.add_parser("list", help="list tasks and strategies")
    listing.add_argument("--options", action="store_true", help="also list every option with its help")
    return parser


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors turned into our one-line, exit-2 errors."""

    def error(self, message: str) -> None:
        raise ConfigError(message)


# -- commands ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from agentsync.launch import launch

    flags = run_flags(args)
    resume = args.resume is not None
    if resume:
        cfg = resume_config(Path(args.resume), flags, args.overrides, args.config)
    else:
        if args.out:
            flags["out"] = args.out
        if os.environ.get("TORCHELASTIC_RUN_ID") and args.launcher is None:
            flags["launch.name"] = "torchrun"  # started by torchrun: be one of its ranks
        cfg = load_config(args.config, flags=flags, overrides=args.overrides)
    preflight(cfg)
    reporter = launch(cfg, resume=resume, progress=RichProgress)
    if reporter:
        print_summary(Path(cfg.out))
    return 0


def resume_config(run_dir: Path, flags: dict, overrides: list[str], config_file: str | None) -> RunConfig:
    """The saved config of ``run_dir`` with new flags on top; what defines the job may not change."""
    if config_file:
        raise ConfigError("--resume takes its config from the run folder; drop --config")
    saved_file = run_dir / "config.toml"
    if not saved_file.is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a run folder (no config.toml)")
    load_checkpoint(run_dir)  # missing or corrupt: fail now, before anything runs
    saved = load_config(saved_file)
    cfg = load_config(saved_file, flags={**flags, "out": str(run_dir)}, overrides=overrides)
    for field in ("task", "strategy", "workers", "servers", "seed"):
        if getattr(saved, field) != getattr(cfg, field):
            raise ConfigError(f"--resume cannot change {field}; start a new run instead")
    return cfg


def preflight(cfg: RunConfig) -> None:
    """Build worker 0's task and model here, so bad task options fail before any folder exists."""
    from agentsync.tasks import build_task

    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    cfg.optimizer.build(task.build_model().parameters())


def print_summary(run_dir: Path) -> None:
    if not (run_dir / SUMMARY).exists():
        return
    s = read_summary(run_dir)
    table = Table(title=f"{s['task']} · {s['strategy']} · {s['workers']} workers · {s['steps']} steps")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in s["metrics"].items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("wall time", f"{s['wall_time_s']:.1f} s")
    table.add_row("samples / s", f"{s['throughput']['samples_per_s']:.0f}")
    table.add_row("bytes sent (all ranks)", f"{s['comm']['bytes_sent'] / 1e6:.2f} MB")
    table.add_row("time communicating (all ranks)", f"{s['comm']['comm_time_s']:.2f} s")
    for key in ("consensus_distance", "lost_ranks"):
        if key in s:
            table.add_row(key.replace("_", " "), str(s[key]))
    Console().print(table)
    Console().print(f"run folder: {run_dir}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from agentsync.runtime import evaluate_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run folder (no config.toml)")
    overrides = [f"task.eval_episodes={args.episodes}"] if args.episodes is not None else []
    cfg = load_config(run_dir / "config.toml", overrides=overrides)
    result = evaluate_run(cfg, run_dir)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"{run_dir} (step {result['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key != "step":
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from agentsync.options import field_docs, field_types
    from agentsync.sync import STRATEGIES
    from agentsync.tasks import TASKS

    out = Console(soft_wrap=True)
    for title, registry in (("tasks", TASKS), ("strategies", STRATEGIES)):
        out.print(f"[bold]{title}[/bold]")
        for name, cls in registry.items():
            out.print(f"  {name:<14} {cls.description}")
            if args.options:
                docs, types = field_docs(cls.Config), field_types(cls.Config)
                for field, doc in docs.items():
                    if field != "name":
                        out.print(f"      {field} ({getattr(types[field], '__name__', types[field])}): {doc}",
                                  highlight=False)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        if args.command is None:
            args = make_parser().parse_args(["train", *(argv or [])])
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"agentsync: error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"agentsync: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agentsync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
