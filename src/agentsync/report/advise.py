"""``agentsync advise``: predicted per-step time of every strategy for a task, W workers and a network.

    step time = compute × max(1, W / cores) + encode/decode + the strategy's communication (``report/costs.py``)

With a codec (``--compress``, a dimension like the strategies) the communication is that of the
encoded payload, and encoding/decoding a model-sized tensor is measured here too (a gathered
codec decodes W payloads); codecs known to cost convergence are warned about. A parameter
server's compressed answers (``strategy.pull_compression``) are modelled the same way. ``powersgd`` is
modelled from the model's matrices: two all-reduces per step (P with the parameters it sends as
they are, then Q), and the factorisation of a model-shaped gradient timed here.

With P pipeline stages (``--stages P``, M = ``parallel.microbatches``) each rank computes 1/P of
the model, the schedule leaves it idle for the bubble, and activations cross the stage boundaries:

    step time = compute / P × (M + P − 1) / M × max(1, P·W / cores)
                + 2 (M + P − 2) message(one microbatch's activations)   (the critical path's hops)
                + the strategy's communication of the largest stage's parameters

The bubble (P − 1) / (M + P − 1) is the same for GPipe and 1F1B (1F1B holds fewer activations,
not fewer idle slots).

Compute is measured here, on this machine: a few optimizer steps of worker 0's model and batch in
this process (one torch thread, as a worker has). With ``calibrate`` the base is instead measured
by short real runs of each strategy on loopback (processes, gloo, contention and all), and only the
simulated network's cost is added by the model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from agentsync.comm import Comm, CommConfig, CommStats, NetSim
from agentsync.compress import Codec, Compression, PowerSGD, is_none, parse_codec
from agentsync.config import RunConfig, load_config
from agentsync.errors import ConfigError
from agentsync.report.costs import TRANSPORTS, compressed_step_cost, low_rank_step_cost, period, step_cost
from agentsync.sync import STRATEGIES
from agentsync.sync.base import check_compression
from agentsync.sync.ps import ServerConfig
from agentsync.sync.compressed import power_floats, power_sum
from agentsync.tasks import build_task

# Strategies whose steps buy less progress than allreduce's: the advice says so next to the time.
CONVERGENCE_WARNINGS = {
    "ps-async": "stale gradients: expect more steps to the same accuracy as W grows",
    "ssp": "bounded staleness: more steps to the same accuracy than ps-sync",
    "gossip": "replicas agree only after ~mixing-time rounds: more steps than allreduce at large W",
    "local-sgd": "replicas drift between averages: large periods need more steps",
    "diloco": "replicas drift between outer steps: needs more steps per unit of accuracy",
    "easgd": "elastic averaging: replicas explore apart, more steps than allreduce",
    "ensemble": "no sharing: each member learns from 1/W of the data",
}


# Codecs whose steps buy less progress than uncompressed ones, even with error feedback.
CODEC_WARNINGS = {
    "sign": "1 bit per coordinate (biased): slower convergence, more so at small batches",
    "topk": "most coordinates wait in the residual: at small ratios expect more steps",
    "randk": "random coordinates wait in the residual: more steps than top-k at the same ratio",
    "qsgd": "stochastic rounding adds variance: more steps, most at 2 bits",
}


@dataclasses.dataclass(frozen=True)
class Prediction:
    strategy: str
    step_time_s: float
    compute_s: float
    comm_s: float
    bytes_per_step: float
    note: str
    warning: str = ""
    stages: int = 1
    bubble: float = 0.0
    """Fraction of a stage's step idle in the pipeline's bubble, (P − 1) / (M + P − 1)."""
    pipeline_s: float = 0.0
    """Seconds per step the activations and their gradients take on the critical path."""
    pipeline_bytes_per_step: float = 0.0
    """Activation and activation-gradient bytes a middle stage sends per step."""
    codec: str = "none"
    codec_s: float = 0.0
    """Encode and decode seconds per step (compute, measured here)."""


def model_bytes(cfg: RunConfig) -> int:
    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    return sum(p.numel() * p.element_size() for p in task.build_model().parameters())


@dataclasses.dataclass(frozen=True)
class PipelineShape:
    """What the cost model needs of a split model."""

    stage_bytes: int
    """Parameter bytes of the largest stage (what its strategy synchronizes)."""
    boundary_bytes: int
    """Bytes of one microbatch's activations at the widest stage boundary."""


def pipeline_shape(cfg: RunConfig) -> PipelineShape:
    """The largest stage and widest boundary of ``cfg``'s task cut into ``parallel.stages`` stages."""
    from agentsync.parallel.split import balanced_split, param_count, stage_examples

    p = cfg.parallel
    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    units = task.pipeline_units(task.build_model())
    sizes = [param_count(u) * 4 for u in units]
    points = balanced_split(sizes, p.stages)
    inputs, _ = task.pipeline_batch(0)
    microbatch = inputs[: len(inputs) // p.microbatches]
    boundaries = [stage_examples(units, points, s, microbatch)[1] for s in range(p.stages - 1)]
    return PipelineShape(max(sum(sizes[a:b]) for a, b in zip(points, points[1:])),
                         max(t.numel() * t.element_size() for t in boundaries))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Measure as a worker runs: on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure_compute(cfg: RunConfig, steps: int = 20, warmup: int = 5) -> float:
    """Seconds of one worker's loss + backward + optimizer step, on one torch thread."""
    with one_thread():
        torch.manual_seed(cfg.seed)
        task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
        model = task.build_model()
        optimizer = cfg.optimizer.build(model.parameters())
        for step in range(warmup + steps):
            if step == warmup:
                start = time.perf_counter()
            loss, _ = task.loss(model, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps


def measure_codec(codec: Codec, nbytes: int, decodes: int, repeats: int = 5) -> tuple[int, float]:
    """Encoded bytes of a model-sized float32 tensor, and seconds to encode it once and decode ``decodes`` times."""
    x = torch.randn(nbytes // 4, generator=torch.Generator().manual_seed(0))
    with one_thread():
        start = time.perf_counter()
        for _ in range(repeats):
            encoded = codec.encode(x)
            for _ in range(decodes):
                codec.decode(encoded)
        return codec.nbytes(encoded), (time.perf_counter() - start) / repeats


def param_shapes(cfg: RunConfig) -> list[torch.Size]:
    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    return [p.shape for p in task.build_model().parameters() if p.requires_grad]


def measure_power_sum(codec: PowerSGD, shapes: list[torch.Size], repeats: int = 5) -> float:
    """Seconds of one step's PowerSGD factorisation of a gradient shaped as the model (one rank, so
    no network): the products with Q and P, the orthogonalisation and the residual."""
    stats = CommStats()
    compression = Compression(PowerSGD(codec.rank, 0, codec.seed), stats)
    grad = torch.randn(sum(math.prod(s) for s in shapes), generator=torch.Generator().manual_seed(0))
    comm = Comm(0, 1, CommConfig())
    with one_thread():
        power_sum(comm, compression, "advise", grad.clone(), shapes)  # the first step draws Q
        stats.codec_time_s = 0.0
        for _ in range(repeats):
            power_sum(comm, compression, "advise", grad.clone(), shapes)
    return stats.codec_time_s / repeats


def predict(cfg: RunConfig, net: NetSim, compute_s: float, nbytes: int, cores: int | None = None,
            shape: PipelineShape | None = None) -> Prediction:
    """One strategy's prediction; ``compute_s`` is one worker's step alone on a core, ``nbytes`` the
    model's size, ``shape`` the split model where ``parallel.stages`` > 1."""
    cores = cores or os.cpu_count() or 1
    warnings = [CONVERGENCE_WARNINGS.get(cfg.strategy.name, "") if cfg.workers > 1 else ""]
    stages, m = (cfg.parallel.stages, cfg.parallel.microbatches) if shape is not None else (1, 1)
    bubble = (stages - 1) / (m + stages - 1)
    compute = compute_s / stages / (1 - bubble) * max(1.0, stages * cfg.workers / cores)
    synced = shape.stage_bytes if shape is not None else nbytes  # what one strategy instance synchronizes
    hops = 2 * (m + stages - 2) * net.message(shape.boundary_bytes) if shape is not None else 0.0
    activations = 2 * m * shape.boundary_bytes if shape is not None else 0
    spec, codec_s = cfg.comm.compression, 0.0
    pull = cfg.strategy.pull_codec() if isinstance(cfg.strategy, ServerConfig) else "none"
    if is_none(spec) and is_none(pull):
        cost = step_cost(cfg.strategy, net, synced, cfg.workers, cfg.servers)
    else:
        codec = parse_codec(spec)
        if getattr(codec, "low_rank", False):
            if shape is not None:
                raise ConfigError(f"advise --compress {spec}: powersgd is modelled for one stage only (--stages 1)")
            shapes = param_shapes(cfg)
            cost = low_rank_step_cost(net, *power_floats(shapes, codec.rank), cfg.workers)
            codec_s = measure_power_sum(codec, shapes)
        else:
            gathered = TRANSPORTS[cfg.strategy.name] == "collective" and not codec.linear
            scattered = gathered and cfg.comm.compressed_sum == "scatter-gather"
            decodes = 2 if scattered else cfg.workers if gathered else 1  # scattered: W chunks twice
            wire, codec_s = (synced, 0.0) if is_none(spec) else measure_codec(codec, synced, decodes)
            chunk = measure_codec(codec, 4 * math.ceil(synced / 4 / cfg.workers), 0)[0] if scattered else None
            answer = None
            if not is_none(pull):  # the server encodes this worker's answer, the worker decodes it
                answer, pull_s = measure_codec(parse_codec(pull), synced, 1)
                codec_s += pull_s
            cost = compressed_step_cost(cfg.strategy, net, synced, wire, codec.linear, cfg.workers, cfg.servers,
                                        answer, chunk)
            codec_s /= period(cfg.strategy)  # encoded once per synchronisation
        warnings += [CODEC_WARNINGS.get(c.split(":")[0], "") for c in dict.fromkeys((spec, pull))]
    note = cost.note + (f"; P={stages}, M={m}: bubble {bubble:.0%}" if stages > 1 else "")
    return Prediction(cfg.strategy.name, compute + codec_s + hops + cost.seconds, compute, cost.seconds + hops,
                      cost.bytes_sent + activations, note, "; ".join(w for w in warnings if w), stages, bubble,
                      hops, activations, spec, codec_s)


def takes(strategy: str, spec: str) -> bool:
    """Whether ``strategy`` can send through codec ``spec`` (a bad spec itself is still an error)."""
    if is_none(spec):
        return True
    parse_codec(spec)
    try:
        check_compression(STRATEGIES[strategy], strategy, spec)
    except ConfigError:
        return False
    return True


def advise(task: str, strategies: list[str], workers: int, net: NetSim, *, servers: int = 1,
           overrides: list[str] = (), base_step_s: dict[str, float] | None = None,
           stages: int = 1, compressions: list[str] = ("none",)) -> list[Prediction]:
    """Predictions for ``strategies`` × ``compressions`` (where a strategy takes the codec), fastest
    first. ``base_step_s`` (from a calibration) replaces the compute model by a measured loopback
    step time per strategy."""
    predictions, compute, nbytes, shape = [], None, None, None
    for name in strategies:
        for spec in compressions:
            if not takes(name, spec):
                continue
            cfg = load_config(None, flags={"task.name": task, "strategy.name": name, "workers": workers,
                                           "servers": servers, "parallel.stages": stages,
                                           "comm.compression": spec}, overrides=list(overrides))
            if compute is None:
                compute, nbytes = measure_compute(cfg), model_bytes(cfg)
                shape = pipeline_shape(cfg) if stages > 1 else None
            p = predict(cfg, net, compute, nbytes, shape=shape)
            if base_step_s and name in base_step_s:
                base = base_step_s[name]
                p = dataclasses.replace(p, compute_s=base, step_time_s=base + p.codec_s + p.comm_s)
            predictions.append(p)
    return sorted(predictions, key=lambda p: p.step_time_s)


def calibrate(task: str, strategies: list[str], workers: int, servers: int, overrides: list[str],
              steps: int = 30) -> dict[str, float]:
    """Each strategy's measured step time on loopback: short real runs, one after another."""
    from agentsync.report.matrix import StrategySpec, Study, run_matrix
    from agentsync.report.results import collect

    study = Study(task=task, strategies=tuple(StrategySpec(s) for s in strategies), workers=(workers,), steps=steps,
                  overrides=(*overrides, f"servers={servers}", "eval_every=0", "checkpoint_every=0"))
    with tempfile.TemporaryDirectory() as folder:
        run_matrix(study, Path(folder))
        return {r.cell.strategy.name: r.summary["step_time_s"] for r in collect(study, Path(folder)) if r.ok}


def advise_from_args(args) -> tuple[NetSim, list[Prediction]]:
    from agentsync.sync import STRATEGIES

    spec = ",".join(f"{k}={v}" for k, v in (("latency", args.latency), ("bandwidth", args.bandwidth)) if v)
    net = NetSim.parse(spec) or NetSim()
    names = [s.strip() for s in args.strategies.split(",")] if args.strategies else [s for s in STRATEGIES if s != "none"]
    overrides = [*args.overrides, f"parallel.stages={args.stages}"]
    base = calibrate(args.task, names, args.workers, args.servers, overrides) if args.calibrate else None
    compressions = [c.strip() for c in args.compress.split(",")] if getattr(args, "compress", None) else ["none"]
    return net, advise(args.task, names, args.workers, net, servers=args.servers, overrides=args.overrides,
                       base_step_s=base, stages=args.stages, compressions=compressions)


def print_advice(net: NetSim, args, predictions: list[Prediction]) -> None:
    from rich.console import Console
    from rich.table import Table

    bandwidth = "unlimited" if net.bandwidth_Bps == float("inf") else f"{net.bandwidth_Bps * 8 / 1e9:.3g} Gbit/s"
    stages = f" × P = {args.stages}" if args.stages > 1 else ""
    table = Table(title=f"{args.task} · W = {args.workers}{stages} · latency {net.latency_s * 1e3:.3g} ms · {bandwidth}",
                  caption=("base step time measured by short loopback runs" if args.calibrate else
                           f"compute per step, measured here (with W/cores contention): {predictions[0].compute_s * 1e3:.3g} ms") if predictions else None)
    for column in ("#", "strategy", "step time", "codec", "network", "bytes / step", "why"):
        table.add_column(column, justify="left" if column in ("strategy", "why") else "right")
    for i, p in enumerate(predictions, 1):
        label = p.strategy + ("" if is_none(p.codec) else f" +{p.codec}")
        table.add_row(str(i), label + (" ⚠" if p.warning else ""), f"{p.step_time_s * 1e3:.3g} ms",
                      f"{p.codec_s * 1e3:.3g} ms", f"{p.comm_s * 1e3:.3g} ms", f"{p.bytes_per_step / 1e3:.3g} kB", p.note)
    console = Console(width=max(Console().width, 110))
    console.print(table)
    for p in predictions:
        if p.warning:
            label = p.strategy + ("" if is_none(p.codec) else f" +{p.codec}")
            console.print(f"⚠ {label}: {p.warning}", highlight=False)
