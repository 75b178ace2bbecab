"""The one worker loop every launcher runs: build, train, evaluate, checkpoint, report.

Each process of a job calls :func:`run_worker`. Workers train; server ranks of a parameter-server
strategy serve inside ``strategy.setup`` and rejoin here for the end-of-run collection. The rank
the strategy names reporter (worker 0 by default) writes checkpoint.pt and summary.json; every
rank appends its own lines to metrics.jsonl. In an actor-learner job the ranks after the
strategy's are actors (:mod:`agentsync.actors`): they act until their learner says stop, and the
strategy's ranks run here on a sub-group of their own.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

from agentsync.actors import actors_of
from agentsync.actors.actor import run_actor
from agentsync.actors.feed import Feed, merge_reports
from agentsync.checkpoint import from_bytes, load_checkpoint, save_checkpoint, to_bytes
from agentsync.comm import Comm
from agentsync.config import RunConfig
from agentsync.errors import ConfigError
from agentsync.metrics import MetricsLog, write_summary
from agentsync.sync import Strategy, build_strategy, strategy_class
from agentsync.tasks import Task, build_task


class Progress(Protocol):
    def update(self, step: int, **fields: float) -> None: ...
    def close(self) -> None: ...


ProgressFactory = Callable[[int, int], Progress]  # (total_steps, start_step) -> Progress


def run_worker(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False,
               progress: ProgressFactory | None = None, comm: Comm | None = None) -> bool:
    """Run this rank to the end; joins the job from the torchrun-style environment unless given ``comm``.

    Returns True on the rank that wrote the summary (worker 0, or server 0 under ``ps-*``).
    """
    comm = comm or Comm.from_env(cfg.comm)
    try:
        learners = comm.split(list(range(cfg.learner_ranks))) if cfg.actors.count else comm
        if learners is None:
            run_actor(cfg, comm)
            return False
        worker = Worker(cfg, Path(run_dir), learners, resume=resume, progress=progress, world=comm)
        worker.run()
        return worker.strategy.is_reporter
    finally:
        comm.close()


def build_parts(cfg: RunConfig, comm: Comm) -> tuple[Strategy, Task, torch.nn.Module, torch.optim.Optimizer]:
    """Strategy, task, model and optimizer, identically initialised on every rank from ``cfg.seed``."""
    strategy = build_strategy(cfg.strategy, comm, num_workers=cfg.workers)
    task = build_task(cfg.task, worker_rank=max(strategy.worker_rank, 0), num_workers=cfg.workers,
                      seed=cfg.seed, device=comm.device)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(comm.device)
    optimizer = cfg.optimizer.build(model.parameters())
    return strategy, task, model, optimizer


class Worker:
    """One rank's run. Kept as an object so each phase reads as a short method."""

    def __init__(self, cfg: RunConfig, run_dir: Path, comm: Comm, *, resume: bool,
                 progress: ProgressFactory | None, world: Comm | None = None) -> None:
        self.cfg, self.run_dir, self.comm = cfg, run_dir, comm
        self.t0 = time.time()
        self.strategy, self.task, self.model, self.optimizer = build_parts(cfg, comm)
        self.feed = self._feed(world or comm)
        self.elapsed_before, self.samples = 0.0, 0
        self.timing = {"step_time_s": None, "train_samples_per_s": None}  # this session's training loop only
        if resume:
            self._restore(load_checkpoint(run_dir))
        self.log = MetricsLog(run_dir, comm.rank, self.t0 - self.elapsed_before)
        self.leader = self.strategy.worker_rank == 0  # evaluates during training and shows progress
        self.progress = progress(cfg.steps, self.strategy.steps) if progress and self.leader else None
        self.strategy.max_steps = cfg.steps

    # -- phases -----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if not self.strategy.is_worker:  # a server comes back from serving to report here (else it leaves)
                self.strategy.leaves_after_serving = False
            self.strategy.setup(self.model, self.optimizer, self.cfg.optimizer.update_rule())  # servers serve here
            if self.strategy.is_worker:
                if self.feed:
                    self.feed.start(self.model, self.strategy.steps)
                self._train()
                if self.feed:
                    self.feed.close()
            member = self.task.evaluate(self.model) if self.strategy.is_worker and self.strategy.replicas_differ else None
            final = self.strategy.finalize()
            self._finish(final, member)
        finally:
            self.log.close()

    def _feed(self, world: Comm) -> Feed | None:
        """A worker's end of its actors (actor-learner jobs), attached to the task it feeds."""
        cfg = self.cfg
        if not cfg.actors.count or not self.strategy.is_worker:
            return None
        ranks = [cfg.learner_ranks + a for a in actors_of(self.strategy.worker_rank, cfg.workers, cfg.actors.count)]
        feed = Feed(world, ranks, cfg.actors, tuple(self.task.observation_space.shape))
        self.task.attach(feed)
        return feed

    def _train(self) -> None:
        """The step contract's loop: loss, backward (allreduce averages here), strategy step."""
        cfg, strategy, start = self.cfg, self.strategy, self.strategy.steps
        if start == 0:
            self._evaluate(0)
        self.loop_start, samples_before, paused = time.time(), self.samples, 0.0
        for step in range(start, cfg.steps):
            loss, samples = self.task.loss(self.model, step)
            loss = self.comm.inject_fault(step, loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            strategy.step()
            self.samples += samples
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                self.log.log("train", done, loss=loss.item(), **strategy.stats)
            if self.progress:
                rate = self.samples * self.cfg.workers / max(time.time() - self.loop_start, 1e-9)
                self.progress.update(done, loss=loss.item(), samples_per_s=rate)
            if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
                paused += self._evaluate(done)
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.steps
                    and strategy.midrun_checkpoints):
                self._checkpoint(done, self.model)
            if strategy.finished:
                break
        train_time, steps = time.time() - self.loop_start - paused, strategy.steps - start
        if steps > 0 and train_time > 0:
            self.timing = {"step_time_s": train_time / steps,
                           "train_samples_per_s": (self.samples - samples_before) / train_time}

    def _evaluate(self, step: int) -> float:
        """The leader evaluates; returns the seconds this rank spent here, which its training clock leaves out.

        Where every step synchronizes the workers, all of them pause together (a barrier after the
        evaluation): otherwise the others would wait for the leader inside their next collective,
        and count the wait as training and communication time.
        """
        began = time.time()
        extra = self.strategy.measure()
        if self.leader:
            metrics = self.task.evaluate(self.model)
            self.log.log("eval", step, **metrics, **extra, **self.comm.stats.as_dict())
            if self.progress:
                self.progress.update(step, **{self.task.metric: metrics[self.task.metric]})
        if not self.strategy.tolerates_worker_loss:
            with self.comm.uncounted():
                self.comm.barrier()
        return time.time() - began

    def _finish(self, final: torch.nn.Module, member: dict | None) -> None:
        """Checkpoint the final state; the reporter evaluates the result and writes the summary."""
        cfg = self.cfg
        payloads = self._checkpoint(cfg.steps, final, member=member)
        if payloads is None:
            return
        metrics = self.task.evaluate(final)
        if self.progress:
            self.progress.update(cfg.steps, **{self.task.metric: metrics[self.task.metric]})
            self.progress.close()
        self.log.log("final", cfg.steps, **metrics)
        write_summary(self.run_dir, self._summary(metrics, payloads))

    # -- checkpoint and summary ---------------------------------------------------------------
    def _rank_state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "strategy": self.strategy.state_dict(), "task": self.task.state_dict(),
                "rng": torch.get_rng_state()}

    def _checkpoint(self, step: int, model: torch.nn.Module, member: dict | None = None) -> list[dict] | None:
        """Collect every rank's state and statistics at the reporter, which writes checkpoint.pt."""
        payload = {"rank": self.comm.rank, "is_worker": self.strategy.is_worker, "state": self._rank_state(),
                   "stats": self.strategy.stats, "samples": self.samples, "member": member,
                   "actors": self.feed.report() if self.feed else None, **self.timing}
        gathered = self.strategy.collect(to_bytes(payload))
        if gathered is None:
            return None
        save_checkpoint(self.run_dir, step=step, elapsed_s=self._elapsed(), model=model.state_dict(),
                        ranks=gathered)
        return [from_bytes(p) for p in gathered]

    def _restore(self, checkpoint: dict) -> None:
        ranks = {p["rank"]: p for p in map(from_bytes, checkpoint["ranks"])}
        if self.comm.rank not in ranks:
            raise ConfigError(f"the checkpoint has no state for rank {self.comm.rank} (lost during the run); "
                              "it cannot be resumed exactly")
        mine = ranks[self.comm.rank]
        state = mine["state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.task.load_state_dict(state["task"])
        torch.set_rng_state(state["rng"])
        self.comm.stats.load(mine["stats"])
        self.elapsed_before, self.samples = float(checkpoint["elapsed_s"]), int(mine["samples"])

    def _elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0

    def _summary(self, metrics: dict, payloads: list[dict]) -> dict:
        cfg, wall = self.cfg, self._elapsed()
        stats = [p["stats"] for p in payloads]
        comm = {k: sum(s[k] for s in stats) for k in ("bytes_sent", "bytes_received", "messages", "comm_time_s",
                                                            "codec_time_s")}
        samples = sum(p["samples"] for p in payloads)
        summary = {
            "task": cfg.task.name, "strategy": cfg.strategy.name, "workers": cfg.workers,
            "world_size": cfg.world_size, "steps": cfg.steps, "seed": cfg.seed, "wall_time_s": round(wall, 4),
            "metric": self.task.metric, "higher_is_better": self.task.higher_is_better,
            "metrics": metrics, "comm": comm, "samples": samples,
            "comm_per_rank": [{"rank": p["rank"], **{k: p["stats"][k] for k in comm}} for p in payloads],
            "throughput": {"samples_per_s": samples / wall if wall else 0.0,
                           "steps_per_s": cfg.steps / wall if wall else 0.0},
        }
        timed = [p for p in payloads if p["is_worker"] and p["step_time_s"]]
        if timed:  # the training loops only: no start-up, evaluation or final gathering
            summary["throughput"]["train_samples_per_s"] = sum(p["train_samples_per_s"] for p in timed)
            summary["step_time_s"] = sum(p["step_time_s"] for p in timed) / len(timed)
            summary["step_time_by_rank"] = {str(p["rank"]): p["step_time_s"] for p in timed}
        skipped = [p["stats"]["nonfinite_skipped"] for p in payloads if p["is_worker"]]
        # identical replicas skip the same steps together: count steps, not ranks
        summary["nonfinite_skipped"] = sum(skipped) if self.strategy.replicas_differ else max(skipped, default=0)
        members = [p["member"] for p in payloads if p["member"] is not None]
        if members and len(members) > 1:
            values = [m[self.task.metric] for m in members]
            mean = sum(values) / len(values)
            summary["members"] = {"metrics": members, "mean": mean,
                                  "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}
        summary.update(self.strategy.summary())
        extra = {name: self.task.evaluate(model) for name, model in self.strategy.report_models().items()}
        if extra:
            summary["models"] = extra
        feeds = [p["actors"] for p in payloads if p.get("actors")]
        if feeds:
            summary["actors"] = merge_reports(feeds, summary["throughput"].get("train_samples_per_s"))
        summary["restarts"] = restarts()
        summary["ok"] = True
        return summary


def restarts() -> int:
    """How many times this job was restarted after a failure (torchelastic's count; the local launcher sets it too)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def evaluate_run(cfg: RunConfig, run_dir: str | Path) -> dict:
    """The metrics of a run's saved model, recomputed from checkpoint.pt in this process."""
    checkpoint = load_checkpoint(Path(run_dir))
    task = build_task(cfg.task, worker_rank=0, num_workers=cfg.workers, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = strategy_class(cfg.strategy.name).final_module(task.build_model, cfg.workers)
    model.load_state_dict(checkpoint["model"])
    return {"step": checkpoint["step"], **task.evaluate(model)}
