"""The one worker loop every launcher runs: build, train, evaluate, checkpoint, report.

Each process of a job calls :func:`run_worker`. Workers train; server ranks of a parameter-server
strategy serve inside ``strategy.setup`` and rejoin here for the end-of-run collection. The rank
the strategy names reporter (worker 0 by default) writes checkpoint.pt and summary.json; every
rank writes its own checkpoint state and appends its own lines to metrics.jsonl. In an
actor-learner job the ranks after the strategy's are actors (:mod:`agentsync.actors`): they act
until their learner says stop, and the strategy's ranks run here on a sub-group of their own.
"""
from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

from agentsync.actors import actors_of
from agentsync.actors.actor import run_actor
from agentsync.actors.feed import Feed, merge_reports
from agentsync.checkpoint import (from_bytes, load_checkpoint, rank_state, save_checkpoint, save_rank_state,
                                  source_rank, to_bytes)
from agentsync.comm import Comm
from agentsync.config import RunConfig
from agentsync.errors import ConfigError
from agentsync.membership import PeerLost
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
        if cfg.parallel.stages > 1:  # a P × W grid: each rank runs its stage (docs/pipeline.md)
            from agentsync.parallel.worker import PipelineWorker
            worker = PipelineWorker(cfg, Path(run_dir), comm, resume=resume, progress=progress)
            worker.run()
            return worker.is_reporter
        learners = comm.split(list(range(cfg.learner_ranks))) if cfg.actors.count else comm
        if learners is None:
            run_actor(cfg, comm)
            return False
        if strategy_class(cfg.strategy.name).regroups:
            learners.allow_regrouping()
        worker = Worker(cfg, Path(run_dir), learners, resume=resume, progress=progress, world=comm)
        worker.run()
        return worker.is_reporter
    finally:
        comm.close()


def build_parts(cfg: RunConfig, comm: Comm) -> tuple[Strategy, Task, torch.nn.Module, torch.optim.Optimizer]:
    """Strategy, task, model and optimizer, identically initialised on every rank from ``cfg.seed``."""
    strategy, task = build_strategy_and_task(cfg, comm)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(comm.device)
    optimizer = cfg.optimizer.build(model.parameters(), cfg.averaged_gradients())
    return strategy, task, model, optimizer


def build_strategy_and_task(cfg: RunConfig, comm: Comm) -> tuple[Strategy, Task]:
    """The strategy over ``comm`` and the task of the worker it makes this rank (worker 0's data on a server)."""
    strategy = build_strategy(cfg.strategy, comm, num_workers=cfg.workers)
    task = build_task(cfg.task, worker_rank=max(strategy.worker_rank, 0), num_workers=cfg.workers,
                      seed=cfg.seed, device=comm.device, total_steps=cfg.steps)
    return strategy, task


class Worker:
    """One rank's run. Kept as an object so each phase reads as a short method."""

    def __init__(self, cfg: RunConfig, run_dir: Path, comm: Comm, *, resume: bool,
                 progress: ProgressFactory | None, world: Comm | None = None) -> None:
        self.cfg, self.run_dir, self.comm = cfg, run_dir, comm
        self.rank = (world or comm).rank  # in the whole job: names this rank in logs and checkpoints
        self.t0 = time.time()
        self.strategy, self.task, self.model, self.optimizer = self._build_parts()
        self.feed = self._feed(world or comm)
        self.elapsed_before, self.samples = 0.0, 0
        self.checkpointed = 0
        """The step of the latest checkpoint written or resumed from."""
        self.timing = {"step_time_s": None, "train_samples_per_s": None}  # this session's training loop only
        if resume:
            self._restore(load_checkpoint(run_dir))
        self.log = MetricsLog(run_dir, self.rank, self.t0 - self.elapsed_before)
        self.progress = progress(cfg.steps, self.strategy.steps) if progress and self.leader else None
        self.strategy.max_steps = cfg.steps

    def _build_parts(self) -> tuple[Strategy, Task, torch.nn.Module, torch.optim.Optimizer]:
        return build_parts(self.cfg, self.comm)

    @property
    def leader(self) -> bool:
        """Evaluates during training and shows progress (after a regroup, the first survivor)."""
        return self._is_leader()

    def _is_leader(self) -> bool:
        return self.strategy.worker_rank == 0

    @property
    def is_reporter(self) -> bool:
        """True on the rank that writes checkpoint.pt and summary.json."""
        return self.strategy.is_reporter

    @property
    def regrouping(self) -> bool:
        """True between a regroup of the survivors and their agreement on a step: no collective but that."""
        return self.comm.membership is not None and self.comm.membership.pending

    def _survivable(self, fn, default=None):
        """``fn()``, or ``default`` when a peer is lost in it or the survivors have yet to rejoin."""
        if self.regrouping:
            return default
        try:
            return fn()
        except PeerLost:
            return default

    # -- phases -----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if not self.strategy.is_worker:  # a server comes back from serving to report here (else it leaves)
                self.strategy.leaves_after_serving = False
                self.strategy.checkpoint = self._server_checkpoint
            self.strategy.setup(self.model, self.optimizer, self.cfg.optimizer.update_rule())  # servers serve here
            if self.strategy.is_worker:
                if self.feed:
                    self.feed.start(self.model, self.strategy.steps)
                self._train()
                if self.feed:
                    self.feed.close()
            member = self._member_metrics()
            while True:
                try:
                    self._rejoin()
                    final = self.strategy.finalize()
                    return self._finish(final, member)
                except PeerLost:  # lost at the very end: the survivors regroup and finish without it
                    continue
        finally:
            self.log.close()

    def _member_metrics(self) -> dict | None:
        """This replica's own metrics, where replicas differ (the spread of the members in the summary)."""
        return self.task.evaluate(self.model) if self.strategy.is_worker and self.strategy.replicas_differ else None

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
        while self._rejoin() < cfg.steps:  # the strategy counts steps (survivors of a loss agree on one)
            step = strategy.steps
            loss, samples = self._forward_backward(step)
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
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.steps:
                self._survivable(lambda: self._checkpoint(done, self.model, midrun=True))
            if strategy.finished:
                break
        train_time, steps = time.time() - self.loop_start - paused, strategy.steps - start
        if steps > 0 and train_time > 0:
            self.timing = {"step_time_s": train_time / steps,
                           "train_samples_per_s": (self.samples - samples_before) / train_time}

    def _rejoin(self) -> int:
        """The step to go on from: the strategy's, agreed with the other survivors after a regroup."""
        while self.regrouping:
            try:
                self.strategy.rejoin()
            except PeerLost:  # another loss while agreeing: regrouped again, agree again
                continue
        return self.strategy.steps

    def _forward_backward(self, step: int) -> tuple[torch.Tensor, int]:
        """This step's loss and its gradient in ``p.grad``; the samples it used."""
        loss, samples = self.task.loss(self.model, step)
        loss = self.comm.inject_fault(step, loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, samples

    def _eval_model(self) -> torch.nn.Module | None:
        """The model the leader evaluates (None on other ranks); every worker calls it at evaluation points."""
        return self.model if self.leader else None

    def _evaluate(self, step: int) -> float:
        """The leader evaluates; returns the seconds this rank spent here, which its training clock leaves out.

        Where every step synchronizes the workers, all of them pause together (a barrier after the
        evaluation): otherwise the others would wait for the leader inside their next collective,
        and count the wait as training and communication time.
        """
        began = time.time()
        extra = self._survivable(self.strategy.measure, {})
        model = self._eval_model()
        if self.leader:
            metrics = self.task.evaluate(model)
            self.log.log("eval", step, **metrics, **extra, **self.comm.stats.as_dict())
            if self.progress:
                self.progress.update(step, **{self.task.metric: metrics[self.task.metric]})
        if not self.strategy.tolerates_worker_loss:
            with self.comm.uncounted():
                self._survivable(self.comm.barrier)
        return time.time() - began

    def _finish(self, final: torch.nn.Module, member: dict | None) -> None:
        """Checkpoint the final state; the reporter evaluates the result and writes the summary."""
        cfg = self.cfg
        payloads = self._checkpoint(cfg.steps, final, member=member)
        if payloads is None:
            return
        metrics = self.task.evaluate(self._final_model(final))
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

    def _server_checkpoint(self) -> None:
        """A parameter server's part of a mid-run checkpoint: every worker waits at the step it is due."""
        step = next(s for s in range(self.cfg.checkpoint_every, self.cfg.steps, self.cfg.checkpoint_every)
                    if s > self.checkpointed)
        self._checkpoint(step, self.model, midrun=True)

    def _checkpoint(self, step: int, model: torch.nn.Module, member: dict | None = None,
                    midrun: bool = False) -> list[dict] | None:
        """Every rank writes its state, then the reporter collects their statistics and writes checkpoint.pt.

        The collection is the barrier: a rank sends its statistics once its state is on disk, so the
        manifest the reporter writes names complete rank folders only.
        """
        gathered = self._write_and_collect(step, member, midrun)
        self.checkpointed = step
        if gathered is None:
            return None
        return self._save(step, model.state_dict(), gathered)

    def _write_and_collect(self, step: int, member: dict | None, midrun: bool) -> list[bytes] | None:
        """Write this rank's state for ``step``; every rank's small payload at the reporter (None elsewhere)."""
        save_rank_state(self.run_dir, step, self.rank, self._rank_state())
        return (self.strategy.snapshot if midrun else self.strategy.collect)(to_bytes(self._payload(member)))

    def _payload(self, member: dict | None) -> dict:
        """What this rank contributes to the manifest and the summary: small, its state is in its own folder."""
        return {"rank": self.rank, "is_worker": self.strategy.is_worker,
                "stats": self.strategy.stats, "samples": self.samples, "member": member,
                "memory": state_bytes(self.model, self.optimizer), "peak_rss_mb": peak_rss_mb(),
                "actors": self.feed.report() if self.feed else None, **self.timing}

    def _save(self, step: int, model_state: dict, gathered: list[bytes]) -> list[dict]:
        save_checkpoint(self.run_dir, step=step, elapsed_s=self._elapsed(), workers=self.cfg.workers,
                        model=model_state, ranks=gathered)
        peak = peak_rss_mb()  # the reporter's peak, now including gathering and writing the checkpoint
        return [{**p, "peak_rss_mb": peak, "checkpoint_rss_rise_mb": round(peak - p["peak_rss_mb"], 1)}
                if p["rank"] == self.rank else p for p in map(from_bytes, gathered)]

    def _restore(self, checkpoint: dict) -> None:
        """Load the state of this rank's source rank (see :func:`~agentsync.checkpoint.source_rank`), only that."""
        ranks = {p["rank"]: p for p in map(from_bytes, checkpoint["ranks"])}
        saved_workers = int(checkpoint.get("workers", self.cfg.workers))
        source = source_rank(self.rank, workers=self.cfg.workers, saved_workers=saved_workers,
                             saved_ranks=sorted(ranks))
        if source is None:
            raise ConfigError(f"the checkpoint has no state for rank {self.rank} (lost during the run); "
                              "it cannot be resumed exactly")
        mine = ranks[source]
        state = rank_state(self.run_dir, checkpoint, mine)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if saved_workers != self.cfg.workers:
            mine, state = self._resharded(mine, state, checkpoint, [p for r, p in ranks.items() if r < saved_workers])
        self.strategy.load_state_dict(state["strategy"])
        self.task.load_state_dict(state["task"])
        torch.set_rng_state(state["rng"])
        self.comm.stats.load(mine["stats"])
        self.elapsed_before, self.samples = float(checkpoint["elapsed_s"]), int(mine["samples"])
        self.checkpointed = int(checkpoint["step"])

    def _resharded(self, saved: dict, state: dict, checkpoint: dict, workers: list[dict]) -> tuple[dict, dict]:
        """A saved rank's payload and state taken up on another worker count (see
        :func:`~agentsync.checkpoint.source_rank`).

        Where replicas differ, every new replica starts from the saved workers' mean model, so no old
        replica counts twice; error-feedback residuals belong to the old partition and start empty;
        the workers' cumulative counters (samples, bytes) are split evenly, so totals carry on.
        """
        if not self.strategy.is_worker:
            return saved, state
        if self.strategy.replicas_differ and len(workers) > 1:
            self._load_mean_model(checkpoint, workers)
        share = lambda values: sum(values) / self.cfg.workers
        stats = {k: type(v)(share(w["stats"][k] for w in workers)) for k, v in saved["stats"].items()
                 if k in self.comm.stats.as_dict()}
        strategy = {k: v for k, v in state["strategy"].items() if k != "compression"}
        return ({**saved, "stats": stats, "samples": int(share(w["samples"] for w in workers))},
                {**state, "strategy": strategy})

    @torch.no_grad()
    def _load_mean_model(self, checkpoint: dict, workers: list[dict]) -> None:
        """The saved workers' mean model, read one state at a time (never W models at once)."""
        sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in self.model.state_dict().items()
                if v.is_floating_point()}
        for payload in workers:
            model = rank_state(self.run_dir, checkpoint, payload)["model"]
            for key, total in sums.items():
                total += model[key]
        for key, value in self.model.state_dict().items():
            if key in sums:
                value.copy_(sums[key] / len(workers))

    def _final_model(self, final: torch.nn.Module) -> torch.nn.Module:
        """The model the summary's metrics are of (on the reporter, after the final checkpoint)."""
        return final

    def _report_models(self) -> dict[str, torch.nn.Module]:
        return self.strategy.report_models()

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
        workers = [p for p in payloads if p["is_worker"]]
        if workers:  # the largest worker: parameters and optimizer state one process must hold
            summary["memory_per_rank"] = {k: max(p["memory"][k] for p in workers) for k in workers[0]["memory"]}
        summary.update(self.strategy.summary())
        extra = {name: self.task.evaluate(model) for name, model in self._report_models().items()}
        if extra:
            summary["models"] = extra
        feeds = [p["actors"] for p in payloads if p.get("actors")]
        if feeds:
            summary["actors"] = merge_reports(feeds, summary["throughput"].get("train_samples_per_s"))
        if self.comm.membership and self.comm.membership.lost:
            summary["lost_ranks"] = self.comm.membership.lost
        summary["peak_rss_mb_by_rank"] = {str(p["rank"]): p["peak_rss_mb"] for p in payloads}  # at the final checkpoint
        summary["checkpoint_rss_rise_mb"] = next(p["checkpoint_rss_rise_mb"] for p in payloads if p["rank"] == self.rank)
        summary["restarts"] = restarts()
        summary["ok"] = True
        return summary


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Bytes of the parameters and of the optimizer state this rank holds (what a pipeline stage divides)."""
    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()
    params = sum(size(p) for p in model.parameters())
    state = sum(size(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return {"param_bytes": params, "optimizer_bytes": state}


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
