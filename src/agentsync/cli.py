"""``agentsync``: train, evaluate and list. Parses arguments, maps errors to exit codes, prints.

    agentsync train                                   # digits, allreduce, 2 local workers
    agentsync train --task charlm --strategy allreduce --workers 2 --steps 600
    agentsync train --config examples/digits-allreduce.toml --set optimizer.lr=0.05
    agentsync train --resume runs/digits-allreduce-20261122-101500 --steps 800
    agentsync evaluate runs/digits-allreduce-20261122-101500
    agentsync list
    agentsync compare --task digits --strategies allreduce,local-sgd:period=8 --workers 1,2 --net latency=20ms
    agentsync advise --task digits --workers 4 --latency 20ms --bandwidth 1Gbit

Exit codes: 0 success, 1 the job failed (the message names the rank), 2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agentsync.checkpoint import check_rank_states, load_checkpoint
from agentsync.config import OptimizerChoice, RunConfig, load_config, optimizer_choice
from agentsync.errors import ConfigError, JobFailed
from agentsync.forking import discard_unused_fork_server, start_fork_server
from agentsync.leave import leave_after_exit_handlers, leave_process
from agentsync.metrics import SUMMARY, read_summary
from agentsync.optim import OPTIMIZER_STATE_FIELDS
from agentsync.sync import strategy_class
from agentsync.tasks import task_class

console = Console(stderr=True)


class RichProgress:
    """Rank 0's progress bar: step, loss, the task's metric, samples per second."""

    def __init__(self, total: int, start: int) -> None:
        self._bar = Progress(TextColumn("[bold]train"), BarColumn(bar_width=20), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task("train", total=total, completed=start, info="")
        self._fields: dict[str, float] = {}
        self._bar.start()

    def update(self, step: int, **fields: float) -> None:
        self._fields.update(fields)
        info = "  ".join(f"{v:,.0f} samples/s" if k == "samples_per_s" else f"{k} {v:.4g}"
                         for k, v in self._fields.items())
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
    parser.add_argument("--stages", type=int, metavar="P",
                        help="pipeline stages: the model cut into P parts on P processes per replica; default 1")
    parser.add_argument("--actors", type=int, metavar="N",
                        help="actor processes for actor-learner tasks (cartpole-impala); default 2 per worker")
    parser.add_argument("--launcher", help="local (default), torchrun or ray")
    parser.add_argument("--max-restarts", type=int, metavar="N",
                        help="local launcher: restart from the latest checkpoint up to N times when a rank fails")
    parser.add_argument("--straggler", metavar="RANK:SECONDS", help="that rank sleeps SECONDS every step")
    parser.add_argument("--net", metavar="latency=2ms,bandwidth=1Gbit",
                        help="simulate a slower network: each message arrives latency + bytes/bandwidth late")
    parser.add_argument("--compress", metavar="SPEC",
                        help="compress what the strategy sends, e.g. fp16, topk:ratio=0.01 (comm.compression)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override any option, e.g. --set strategy.alpha=0.5 (repeatable)")


def run_flags(args: argparse.Namespace) -> dict:
    return {"task.name": args.task, "strategy.name": args.strategy, "workers": args.workers,
            "servers": args.servers, "parallel.stages": args.stages, "steps": args.steps, "seed": args.seed, "launch.name": args.launcher,
            "actors.count": getattr(args, "actors", None),
            "launch.max_restarts": args.max_restarts, "comm.straggler": args.straggler, "comm.net": args.net,
            "comm.compression": args.compress}


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
    add_compare_parser(commands)
    add_advise_parser(commands)
    listing = commands.add_parser("list", help="list tasks and strategies")
    listing.add_argument("--options", action="store_true", help="also list every option with its help")
    return parser


def add_compare_parser(commands) -> None:
    compare = commands.add_parser("compare", help="run a strategies × workers × seeds matrix and report it")
    compare.add_argument("--config", metavar="FILE.toml", help="read the study from a TOML file's [compare] table")
    compare.add_argument("--task", help="workload; default digits")
    compare.add_argument("--strategies", metavar="A,B:OPT=V,...",
                         help="strategies to compare, each with its own options after ':' (local-sgd:period=8)")
    compare.add_argument("--compress", metavar="none,fp16,...",
                         help="codecs, a dimension of the matrix (strategies that send uncompressed run with none only)")
    compare.add_argument("--workers", metavar="1,2,4", help="worker counts; default 1,2")
    compare.add_argument("--stages", metavar="1,2", help="pipeline stages P, a dimension of the matrix; default 1")
    compare.add_argument("--seeds", type=int, help="seeds 0..N-1 per cell; default 1")
    compare.add_argument("--steps", type=int, help="steps per run; default: the task's")
    compare.add_argument("--net", metavar="latency=2ms,bandwidth=1Gbit", help="simulated network for every run")
    compare.add_argument("--straggler", metavar="RANK:SECONDS", help="a slow rank in every run")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                         help="override an option in every run (repeatable)")
    compare.add_argument("--target", type=float,
                         help="metric value for time/bytes to target; default: the best final metric moved 5%% of its "
                              "magnitude toward worse (best - 0.05*|best| where higher is better, + where lower is)")
    compare.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run counts as failed")
    compare.add_argument("--out", help="study folder; default runs/compare-<task>-<time>. Rerun to resume")


def add_advise_parser(commands) -> None:
    advise = commands.add_parser("advise", help="predict each strategy's step time on a given network")
    advise.add_argument("--task", default="digits", help="workload; default digits")
    advise.add_argument("--workers", type=int, default=2, help="worker count W; default 2")
    advise.add_argument("--servers", type=int, default=1, help="parameter servers S; default 1")
    advise.add_argument("--stages", type=int, default=1,
                        help="pipeline stages P (with --set parallel.microbatches=M); default 1")
    advise.add_argument("--latency", default="0ms", help="one-way latency per message, e.g. 2ms; default 0")
    advise.add_argument("--bandwidth", default="", help="link bandwidth, e.g. 1Gbit or 100Mbps; default unlimited")
    advise.add_argument("--strategies", metavar="A,B,...", help="default: every strategy but none")
    advise.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override an option (repeatable), e.g. strategy.period=8")
    advise.add_argument("--compress", metavar="CODEC,...",
                        help="codecs as a dimension, e.g. none,fp16,topk:ratio=0.01 (strategies that take them)")
    advise.add_argument("--calibrate", action="store_true",
                        help="measure each strategy's loopback step time with real processes (slower, closer)")
    advise.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
    if args.console:  # a program calling main() keeps its process as it was
        if cfg.launch.name == "local":
            start_fork_server()  # if the console script has not: it imports while preflight builds the model
        else:
            discard_unused_fork_server()  # started by the console script, for a launcher not used
    preflight(cfg)
    choice = (OptimizerChoice(cfg.optimizer, "saved in the run's config.toml") if resume else
              optimizer_choice(args.config, flags=flags, overrides=args.overrides))
    reporter = launch(cfg, resume=resume, progress=RichProgress,  # said once the run folder exists
                      announce=lambda: print(f"optimizer: {choice.describe(cfg.averaged_gradients())}",
                                                     file=sys.stderr))
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
    checkpoint = load_checkpoint(run_dir)  # missing or corrupt: fail now, before anything runs
    check_rank_states(run_dir, checkpoint)
    reached = checkpoint["step"]
    saved = load_config(saved_file)
    cfg = load_config(saved_file, flags={**flags, "out": str(run_dir)}, overrides=overrides)
    for field in ("task", "strategy", "servers", "seed", "parallel"):
        if getattr(saved, field) != getattr(cfg, field):
            raise ConfigError(f"--resume cannot change {field}; start a new run instead")
    for field in OPTIMIZER_STATE_FIELDS:
        if getattr(saved.optimizer, field) != getattr(cfg.optimizer, field):
            raise ConfigError(f"--resume cannot change optimizer.{field}: the optimizer's saved state keeps "
                              "its settings; start a new run instead")
    if saved.workers != cfg.workers:
        why = (strategy_class(cfg.strategy.name).fixed_workers or cfg.strategy.fixed_workers()
               or task_class(cfg.task.name).fixed_workers
               or ("each pipeline stage's state is laid out over its replicas" if cfg.parallel.stages > 1 else ""))
        scaled = cfg.optimizer.lr_scaling not in (None, "none")  # None: a run saved before the option
        if not why and scaled and saved.averaged_gradients() != cfg.averaged_gradients():
            why = (f"optimizer.lr_scaling={cfg.optimizer.lr_scaling} scaled the learning rate for "
                   f"{saved.averaged_gradients()} averaged gradients, and the optimizer's saved state keeps it")
        if why:
            raise ConfigError(f"--resume cannot change workers under {cfg.strategy.name} on {cfg.task.name}: {why}; "
                              "start a new run instead")
    if cfg.steps <= reached:
        raise ConfigError(f"--resume: the run already reached step {reached}; pass --steps above it")
    return cfg


def preflight(cfg: RunConfig) -> None:
    """Build worker 0's task and model here, so bad task options, and strategy options the model
    cannot take, fail before any folder exists. (The optimizer is not built: its options are
    checked with the config, and building one imports torch's compiler, a second on this path.)"""
    from agentsync.tasks import build_task

    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    strategy_class(cfg.strategy.name).check_model(cfg.strategy, task.build_model())


def when(lost: dict) -> str:
    """When a rank was lost: a parameter server's update count, or the step the survivors went on from."""
    return f"at update {lost['version']}" if "version" in lost else f"survivors went on from step {lost['step']}"


def print_summary(run_dir: Path) -> None:
    if not (run_dir / SUMMARY).exists():
        return
    s = read_summary(run_dir)
    stages = f" × {s['stages']} stages" if s.get("stages", 1) > 1 else ""
    table = Table(title=f"{s['task']} · {s['strategy']} · {s['workers']} workers{stages} · {s['steps']} steps")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in s["metrics"].items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("wall time", f"{s['wall_time_s']:.1f} s")
    table.add_row("samples / s", f"{s['throughput']['samples_per_s']:.0f}")
    if s.get("step_time_s"):
        table.add_row("step time (training loop)", f"{s['step_time_s'] * 1e3:.3g} ms")
    table.add_row("bytes sent (all ranks)", f"{s['comm']['bytes_sent'] / 1e6:.2f} MB")
    table.add_row("time communicating (all ranks)", f"{s['comm']['comm_time_s']:.2f} s")
    if s.get("pipeline_comm"):
        table.add_row("pipeline bytes sent (all ranks)", f"{s['pipeline_comm']['bytes_sent'] / 1e6:.2f} MB")
    if s["comm"].get("codec_time_s"):
        table.add_row("time encoding/decoding (all ranks)", f"{s['comm']['codec_time_s']:.2f} s")
    if s.get("consensus_distance") is not None:
        table.add_row("consensus distance", f"{s['consensus_distance']:.4g}")
    if s.get("lost_ranks"):
        table.add_row("lost ranks", ", ".join(f"{lost['rank']} ({when(lost)})" for lost in s["lost_ranks"]))
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

    from agentsync.config import SECTION_CLASSES

    out = Console(soft_wrap=True)

    def options(config: type) -> None:
        docs, types = field_docs(config), field_types(config)
        for field, doc in docs.items():
            if field != "name":
                out.print(f"      {field} ({getattr(types[field], '__name__', types[field])}): {doc}", highlight=False)

    for title, registry in (("tasks", TASKS), ("strategies", STRATEGIES)):
        out.print(f"[bold]{title}[/bold]")
        for name, cls in registry.items():
            out.print(f"  {name:<16} {cls.description}")
            if args.options:
                options(cls.Config)
    if args.options:
        out.print("[bold]sections[/bold] (--set SECTION.OPTION=VALUE)")
        for name, config in SECTION_CLASSES.items():
            out.print(f"  {name}")
            options(config)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from agentsync.report.compare import compare, study_from_args

    study, out, target = study_from_args(args)
    counts = compare(study, out, target=target, timeout_s=args.timeout)
    Console().print(f"{counts['ok']} of {counts['cells']} runs ok, {counts['failed']} failed; "
                    f"report: {out / 'report.html'}", highlight=False)
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from agentsync.report.advise import advise_from_args, print_advice

    net, predictions = advise_from_args(args)
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in predictions]))
    else:
        print_advice(net, args, predictions)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "list": cmd_list, "compare": cmd_compare,
            "advise": cmd_advise}


def main(argv: Sequence[str] | None = None, *, console: bool = False) -> int:
    """Run one command; ``console``: this process is the console script's, and ends with the command."""
    try:
        args = make_parser().parse_args(argv)
        if args.command is None:
            args = make_parser().parse_args(["train", *(argv or [])])
        args.console = console
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


def entry() -> None:
    """The console script. A rank that torchrun started leaves as the local launcher's ranks do
    (:func:`agentsync.leave.leave_process`), so a finished job never reads as failed; any other
    command leaves once the exit handlers have run, skipping the interpreter's teardown."""
    try:
        code = main(console=True)
    finally:
        discard_unused_fork_server()  # a train command that started no rank (bad input...)
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        leave_process(code)
    leave_after_exit_handlers(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
