"""The parameter-server strategies' common shape: ``ps-sync``, ``ps-async``, ``ssp`` and ``easgd``.

Ranks 0..W−1 are workers, ranks W..W+S−1 servers. Parameters are sharded over the servers as
whole tensors with balanced bytes; each server runs the optimizer on its shard, so optimizer
state lives there. Two roles over one wire protocol (:mod:`~agentsync.sync.ps_protocol`): a
:class:`~agentsync.sync.ps_worker.WorkerRole` on each worker, a
:class:`~agentsync.sync.ps_server.ServerRole` on each server; a variant is a pair of small
role subclasses named by :attr:`ParameterServer.Worker` and :attr:`ParameterServer.Server`.

Server ranks never run the caller's code: ``setup()`` serves until every worker is done and
the final model is delivered, then leaves the process (exit code 0, after flushing:
:func:`~agentsync.comm.leave_process`). A bring-your-own loop therefore runs unchanged under
``allreduce`` and ``ps-*``: only workers come out of ``setup()``. The CLI runtime is the one
caller that owns the server process: it clears :attr:`ParameterServer.leaves_after_serving`, so
``setup()`` returns and the runtime's end-of-run phase runs on the servers — server 0, which holds
the final model with the workers' mean buffers, collects every rank's statistics, writes
``checkpoint.pt`` and ``summary.json`` (so it survives the loss of any worker) — and the
launcher ends the process as it ends every rank (under Ray a process must not exit mid-task).

A worker that dies, or that nobody hears from for ``comm.timeout_s`` once all others are done, is
dropped and named in the summary (``lost_ranks``).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from agentsync.comm import leave_process
from agentsync.compress import is_none
from agentsync.sync.base import Strategy, StrategyConfig, broadcast_model_
from agentsync.sync.ps_protocol import Kind, Layout, float_buffers, pack
from agentsync.sync.ps_pull import check_pull_codec
from agentsync.sync.ps_server import ServerRole
from agentsync.sync.ps_worker import WorkerRole
from agentsync.update import UpdateRule, local_norm


@dataclasses.dataclass(kw_only=True)
class ServerConfig(StrategyConfig):
    """Options every parameter-server strategy has (the base of each variant's)."""

    def pull_codec(self) -> str:
        """The codec of the servers' answers; ``none``: the dense shard (variants that answer parameters
        let the user choose, :class:`PullConfig`)."""
        return "none"


@dataclasses.dataclass(kw_only=True)
class PullConfig(ServerConfig):
    """The options of the variants whose servers answer a push with parameters: ps-sync, ps-async, ssp."""

    pull_compression: str = "none"
    """Codec of the servers' answers (the pull), as comm.compression's NAME[:KEY=VALUE...]: each answer is the shard's
    change since the worker's copy, with error feedback on both sides (servers keep a copy per worker); none: dense."""

    def validate(self, section: str) -> None:
        check_pull_codec(self.pull_compression, f"{section}.pull_compression")

    def pull_codec(self) -> str:
        return self.pull_compression

    def fixed_workers(self) -> str:
        if is_none(self.pull_compression):
            return ""
        return "with pull_compression each server keeps a copy of its shard per worker, which is that worker's model"


class ParameterServer(Strategy):
    """The strategy object of every parameter-server variant: builds this rank's role in ``setup``."""

    Config = ServerConfig
    Worker: ClassVar[type[WorkerRole]] = WorkerRole
    Server: ClassVar[type[ServerRole]] = ServerRole
    tolerates_worker_loss = True
    refused_codecs = {"randk": "its indices come from a generator the ranks advance in step, and a server "
                               "hears the workers out of step"}
    sends_gradients = True
    refused_options = {"warmup": "a push's wire size is fixed by the channel's template, which sender and server "
                                 "share, so the kept ratio cannot vary from step to step"}

    def __init__(self, config: StrategyConfig, comm, *, num_workers: int | None = None) -> None:
        super().__init__(config, comm, num_workers=num_workers)
        self.rule = UpdateRule()
        self.layout: Layout | None = None
        self.worker: WorkerRole | None = None
        self.server: ServerRole | None = None
        self.leaves_after_serving = True
        """A server leaves the process at the end of ``setup()``; the CLI runtime clears it to report first."""
        self.checkpoint = lambda: None
        """The runtime's mid-run checkpoint, which a server calls when a snapshot is due (see
        :mod:`~agentsync.sync.ps_server`); a bring-your-own loop has none."""

    @classmethod
    def world_size(cls, workers: int, servers: int) -> int:
        return workers + servers

    @property
    def num_servers(self) -> int:
        return self.comm.world_size - self.num_workers

    @property
    def is_worker(self) -> bool:
        return self.comm.rank < self.num_workers

    @property
    def worker_rank(self) -> int:
        return self.comm.rank if self.is_worker else -1

    @property
    def is_reporter(self) -> bool:
        return self.comm.rank == self.num_workers

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, rule: UpdateRule = UpdateRule()) -> None:
        """Workers return ready to train; servers serve here and never return (see the module docstring)."""
        self.rule = rule
        super().setup(model, optimizer, rule)

    def _setup(self) -> None:
        if self._restored is None:  # a resumed run: every rank, server or worker, holds its own state
            broadcast_model_(self.comm, self.model)
        self.layout = Layout.build(self.params, self.num_workers, self.num_servers)
        servers_comm = self.comm.split(list(range(self.num_workers, self.comm.world_size)))
        saved = self._restored["role"] if self._restored is not None else None
        if self.is_worker:
            self.worker = self.build_worker(saved)
            return
        self.server = self.build_server(servers_comm, saved)
        self.server.checkpoint = self.checkpoint
        self.server.serve()
        if self.leaves_after_serving:
            leave_process(0)

    def build_worker(self, state: dict | None) -> WorkerRole:
        return self.Worker(self.comm, self.layout, self.params, float_buffers(self.model), state,
                           compression=self.compression, pull=self.config.pull_codec(), local_clip=self.local_clip,
                           **self.worker_options())

    def worker_options(self) -> dict:
        """The variant's own arguments to its worker role."""
        return {}

    def build_server(self, servers_comm, state: dict | None) -> ServerRole:
        index = self.comm.rank - self.num_workers
        shard = [self.params[i] for i in self.layout.shards[index]]
        optimizer = type(self.optimizer)(shard, **self.optimizer.defaults)
        update = self.server_rule().build(optimizer, self.server_updates(), total_norm=self.server_norm(servers_comm))
        return self.Server(self.comm, servers_comm, self.layout, index, self.params, float_buffers(self.model),
                           optimizer, update, self.comm.config.timeout_s, state, compression=self.compression,
                           pull=self.config.pull_codec(), **self.server_options())

    def server_options(self) -> dict:
        """The variant's own arguments to its server role."""
        return {}

    def server_rule(self) -> UpdateRule:
        """The rule the servers' updates follow (ps-async clips on the workers instead)."""
        return self.rule

    def server_updates(self) -> int | None:
        """Updates a server makes over the run: the learning-rate schedule's horizon."""
        return self.max_steps

    def server_norm(self, servers_comm):
        """The global norm of a gradient whose shards are spread over the servers."""
        return local_norm

    # -- worker side -----------------------------------------------------------------------------
    def _step(self) -> None:
        self.worker.push_()

    def finalize(self) -> nn.Module:
        """Workers pull the final model (the servers' parameters, the workers' mean buffers); a server
        (under the CLI runtime) already holds it."""
        if self.worker is not None:
            self.worker.pull_final_()
        return self.model

    def collect(self, payload: bytes) -> list[bytes] | None:
        """Workers send their state to server 0 over the protocol; servers gather among themselves."""
        if self.server is not None:
            return self.server.collect(payload)
        with self.comm.uncounted():
            header = [int(Kind.COLLECT), self.comm.rank, self.worker.version, len(payload)]
            self.comm.send(pack(header, torch.zeros(0, device=self.comm.device)), self.num_workers)
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.zeros(0, dtype=torch.uint8)
            self.comm.send(data.to(self.comm.device), self.num_workers)
        return None

    def snapshot(self, payload: bytes) -> list[bytes] | None:
        """A mid-run checkpoint, a consistent cut: workers wait at the servers; server 0 gets the states."""
        if self.server is not None:
            return self.server.collect(payload)
        self.worker.snapshot(payload)
        return None

    # -- reporting and state ---------------------------------------------------------------------
    def summary(self) -> dict:
        return self.server.summary()

    @property
    def stats(self) -> dict:
        extra = {"clock_gap": self.worker.clock_gap} if self.worker is not None else {}
        return {**super().stats, **extra}

    def state_dict(self) -> dict:
        role = self.worker or self.server
        return {**super().state_dict(), "role": role.state_dict()}
