"""The object every synchronization strategy is: ``setup``, ``step``, ``finalize``, ``stats``."""
from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import ClassVar

import torch
from torch import nn

from agentsync.comm import Comm
from agentsync.compress import DGC_OPTIONS, Compression, dgc_options, is_none, local_clip_norm, option_keys, parse_codec
from agentsync.errors import ConfigError
from agentsync.membership import PeerLost
from agentsync.optim import OptimizerConfig
from agentsync.options import Options, check
from agentsync.update import Update, UpdateRule


@dataclasses.dataclass(kw_only=True)
class StrategyConfig(Options):
    """Options every strategy has; each strategy subclasses it with its own."""

    name: str = "allreduce"
    """Strategy name (see `agentsync list`)."""

    def fixed_workers(self) -> str:
        """Why a run with these options cannot resume on another worker count ("" where it can); the
        strategy class's :attr:`Strategy.fixed_workers` holds what no option changes."""
        return ""

    def averaged_gradients(self, workers: int) -> int:
        """How many workers' gradients one optimizer step averages (what ``optimizer.lr_scaling``
        scales by): 1 where every step uses one worker's own gradient."""
        return 1


class Strategy(abc.ABC):
    """Keeps the replicas of one model in sync across worker processes.

    A strategy replaces ``optimizer.step()``: the training loop computes gradients, then calls
    :meth:`step`, which communicates and updates the parameters. Subclasses implement
    :meth:`_step` and, where replicas can differ, :meth:`finalize`. Every update goes through
    :attr:`update` (the step contract's stages 3 and 4: skip a non-finite gradient, clip, schedule
    the learning rate, step); a strategy only decides *which* gradient it sees and when.

    Args:
        config: this strategy's options.
        comm: the process group of all ranks of the job (workers, and servers where there are any).
        num_workers: how many of those ranks train; the rest serve.

    Example::

        sync = make_strategy("allreduce")
        sync.setup(model, optimizer)
        for x, y in batches:
            optimizer.zero_grad(); loss_fn(model(x), y).backward()
            sync.step()
        model = sync.finalize()
    """

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    description: ClassVar[str] = ""
    replicas_differ: ClassVar[bool] = False
    """True when workers' parameters can differ, so a consensus distance and member spread apply."""
    tolerates_worker_loss: ClassVar[bool] = False
    """True when the job goes on without a dead worker (asynchronous strategies)."""
    regroups: ClassVar[bool] = False
    """True when the survivors of a lost worker re-form the group and go on (decentralized strategies,
    under the local launcher; see :mod:`agentsync.membership`)."""
    preferred_optimizer: ClassVar[OptimizerConfig | None] = None
    """Optimizer settings this strategy is meant to run with, over the task's, under the user's."""
    fixed_workers: ClassVar[str] = ""
    """Why a run cannot resume on another worker count ("" where it can: the state is resharded)."""
    supports_compression: ClassVar[bool] = False
    """True where ``comm.compression`` applies: the strategy sends its payloads through a codec."""
    refused_codecs: ClassVar[dict[str, str]] = {}
    """Codecs this strategy refuses although it compresses, each with the reason (one line)."""
    takes_low_rank: ClassVar[bool] = False
    """True where the payload is laid out by parameter so a low-rank codec (powersgd) sees matrices."""
    sends_gradients: ClassVar[bool] = False
    """True where the compressed payload is a gradient, so DGC's top-k options (momentum correction,
    local clipping, warm-up) apply; parameters and their changes refuse them."""
    sums_compressed: ClassVar[bool] = False
    """True where compressed payloads are summed over the group (:func:`~agentsync.sync.compressed.all_sum_async`),
    so ``comm.compressed_sum`` applies."""
    refused_options: ClassVar[dict[str, str]] = {}
    """Codec options (e.g. ``warmup``) this strategy refuses although it takes the codec, with the reason."""
    max_steps: int | None = None
    """The run's step budget when the runtime drives the loop (lets global-step strategies stop early)."""

    def __init__(self, config: StrategyConfig, comm: Comm, *, num_workers: int | None = None) -> None:
        self.config, self.comm = config, comm
        self.num_workers = comm.world_size if num_workers is None else num_workers
        self.steps = 0
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.update: Update | None = None
        self._restored: dict | None = None  # state from a checkpoint, applied by setup once the parts exist
        check_compressed_sum(type(self), config.name, comm.config.compression, comm.config.compressed_sum)
        self.compression = self._compression(comm.config.compression)
        self.local_clip = 0.0 if self.compression is None else local_clip_norm(
            self.compression.codec, self.num_workers, self.payload_scale)
        """DGC's local clipping threshold on a worker's whole gradient payload, before it is encoded (0: off)."""

    def _compression(self, spec: str) -> Compression | None:
        """The codec stage, or None for ``none`` (today's uncompressed path, unchanged)."""
        if is_none(spec):
            return None
        check_compression(type(self), self.config.name, spec)
        return Compression(parse_codec(spec, rank=self.comm.rank), self.comm.stats)

    @property
    def payload_scale(self) -> float:
        """What a worker's gradient is multiplied by in the payload it compresses (1: sent as it is)."""
        return 1.0

    @classmethod
    def check_model(cls, config: StrategyConfig, model: nn.Module) -> None:
        """Raise a one-line :class:`ConfigError` where ``config`` cannot apply to ``model`` (checked
        before the run starts, on worker 0's model; e.g. more DiLoCo fragments than tensors)."""

    @classmethod
    def world_size(cls, workers: int, servers: int) -> int:
        """Processes the job needs for ``workers`` training ranks."""
        return workers

    @classmethod
    def final_module(cls, build_model, num_workers: int) -> nn.Module:
        """An empty module shaped like what :meth:`finalize` returns, to load a checkpoint's model into."""
        return build_model()

    @property
    def is_worker(self) -> bool:
        """False on ranks that only serve (parameter servers)."""
        return True

    @property
    def worker_rank(self) -> int:
        """This worker's index among the workers: its data shard and seed offset."""
        return self.comm.rank

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, rule: UpdateRule = UpdateRule()) -> None:
        """Take charge of ``model``'s parameters; every replica starts from worker 0's values.

        ``rule`` says how a gradient becomes an update (clipping, learning-rate schedule); a
        bring-your-own loop may leave it out and clip between ``backward()`` and :meth:`step`.
        """
        check_momentum_correction(self.comm.config.compression, *optimizer_momentum(optimizer))
        self.model, self.optimizer = model, optimizer
        self.update = rule.build(optimizer, self.max_steps)
        if self._restored is not None:
            self.update.load_state_dict(self._restored["update"])
        self._setup()

    def _setup(self) -> None:
        if self.steps == 0:  # a resumed run already holds each rank's own parameters
            broadcast_model_(self.comm, self.model)

    def step(self) -> None:
        """Synchronise and update: call it where ``optimizer.step()`` would be."""
        self.comm.straggle()
        try:
            self._step()
        except PeerLost:  # the synchronization in flight is dropped; the local update stands
            pass
        self.steps += 1

    def rejoin(self) -> None:
        """After the survivors of a lost peer regrouped: every one takes the furthest step any has
        reached, so from here all make the same synchronization calls; then re-derive what depends
        on the group (a topology). Raises :class:`PeerLost` again if another peer is lost meanwhile."""
        furthest = torch.tensor([self.steps], dtype=torch.int64, device=self.comm.device)
        with self.comm.uncounted():
            self.comm.all_reduce_(furthest, op="max")
        self.steps = int(furthest)
        self.comm.membership.rejoined(self.steps)
        self._regrouped()

    def _regrouped(self) -> None:
        """Strategy state that depends on the group's size or ranks, re-derived after regrouping."""

    @abc.abstractmethod
    def _step(self) -> None:
        ...

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Backward passes inside accumulate gradients without communicating (DDP's ``no_sync``);
        the next :meth:`step` synchronises what they accumulated. A pipeline schedule runs one
        backward per microbatch inside it. Only strategies that act during backward need it."""
        return contextlib.nullcontext()

    def finalize(self) -> nn.Module:
        """The trained model; where replicas differ, their consensus (parameter average)."""
        return self.model

    @property
    def finished(self) -> bool:
        """True when this worker should stop before its own step budget (a backup worker that is behind)."""
        return False

    @property
    def is_reporter(self) -> bool:
        """The rank that writes summary and checkpoint (worker 0 unless a strategy says otherwise)."""
        return self.comm.rank == 0

    def collect(self, payload: bytes) -> list[bytes] | None:
        """Every rank's ``payload`` at the reporter, None elsewhere; collective over all ranks, uncounted.

        Used for checkpoints and end-of-run statistics. Strategies whose ranks may be lost mid-run
        override it to gather from the survivors only.
        """
        with self.comm.uncounted():
            return self.comm.gather_bytes(payload, dst=0)

    def snapshot(self, payload: bytes) -> list[bytes] | None:
        """:meth:`collect` for a mid-run checkpoint (parameter servers take a consistent cut instead)."""
        return self.collect(payload)

    def measure(self) -> dict:
        """Measurements every worker takes together at evaluation points (e.g. consensus distance)."""
        return {}

    def summary(self) -> dict:
        """Strategy-specific fields for summary.json (staleness histogram, dropped gradients, ...)."""
        return {}

    def report_models(self) -> dict[str, nn.Module]:
        """Models besides the final one whose metrics the summary reports (after :meth:`finalize`)."""
        return {}

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def stats(self) -> dict:
        """Bytes, messages and seconds this rank spent communicating, plus strategy extras."""
        skipped = self.update.skipped if self.update is not None else 0
        return {**self.comm.stats.as_dict(), "steps": self.steps, "nonfinite_skipped": skipped}

    def state_dict(self) -> dict:
        """Strategy state a checkpoint must keep besides model and optimizer (e.g. an outer optimizer)."""
        state = {"steps": self.steps, "update": self.update.state_dict()}
        if self.compression is not None:  # residuals and the codec's generator: resume is exact
            state["compression"] = self.compression.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Called before :meth:`setup` on a resumed run; state that needs the model waits for setup."""
        self.steps = int(state["steps"])
        if self.compression is not None and "compression" in state:
            self.compression.load_state_dict(state["compression"])
        self._restored = state


def check_compression(cls: type[Strategy], strategy: str, spec: str) -> None:
    """Raise a one-line :class:`ConfigError` where strategy ``cls`` cannot send through codec ``spec``."""
    if is_none(spec):
        return
    if not cls.supports_compression:
        raise ConfigError(compression_refused(strategy, spec))
    codec = spec.strip().split(":")[0]
    if codec == "powersgd" and not cls.takes_low_rank:
        raise ConfigError(f"comm.compression={spec} is not supported by strategy {strategy} (powersgd needs "
                          "gradients laid out as parameter matrices); strategies that support powersgd: allreduce")
    if codec in cls.refused_codecs:
        from agentsync.sync import STRATEGIES  # the registry imports this module
        able = ", ".join(name for name, other in STRATEGIES.items()
                         if other.supports_compression and codec not in other.refused_codecs)
        raise ConfigError(f"comm.compression={spec} is not supported by strategy {strategy} "
                          f"({cls.refused_codecs[codec]}); strategies that support {codec}: {able}")
    check_codec_options(cls, strategy, spec)


def check_codec_options(cls: type[Strategy], strategy: str, spec: str) -> None:
    """Codec options the strategy's transport cannot carry out are refused, never ignored: DGC's need a
    gradient transport (:attr:`Strategy.sends_gradients`); any may be in :attr:`Strategy.refused_options`."""
    from agentsync.sync import STRATEGIES  # the registry imports this module

    def takes(other: type[Strategy], option: str) -> bool:
        return (other.supports_compression and option not in other.refused_options
                and (option not in DGC_OPTIONS or other.sends_gradients))

    for option in option_keys(spec):
        if takes(cls, option):
            continue
        if option in DGC_OPTIONS and not cls.sends_gradients:
            why = "it sends parameters or their changes, not gradients; DGC's options act on gradients"
        else:
            why = cls.refused_options[option]
        able = ", ".join(name for name, other in STRATEGIES.items() if takes(other, option))
        raise ConfigError(f"comm.compression={spec}: {option}= is not supported by strategy {strategy} ({why}); "
                          f"strategies that support it: {able}")


def check_compressed_sum(cls: type[Strategy], strategy: str, spec: str, how: str) -> None:
    """``comm.compressed_sum=scatter-gather`` must act: a strategy that sums payloads over the group, a
    codec that cannot be summed encoded, and no DGC option (the owners re-encode sums, not gradients)."""
    if how == "all-gather":
        return
    field = f"comm.compressed_sum={how}"
    if not cls.sums_compressed:
        from agentsync.sync import STRATEGIES  # the registry imports this module
        able = ", ".join(name for name, other in STRATEGIES.items() if other.sums_compressed)
        raise ConfigError(f"{field} is not supported by strategy {strategy} (it sums no payload over the group); "
                          f"strategies that support it: {able}")
    if is_none(spec) or parse_codec(spec).linear:
        raise ConfigError(f"{field} needs a codec whose payloads cannot be summed encoded (int8, qsgd, sign, topk, "
                          f"randk), not comm.compression={spec.strip() or 'none'}, which is all-reduced as it is")
    if dgc_options(spec):
        raise ConfigError(f"{field}: comm.compression={spec}: {dgc_options(spec)[0]}= acts on a worker's gradient "
                          "and the owners re-encode sums; use comm.compressed_sum=all-gather")


def optimizer_momentum(optimizer: torch.optim.Optimizer) -> tuple[str, float]:
    """The optimizer's name and the momentum it applies (non-SGD optimizers keep moments of their own: 1)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return type(optimizer).__name__.lower(), 1.0
    return "sgd", max(float(group.get("momentum", 0.0)) for group in optimizer.param_groups)


def check_momentum_correction(spec: str, optimizer: str, momentum: float) -> None:
    """DGC's momentum correction applies the momentum on the workers: the optimizer must be plain SGD,
    or momentum would be applied twice. Refused, never changed behind the user's back."""
    if is_none(spec) or "momentum" not in dgc_options(spec):
        return
    if optimizer != "sgd":
        raise ConfigError(f"comm.compression={spec}: momentum correction needs plain SGD, not {optimizer} (which "
                          "keeps moments of its own); --set optimizer.name=sgd --set optimizer.momentum=0")
    if momentum:
        raise ConfigError(f"comm.compression={spec}: momentum correction applies the momentum on the workers, "
                          f"so the optimizer must not apply it again (optimizer.momentum={momentum:g}); "
                          "--set optimizer.momentum=0")


def compression_refused(strategy: str, spec: str) -> str:
    """The one-line error for a codec given to a strategy that does not send through one."""
    from agentsync.sync import STRATEGIES  # the registry imports this module
    able = ", ".join(name for name, cls in STRATEGIES.items() if cls.supports_compression)
    return (f"comm.compression={spec} is not supported by strategy {strategy}; "
            f"strategies that support it: {able}")


def check_unit_interval(value: float, field: str) -> None:
    check(0.0 <= value <= 1.0, field, "in [0, 1]", value)


def broadcast_model_(comm: Comm, model: nn.Module, src: int = 0) -> None:
    """Make every replica start from ``src``'s values, as DDP's constructor does (a one-off, uncounted)."""
    with torch.no_grad(), comm.uncounted():
        for tensor in model.state_dict().values():
            comm.broadcast_(tensor, src=src)


def broadcast_buffers_(comm: Comm, model: nn.Module, src: int = 0) -> None:
    """Buffers (BatchNorm statistics, observation normalisation) equal to ``src``'s, as DDP keeps them
    with ``broadcast_buffers=True``; counted, since it is traffic the strategy sends every step."""
    with torch.no_grad():
        for buffer in model.buffers():
            comm.broadcast_(buffer, src=src)
