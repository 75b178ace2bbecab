"""``easgd``: elastic averaging SGD, asynchronous form (Zhang, Choromanska & LeCun, 2015).

Workers take local optimizer steps (the step contract's update, on each worker); every ``tau``
steps a worker sends θ_i and the server, which holds the center θ̃, computes d = α (θ_i − θ̃),
moves the center θ̃ ← θ̃ + d and answers d, which the worker subtracts: θ_i ← θ_i − d. The
elastic force pulls workers toward the center and the center toward the workers; the final
model is the center (with the workers' mean buffers).

Under ``comm.compression`` the worker sends the change of θ_i compressed: worker and server keep a
public copy θ̂_i (CHOCO's scheme, :meth:`~agentsync.sync.compressed.Channel.encode_change`), the push
moves it by the decoded change, the server computes d = α (θ̂_i − θ̃), and both sides subtract d from
θ̂_i as the worker does from θ_i. What the codec drops stays in θ_i − θ̂_i and goes out later.
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.options import check
from agentsync.sync.base import check_unit_interval
from agentsync.sync.ps import ParameterServer, ServerConfig
from agentsync.sync.ps_protocol import Message, flat, unflat_
from agentsync.sync.ps_server import ServerRole
from agentsync.sync.ps_worker import WorkerRole


@dataclasses.dataclass(kw_only=True)
class EASGDConfig(ServerConfig):
    name: str = "easgd"
    alpha: float = 0.25
    """Moving rate α in [0, 1]: the share of the difference between worker and center each exchange removes."""
    tau: int = 4
    """Local steps between exchanges with the center."""

    def validate(self, section: str) -> None:
        check_unit_interval(self.alpha, f"{section}.alpha")
        check(self.tau >= 1, f"{section}.tau", ">= 1", self.tau)


class ElasticWorker(WorkerRole):
    """Pushes θ_i, subtracts the elastic difference it gets back."""

    def payload(self, server: int) -> torch.Tensor:
        return flat(self.shard(server), self.comm.device)

    def encode(self, server: int, payload: torch.Tensor) -> torch.Tensor:
        return self.channels[server].encode_change(f"theta{server}", payload)

    @torch.no_grad()
    def take_(self, server: int, reply: torch.Tensor) -> None:
        unflat_(self.shard(server), flat(self.shard(server), self.comm.device) - reply)
        if self.channels is not None:
            self.channels[server].compression.copies[f"theta{server}"].sub_(reply)


class CenterServer(ServerRole):
    """Holds the center θ̃; a push moves it toward θ_i and answers the same move."""

    def __init__(self, *args, alpha: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha

    @torch.no_grad()
    def on_push(self, msg: Message) -> None:
        center = self.shard_vector()
        if not torch.isfinite(msg.payload).all():
            self.rejected += 1
            self.answer(msg.worker, torch.zeros_like(center))
            return
        theta = msg.payload
        if self.channel is not None:  # the payload moves the worker's public copy θ̂_i
            theta = self.channel.compression.copy(f"theta{msg.worker}", center).add_(msg.payload)
        move = self.alpha * (theta - center)
        unflat_(self.shard, center + move)
        if self.channel is not None:
            theta.sub_(move)
        self.version += 1
        self.answer(msg.worker, move)

    def summary(self) -> dict:
        out = super().summary()
        del out["nonfinite_skipped"]  # the workers skip their own steps; the runtime reports theirs
        return {**out, "nonfinite_rejected": self.rejected}


class EASGD(ParameterServer):
    """Local steps, and an elastic pull between each worker and a center variable on the servers."""

    Config = EASGDConfig
    Worker = ElasticWorker
    Server = CenterServer
    supports_compression = True
    sends_gradients = False  # it pushes parameter changes
    refused_options = {**ParameterServer.refused_options,
                       "decay": "its error feedback is the copy of θ_i that worker and server both keep; there is "
                                "no residual to decay"}
    description = "elastic averaging: local steps, every tau steps an elastic exchange with a center on the servers"

    def _step(self) -> None:
        self.update()
        if (self.steps + 1) % self.config.tau == 0:
            self.worker.push_()

    def server_options(self) -> dict:
        return {"alpha": self.config.alpha}
