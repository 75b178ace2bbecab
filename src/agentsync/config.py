"""``RunConfig``: everything a run needs, from a TOML file, CLI flags and ``--set`` overrides.

Precedence, lowest first: defaults, the task's defaults, ``--config FILE.toml``, top-level flags
(``--workers``...), ``--set section.option=value``. Sections are ``task``, ``strategy``,
``optimizer``, ``comm``, ``launch``, ``actors`` and ``parallel``; each is the config dataclass of the chosen component, so
``--set strategy.alpha=0.5`` is checked against the chosen strategy's fields. All validation
happens in :meth:`RunConfig.validate`, before anything is written.
"""
from __future__ import annotations

import dataclasses
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from agentsync.actors import ActorsConfig
from agentsync.comm import CommConfig, parse_faults, parse_stragglers
from agentsync.errors import ConfigError
from agentsync.optim import OptimizerConfig, lr_scale
from agentsync.parallel import Layout, ParallelConfig
from agentsync.options import Options, check, choice, coerce
from agentsync.sync import StrategyConfig, strategy_class
from agentsync.sync.base import check_compressed_sum, check_compression, check_momentum_correction
from agentsync.tasks import TASKS, TaskConfig, task_class

LAUNCHERS = ("local", "torchrun", "ray")
SECTIONS = ("task", "strategy", "optimizer", "comm", "launch", "actors", "parallel")


@dataclasses.dataclass(kw_only=True)
class LaunchConfig(Options):
    name: str = "local"
    """How workers start: local (spawned processes on this machine), torchrun (already started by torchrun), ray."""
    threads_per_worker: int = 1
    """torch intra-op threads in each worker process."""
    max_restarts: int = 0
    """Local launcher: when a rank fails, restart the job from its latest checkpoint up to this many
    times (torchrun: use its own --max-restarts; the run then resumes from the checkpoint too)."""

    def validate(self, section: str) -> None:
        choice(self.name, f"{section}.name", LAUNCHERS)
        check(self.threads_per_worker >= 1, f"{section}.threads_per_worker", ">= 1", self.threads_per_worker)
        check(self.max_restarts >= 0, f"{section}.max_restarts", ">= 0", self.max_restarts)
        check(self.max_restarts == 0 or self.name == "local", f"{section}.max_restarts",
              "used only by the local launcher (under torchrun pass torchrun's --max-restarts)", self.max_restarts)


@dataclasses.dataclass(kw_only=True)
class RunConfig(Options):
    workers: int = 2
    """Training processes W."""
    servers: int = 1
    """Parameter-server processes S (parameter-server strategies only)."""
    steps: int | None = None
    """Optimizer steps per worker (default: the task's)."""
    seed: int = 0
    """Seed of model initialisation, data order and environments."""
    out: str = ""
    """Run folder (default: runs/<task>-<strategy>-<time>)."""
    eval_every: int | None = None
    """Evaluate every this many steps (default: the task's; 0: only at the end)."""
    log_every: int = 10
    """Write a training-loss line to metrics.jsonl every this many steps."""
    checkpoint_every: int = 500
    """Write checkpoint.pt every this many steps (and always at the end; 0: only at the end)."""
    task: TaskConfig = dataclasses.field(default_factory=lambda: task_class("digits").Config())
    strategy: StrategyConfig = dataclasses.field(default_factory=lambda: strategy_class("allreduce").Config())
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    comm: CommConfig = dataclasses.field(default_factory=CommConfig)
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)
    actors: ActorsConfig = dataclasses.field(default_factory=ActorsConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)

    @property
    def learner_ranks(self) -> int:
        """The strategy's processes: the workers, plus servers for parameter-server strategies, in every stage."""
        return self.layout.world_size

    @property
    def layout(self) -> Layout:
        """The P × W grid (plus each stage's servers): which rank is which stage and replica."""
        per_stage = strategy_class(self.strategy.name).world_size(self.workers, self.servers)
        return Layout(self.parallel.stages, self.workers, per_stage - self.workers)

    @property
    def world_size(self) -> int:
        """Processes the job runs: the strategy's, then the actors (actor-learner tasks)."""
        return self.learner_ranks + (self.actors.count or 0)

    def averaged_gradients(self) -> int:
        """Workers' gradients one optimizer step averages: what ``optimizer.lr_scaling`` scales lr by."""
        return self.strategy.averaged_gradients(self.workers)

    def resolved(self) -> "RunConfig":
        """A copy with every default filled in from the task, ready to write and re-run."""
        task = task_class(self.task.name)
        out = dataclasses.replace(self, optimizer=self.optimizer_choice().config,
                                  actors=dataclasses.replace(self.actors))
        if out.actors.count is None:
            out.actors.count = task.default_actors_per_worker * self.workers if task.actor_learner else 0
        if out.steps is None:
            out.steps = task.default_steps
        if out.eval_every is None:
            out.eval_every = task.default_eval_every
        if not out.out:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out.out = str(Path("runs") / f"{self.task.name}-{self.strategy.name}-{stamp}")
        return out

    def optimizer_choice(self) -> "OptimizerChoice":
        """The optimizer this run's task, strategy and optimizer section resolve to, and why."""
        return choose_optimizer(self.task.name, self.strategy.name, self.optimizer)

    def validate(self, section: str = "") -> None:
        check(self.workers >= 1, "workers", ">= 1", self.workers)
        check(self.servers >= 1, "servers", ">= 1", self.servers)
        check(self.steps is None or self.steps >= 1, "steps", ">= 1", self.steps)
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            check(value is None or value >= 0, name, ">= 0", value)
        check(self.log_every >= 1, "log_every", ">= 1", self.log_every)
        for name in SECTIONS:
            getattr(self, name).validate(name)
        check_compression(strategy_class(self.strategy.name), self.strategy.name, self.comm.compression)
        check_compressed_sum(strategy_class(self.strategy.name), self.strategy.name, self.comm.compression,
                             self.comm.compressed_sum)
        check_momentum_correction(self.comm.compression, self.optimizer.name, self.optimizer.momentum)
        if hasattr(self.strategy, "validate_run"):
            self.strategy.validate_run(self)
        self._validate_actors()
        self._validate_ranks()
        self._validate_parallel()

    def _validate_parallel(self) -> None:
        """A pipeline needs a task that splits into at least P units and microbatches that divide the batch."""
        p = self.parallel
        if p.stages == 1:
            return
        task = task_class(self.task.name)
        units = task.pipeline_unit_count(self.task)
        if not units:
            able = ", ".join(name for name in TASKS if task_class(name).pipeline_unit_count(task_class(name).Config()))
            raise ConfigError(f"parallel.stages={p.stages}: task {self.task.name} does not split into pipeline "
                              f"stages; tasks that do: {able}")
        check(p.stages <= units, "parallel.stages", f"<= {units}, the units {self.task.name}'s model splits into "
              "(charlm: task.layers + 2)", p.stages)
        check(self.task.batch_size % p.microbatches == 0, "parallel.microbatches",
              f"a divisor of task.batch_size ({self.task.batch_size})", p.microbatches)
        nan = [r for r, (kind, _) in parse_faults(self.comm.fault).items() if kind == "nan"]
        check(not nan, "comm.fault", "kill or hang when parallel.stages > 1 (a nan fault poisons a whole-model "
              "loss, which no stage computes)", self.comm.fault)

    def _validate_actors(self) -> None:
        """Actor-learner tasks need actors; any other task refuses every [actors] option (it would do nothing)."""
        task = task_class(self.task.name)
        if task.actor_learner:
            check(self.actors.count >= self.workers, "actors.count", f">= workers ({self.workers}): every "
                  f"{self.task.name} learner learns from actor processes of its own (--actors N)", self.actors.count)
            return
        defaults = ActorsConfig(count=0)
        given = [k for k, v in dataclasses.asdict(self.actors).items() if v != getattr(defaults, k)]
        if given:
            able = ", ".join(name for name in TASKS if task_class(name).actor_learner)
            raise ConfigError(f"actors.{given[0]} is set, but {self.task.name} is not an actor-learner task "
                              f"(its workers act themselves); actor-learner tasks: {able}")

    def _validate_ranks(self) -> None:
        """Stragglers and faults act in the training loop (a worker's step, an actor's segment): they must
        name worker or actor ranks, or do nothing. Actors compute no gradient, so a nan fault is a worker's."""
        workers = f"0..{self.workers - 1}"
        actors = range(self.learner_ranks, self.world_size)
        allowed = workers + (f" or actor ranks {actors.start}..{actors.stop - 1}" if actors else "")
        for field, ranks in (("comm.straggler", parse_stragglers(self.comm.straggler)),
                             ("comm.fault", parse_faults(self.comm.fault))):
            outside = sorted(r for r in ranks if r >= self.workers and r not in actors)
            check(not outside, field, f"about worker ranks {allowed}", getattr(self.comm, field.split(".")[1]))
        nan_actors = [r for r, (kind, _) in parse_faults(self.comm.fault).items() if kind == "nan" and r in actors]
        check(not nan_actors, "comm.fault", "kill or hang for an actor rank (nan poisons a worker's gradient)",
              self.comm.fault)

    def to_toml(self) -> str:
        return tomli_w.dumps(as_dict(self))


# -- which optimizer: the task's defaults, the strategy's preference, the user's settings ---------------
FAMILIES = {"sgd": "sgd", "adam": "adam", "adamw": "adam"}
"""Optimizers whose tuned hyperparameters carry over to one another (Adam's lr suits AdamW)."""
SGD_ONLY = ("momentum", "nesterov")
STEP_FIELDS = ("max_grad_norm", "lr_schedule")
"""The step contract's fields: not part of an algorithm, so the task's unless the user sets them."""


@dataclasses.dataclass(frozen=True)
class OptimizerChoice:
    """A resolved optimizer section and where it came from (what ``agentsync train`` prints)."""

    config: OptimizerConfig
    """Every field set."""
    source: str
    """Why these settings, in a few words."""

    def describe(self, averaged: int = 1) -> str:
        """``adamw lr=0.001 weight_decay=0.01 (diloco's preferred optimizer, ...)``: what train prints;
        ``averaged`` is the number of gradients a step averages, which ``lr_scaling`` scales lr by."""
        c = self.config
        parts = [f"{c.name} lr={c.lr:g}"]
        if c.lr_scaling != "none":
            factor = lr_scale(c.lr_scaling, averaged)
            gradients = "1 gradient per step" if averaged == 1 else f"{averaged} averaged gradients"
            parts.append(f"lr_scaling={c.lr_scaling} (x{factor:g} for {gradients}: lr={c.lr * factor:g})")
        if c.name == "sgd" and c.momentum:
            parts.append(f"momentum={c.momentum:g}" + (" nesterov" if c.nesterov else ""))
        parts += [f"{f}={getattr(c, f):g}" for f in ("weight_decay", "max_grad_norm") if getattr(c, f)]
        if c.lr_schedule != "constant":
            parts.append(f"lr_schedule={c.lr_schedule}")
        if not c.skip_nonfinite:
            parts.append("skip_nonfinite=false")
        return f"{' '.join(parts)} ({self.source})"


def set_fields(config: OptimizerConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if getattr(config, f.name) is not None}


def contradiction(preferred: OptimizerConfig, user: OptimizerConfig) -> str:
    """The user's setting that rules the strategy's preference out, or "" when it can be kept.

    A preference that names an algorithm is contradicted by another name, or by an SGD-only field
    (momentum, nesterov) when it is adaptive; the user's lr or weight decay only tune it. A partial
    preference (a field or two, no name: ``ps-async``'s momentum 0) is contradicted by another
    value of one of its fields.
    """
    mine = set_fields(user)
    if preferred.name is not None:
        if "name" in mine and mine["name"] != preferred.name:
            return f"optimizer.name={mine['name']}"
        sgd_only = [f for f in SGD_ONLY if mine.get(f)] if preferred.name != "sgd" else []
        return f"optimizer.{sgd_only[0]}={mine[sgd_only[0]]}" if sgd_only else ""
    clash = [f for f, v in set_fields(preferred).items() if f in mine and mine[f] != v]
    return f"optimizer.{clash[0]}={mine[clash[0]]}" if clash else ""


def choose_optimizer(task: str, strategy: str, user: OptimizerConfig) -> OptimizerChoice:
    """The optimizer section of a run: the user's fields over one base, chosen as follows.

    * no strategy preference: the task's defaults;
    * the user contradicts the preference (:func:`contradiction`): the preference is not used at
      all — the task's defaults;
    * a partial preference (no name): the task's defaults with the preference's fields over them;
    * a preference of the same family as the task's optimizer (AdamW for a task tuned with Adam or
      AdamW): the preferred name with the task's tuned settings, the preference filling the rest —
      a task's tuned learning rate is never replaced by a strategy's generic one;
    * a preference of another family (AdamW for a task tuned with SGD): the preference as a whole,
      since the task's lr and momentum are for another algorithm; the task still gives the step
      contract's fields (``max_grad_norm``, ``lr_schedule``).
    """
    defaults = task_class(task).default_optimizer
    preferred = strategy_class(strategy).preferred_optimizer
    yours = ", ".join(f"{k}={v}" for k, v in set_fields(user).items())
    yours = f"; yours: {yours}" if yours else ""
    if preferred is None:
        return OptimizerChoice(user.merged(defaults), f"the {task} task's defaults{yours}")
    ruled_out = contradiction(preferred, user)
    if ruled_out:
        return OptimizerChoice(user.merged(defaults), f"the {task} task's defaults{yours}; {strategy}'s preferred "
                                                      f"optimizer not used, as you set {ruled_out}")
    if preferred.name is None:
        base = preferred.merged(defaults)
        fields = ", ".join(f"{k}={v}" for k, v in set_fields(preferred).items())
        source = f"the {task} task's defaults with {strategy}'s {fields}"
    elif FAMILIES[preferred.name] == FAMILIES[defaults.name]:
        base = dataclasses.replace(defaults.merged(preferred), name=preferred.name)
        source = f"{strategy}'s preferred {preferred.name} with the {task} task's tuned {defaults.name} settings"
    else:
        step = OptimizerConfig(**{f: getattr(defaults, f) for f in STEP_FIELDS})
        base = preferred.merged(step)
        source = (f"{strategy}'s preferred optimizer, as a whole: the {task} task's {defaults.name} settings "
                  "are for another algorithm")
    return OptimizerChoice(user.merged(base), f"{source}{yours}; --set optimizer.* to change")


def as_dict(cfg: RunConfig) -> dict[str, Any]:
    """Top-level scalars then one table per section, with unset (None) values left out."""
    def clean(obj):
        return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None}
    top = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in SECTIONS}
    sections = [s for s in SECTIONS if (s != "actors" or cfg.actors.count)  # [actors] only where there are actors
                and (s != "parallel" or cfg.parallel.stages > 1)]      # [parallel] only for a pipeline
    return {**{k: v for k, v in top.items() if v is not None}, **{s: clean(getattr(cfg, s)) for s in sections}}


SECTION_CLASSES = {"optimizer": OptimizerConfig, "comm": CommConfig, "launch": LaunchConfig, "actors": ActorsConfig,
                   "parallel": ParallelConfig}


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"malformed TOML in {str(path)!r}: {e}") from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["strategy.alpha=0.5", "workers=4"]`` -> nested dict of raw strings."""
    raw: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes section.option=value (got {item!r})")
        *section, option = key.strip().split(".")
        if len(section) > 1:
            raise ConfigError(f"--set key {key!r} has more than one dot; use section.option")
        target = raw.setdefault(section[0], {}) if section else raw
        if not isinstance(target, dict):
            raise ConfigError(f"--set key {key!r}: {section[0]} is not a section")
        target[option] = value.strip()
    return raw


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_config(raw: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a nested dict of TOML or string values, as given (unresolved)."""
    raw = dict(raw)
    sections = {s: raw.pop(s, {}) for s in SECTIONS}
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table with a name key, e.g. [{name}] name = ...")
    task_cls = task_class(sections["task"].get("name", "digits")).Config
    strategy_cls = strategy_class(sections["strategy"].get("name", "allreduce")).Config
    classes = {"task": task_cls, "strategy": strategy_cls, **SECTION_CLASSES}
    built = {s: classes[s](**{k: coerce(classes[s], s, k, v) for k, v in sections[s].items()})
             for s in SECTIONS}
    top_fields = {f.name for f in dataclasses.fields(RunConfig)} - set(SECTIONS)
    for key in raw:
        if key not in top_fields:
            raise ConfigError(f"unknown option {key!r}; top-level options: {', '.join(sorted(top_fields))}; "
                              f"sections: {', '.join(SECTIONS)}")
    return RunConfig(**{k: coerce(RunConfig, "", k, v) for k, v in raw.items()}, **built)


def build_config(raw: dict[str, Any]) -> RunConfig:
    """A validated, resolved :class:`RunConfig` from a nested dict of TOML or string values."""
    cfg = parse_config(raw).resolved()
    cfg.validate()
    return cfg


def read_raw(path: str | Path | None = None, *, flags: dict[str, Any] | None = None,
             overrides: list[str] = ()) -> dict[str, Any]:
    """File, then flags (dotted keys allowed: ``{"strategy.name": "gossip"}``), then ``--set``."""
    raw = read_toml(path) if path else {}
    for key, value in (flags or {}).items():
        if value is not None:
            raw = merge(raw, parse_set([f"{key}={value}"]) if not isinstance(value, dict) else value)
    return merge(raw, parse_set(list(overrides)))


def load_config(path: str | Path | None = None, *, flags: dict[str, Any] | None = None,
                overrides: list[str] = ()) -> RunConfig:
    """File, then flags (dotted keys allowed: ``{"strategy.name": "gossip"}``), then ``--set``."""
    return build_config(read_raw(path, flags=flags, overrides=overrides))


def optimizer_choice(path: str | Path | None = None, *, flags: dict[str, Any] | None = None,
                     overrides: list[str] = ()) -> OptimizerChoice:
    """The optimizer :func:`load_config` with the same arguments resolves to, and why."""
    return parse_config(read_raw(path, flags=flags, overrides=overrides)).optimizer_choice()
