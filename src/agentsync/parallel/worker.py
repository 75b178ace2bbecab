"""The worker loop for a P × W grid: :class:`~agentsync.runtime.Worker` with its model cut into stages.

Part of the runtime layer (it is the runtime's loop with a few phases replaced). Every rank
builds the whole model from the seed, keeps its stage's units (:mod:`agentsync.parallel.split`)
and runs the chosen strategy over its stage's data-parallel group; the schedule runs over its
replica's pipeline group (:mod:`agentsync.parallel.layout` names both). What changes from P = 1:

* a step is the schedule's forward and backward over M microbatches, then the strategy's step
  (under ``allreduce`` the gradient is averaged once, after the last microbatch, as DDP's
  ``no_sync`` accumulation would);
* evaluation: replica 0's stages send their parts to stage 0, whose leader evaluates the whole model;
* checkpoints: every rank writes its own state (as for P = 1); each stage's reporter collects its
  stage's statistics, then the stage reporters send theirs with their stage's part of the model to
  the job's reporter, which writes checkpoint.pt with the whole model under its own keys
  (``evaluate`` unchanged): one copy of the model, never W.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from agentsync.checkpoint import from_bytes, to_bytes
from agentsync.comm import Comm
from agentsync.config import RunConfig
from agentsync.parallel.split import (balanced_split, param_count, stage_examples, stage_keys, stage_module,
                                      to_whole_keys)
from agentsync.parallel.stage import StageDriver, split_world
from agentsync.runtime import ProgressFactory, Worker, build_strategy_and_task
from agentsync.sync import strategy_class


class PipelineWorker(Worker):
    """One rank of a pipelined job: a stage of one replica, or one of a stage's servers."""

    def __init__(self, cfg: RunConfig, run_dir: Path, world: Comm, *, resume: bool,
                 progress: ProgressFactory | None) -> None:
        layout = self.layout = cfg.layout
        self.stage = layout.stage_of(world.rank)
        stage_comm, self.pipe, self.reporters = split_world(world, layout)
        self.whole_state: dict | None = None  # the assembled final model, on the job's reporter
        self.keys: dict[str, str] = {}
        self.driver: StageDriver | None = None
        super().__init__(cfg, run_dir, stage_comm, resume=resume, progress=progress, world=world)

    # -- parts ---------------------------------------------------------------------------------------
    def _build_parts(self):
        cfg, comm = self.cfg, self.comm
        strategy, task = build_strategy_and_task(cfg, comm)
        torch.manual_seed(cfg.seed)
        whole = task.build_model().to(comm.device)
        units = task.pipeline_units(whole)
        module = stage_module(units, self.stage, cfg.parallel.stages)
        self.keys = stage_keys(whole, module)
        if strategy.is_worker:
            self.driver = self._driver(task, units, module)
        optimizer = cfg.optimizer.build(module.parameters(), cfg.averaged_gradients())
        return strategy, task, module, optimizer

    def _driver(self, task, units: list[nn.Module], module: nn.Module) -> StageDriver:
        """The stage's schedule, given the shapes one microbatch has on the way through this stage."""
        p = self.cfg.parallel
        inputs, _ = task.pipeline_batch(0)
        points = balanced_split([param_count(u) for u in units], p.stages)
        x, y = stage_examples(units, points, self.stage, inputs[: len(inputs) // p.microbatches])
        return StageDriver(module, self.pipe, p.schedule, p.microbatches, task.pipeline_loss, x, y)

    def _is_leader(self) -> bool:
        return self.stage == 0 and self.strategy.worker_rank == 0

    @property
    def is_reporter(self) -> bool:
        return self.rank == self.layout.reporter_ranks()[0]

    # -- a step ----------------------------------------------------------------------------------------
    def _forward_backward(self, step: int) -> tuple[torch.Tensor, int]:
        inputs, target = self.task.pipeline_batch(step)
        self.comm.inject_fault(step, torch.zeros(()))  # kill and hang (nan is refused for P > 1 by the config)
        self.optimizer.zero_grad(set_to_none=True)
        with self.strategy.no_sync():
            loss = self.driver.step(inputs, target)
        loss = torch.zeros((), device=self.comm.device) if loss is None else loss
        with self.pipe.uncounted():  # every stage logs the batch's loss, which only the last one computed
            self.pipe.broadcast_(loss, src=self.pipe.world_size - 1)
        return loss, len(inputs) if self.stage == 0 else 0

    # -- evaluation, checkpoint, summary ---------------------------------------------------------------
    def _whole_state(self, module: nn.Module) -> dict:
        """``module``'s tensors (this stage's, or e.g. an ensemble of stage copies) under whole-model keys."""
        return to_whole_keys(module.state_dict(), self.keys)

    def _assemble(self, state: dict, build) -> nn.Module:
        """A model from ``build()`` holding ``state``; the RNG is left as training left it."""
        with torch.random.fork_rng(devices=[]):
            model = build()
        model.load_state_dict(state)
        return model.to(self.comm.device)

    def _eval_model(self) -> nn.Module | None:
        """Replica 0's stages send their parts to stage 0, where the leader puts the whole model together."""
        if self.strategy.worker_rank != 0:
            return None
        with self.pipe.uncounted():
            parts = self.pipe.gather_bytes(to_bytes(self._whole_state(self.model)), dst=0)
        if parts is None:
            return None
        return self._assemble({k: v for p in parts for k, v in from_bytes(p).items()}, self.task.build_model)

    def _member_metrics(self) -> dict | None:
        return None  # a stage alone has no metrics; the members' spread is not reported for P > 1

    def _checkpoint(self, step: int, model: nn.Module, member: dict | None = None,
                    midrun: bool = False) -> list[dict] | None:
        """Every rank writes its state; each stage's reporter collects its stage, the job's reporter the stages'."""
        gathered = self._write_and_collect(step, member, midrun)
        self.checkpointed = step
        if gathered is None:
            return None
        stage = {"ranks": gathered, "model": self._whole_state(model)}
        with self.reporters.uncounted():
            stages = self.reporters.gather_bytes(to_bytes(stage), dst=0)
        if stages is None:
            return None
        stages = [from_bytes(s) for s in stages]
        self.whole_state = {k: v for s in stages for k, v in s["model"].items()}
        return self._save(step, self.whole_state, [r for s in stages for r in s["ranks"]])

    def _payload(self, member: dict | None) -> dict:
        return {**super()._payload(member), "stage": self.stage,
                "pipeline": self.driver.stats if self.driver else None,
                "idle_fraction": self.driver.idle_fraction if self.driver else None}

    def _restore(self, checkpoint: dict) -> None:
        super()._restore(checkpoint)
        mine = next(p for p in map(from_bytes, checkpoint["ranks"]) if p["rank"] == self.rank)
        if self.driver and mine["pipeline"]:
            self.driver.load_stats(mine["pipeline"])

    def _final_model(self, final: nn.Module) -> nn.Module:
        """The whole final model (an ensemble of whole members under ``ensemble``), from the stages' parts."""
        final_module = strategy_class(self.cfg.strategy.name).final_module
        return self._assemble(self.whole_state, lambda: final_module(self.task.build_model, self.cfg.workers))

    def _report_models(self) -> dict[str, nn.Module]:
        return {}  # models besides the final one are stage-shaped (an ensemble's parameter average)

    def _summary(self, metrics: dict, payloads: list[dict]) -> dict:
        summary = super()._summary(metrics, payloads)
        pipes = [p["pipeline"] for p in payloads if p.get("pipeline")]
        summary["stages"] = self.cfg.parallel.stages
        summary["schedule"] = self.cfg.parallel.schedule
        summary["microbatches"] = self.cfg.parallel.microbatches
        summary["pipeline_comm"] = {k: sum(p[k] for p in pipes) for k in ("bytes_sent", "bytes_received", "messages")}
        idle = [p["idle_fraction"] for p in payloads if p.get("idle_fraction") is not None]
        if idle:  # the measured bubble, mean over the stages' ranks; GPipe/1F1B's is (P − 1) / (M + P − 1)
            p = self.cfg.parallel
            summary["bubble"] = {"measured": sum(idle) / len(idle),
                                 "schedule": (p.stages - 1) / (p.microbatches + p.stages - 1)}
        summary["memory_by_stage"] = {
            str(s): {k: max(p["memory"][k] for p in payloads if p["stage"] == s and p["is_worker"])
                     for k in ("param_bytes", "optimizer_bytes")}
            for s in range(self.cfg.parallel.stages)}
        return summary
