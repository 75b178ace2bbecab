"""``agentsync advise``: predicted per-step time of every strategy for a task, W workers and a network.

    step time = compute × max(1, W / cores) + encode/decode + the strategy's communication (``report/costs.py``)

With a codec (``--compress``, a dimension like the strategies) the communication is that of the
encoded payload, and encoding/decoding a model-sized tensor is measured here too (a gathered
codec decodes W payloads); codecs known to cost convergence are warned about.

Compute is measured here, on this machine: a few optimizer steps of worker 0's model and batch in
this process (one torch thread, as a worker has). With ``calibrate`` the base is instead measured
by short real runs of each strategy on loopback (processes, gloo, contention and all), and only the
simulated network's cost is added by the model.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from agentsync.comm import NetSim
from agentsync.compress import Codec, is_none, parse_codec
from agentsync.config import RunConfig, load_config
from agentsync.errors import ConfigError
from agentsync.report.costs import TRANSPORTS, compressed_step_cost, period, step_cost
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
    codec: str = "none"
    codec_s: float = 0.0
    """Encode and decode seconds per step (compute, measured here)."""


def model_bytes(cfg: RunConfig) -> int:
    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    return sum(p.numel() * p.element_size() for p in task.build_model().parameters())


def measure_compute(cfg: RunConfig, steps: int = 20, warmup: int = 5) -> float:
    """Seconds of one worker's loss + backward + optimizer step, on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
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
    finally:
        torch.set_num_threads(threads)


def measure_codec(codec: Codec, nbytes: int, decodes: int, repeats: int = 5) -> tuple[int, float]:
    """Encoded bytes of a model-sized float32 tensor, and seconds to encode it once and decode ``decodes`` times."""
    x = torch.randn(nbytes // 4, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(repeats):
        encoded = codec.encode(x)
        for _ in range(decodes):
            codec.decode(encoded)
    return codec.nbytes(encoded), (time.perf_counter() - start) / repeats


def predict(cfg: RunConfig, net: NetSim, compute_s: float, nbytes: int, cores: int | None = None) -> Prediction:
    """One strategy's prediction; ``compute_s`` is one worker's step alone on a core, ``nbytes`` the model's size."""
    cores = cores or os.cpu_count() or 1
    compute = compute_s * max(1.0, cfg.workers / cores)
    warning = CONVERGENCE_WARNINGS.get(cfg.strategy.name, "") if cfg.workers > 1 else ""
    spec = cfg.comm.compression
    if is_none(spec):
        cost = step_cost(cfg.strategy, net, nbytes, cfg.workers, cfg.servers)
        return Prediction(cfg.strategy.name, compute + cost.seconds, compute, cost.seconds, cost.bytes_sent, cost.note,
                          warning)
    codec = parse_codec(spec)
    if getattr(codec, "low_rank", False):
        raise ConfigError(f"advise --compress {spec}: powersgd's bytes depend on the model's matrices and are not "
                          "modelled yet; codecs advise models: fp16, bf16, int8, qsgd, sign, topk, randk")
    gathered = TRANSPORTS[cfg.strategy.name] == "collective" and not codec.linear
    wire, codec_s = measure_codec(codec, nbytes, cfg.workers if gathered else 1)
    cost = compressed_step_cost(cfg.strategy, net, nbytes, wire, codec.linear, cfg.workers, cfg.servers)
    codec_s /= period(cfg.strategy)  # encoded once per synchronisation
    warnings = [w for w in (warning, CODEC_WARNINGS.get(spec.split(":")[0], "")) if w]
    return Prediction(cfg.strategy.name, compute + codec_s + cost.seconds, compute, cost.seconds, cost.bytes_sent,
                      cost.note, "; ".join(warnings), spec, codec_s)


def advise(task: str, strategies: list[str], workers: int, net: NetSim, *, servers: int = 1,
           overrides: list[str] = (), base_step_s: dict[str, float] | None = None,
           compressions: list[str] = ("none",)) -> list[Prediction]:
    """Predictions for ``strategies`` × ``compressions`` (where a strategy takes the codec), fastest
    first. ``base_step_s`` (from a calibration) replaces the compute model by a measured loopback
    step time per strategy."""
    predictions, compute, nbytes = [], None, None
    for name in strategies:
        for spec in compressions:
            if not is_none(spec) and name not in TRANSPORTS:
                continue
            cfg = load_config(None, flags={"task.name": task, "strategy.name": name, "workers": workers,
                                           "servers": servers, "comm.compression": spec}, overrides=list(overrides))
            if compute is None:
                compute, nbytes = measure_compute(cfg), model_bytes(cfg)
            p = predict(cfg, net, compute, nbytes)
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
    base = calibrate(args.task, names, args.workers, args.servers, args.overrides) if args.calibrate else None
    compressions = [c.strip() for c in args.compress.split(",")] if getattr(args, "compress", None) else ["none"]
    return net, advise(args.task, names, args.workers, net, servers=args.servers, overrides=args.overrides,
                       base_step_s=base, compressions=compressions)


def print_advice(net: NetSim, args, predictions: list[Prediction]) -> None:
    from rich.console import Console
    from rich.table import Table

    bandwidth = "unlimited" if net.bandwidth_Bps == float("inf") else f"{net.bandwidth_Bps * 8 / 1e9:.3g} Gbit/s"
    table = Table(title=f"{args.task} · W = {args.workers} · latency {net.latency_s * 1e3:.3g} ms · {bandwidth}",
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
