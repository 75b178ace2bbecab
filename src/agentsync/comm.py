"""The only module that calls ``torch.distributed``.

Every message the strategies send goes through :class:`Comm`, a rank's view of a process group,
which composes three small pieces besides the group itself:

* :class:`ByteMeter` counts: bytes sent and received per rank (the analytic volume of the
  algorithm gloo/NCCL runs, so counts do not depend on transport details), messages, and seconds
  a rank spent blocked in communication;
* :class:`~agentsync.netsim.NetSim` delays messages as a slower network would (optional);
* :class:`~agentsync.faults.Faults` makes a rank slow, kills, hangs or poisons it (experiments).

Comm also owns process-group setup and its timeout, sub-groups (workers without servers) and
point-to-point messages.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import os
import socket
import threading
import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from agentsync.compress import parse_codec
from agentsync.errors import ConfigError
from agentsync.faults import Faults, parse_faults, parse_stragglers
from agentsync.leave import leave_process
from agentsync.membership import Membership, PeerLost
from agentsync.netsim import NetSim
from agentsync.options import Options, check, choice

__all__ = ["ByteMeter", "Comm", "CommConfig", "CommStats", "NetSim", "Work", "free_port", "leave_process",
           "parse_faults", "parse_stragglers", "resolve_device", "sums_by_exchange"]

EXCHANGE_MAX_BYTES = 256 * 1024
"""Up to this size, a sum between two ranks is one exchange (:func:`sums_by_exchange`)."""


REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def sums_by_exchange(nbytes: float, world_size: int) -> bool:
    """Whether :meth:`Comm.all_reduce_async` sums ``nbytes`` between two ranks by one exchange (each
    sends its whole tensor and adds the other's) rather than by gloo's ring (half the tensor in
    each of two rounds). The bytes are the same and the sum bit-identical (a + b = b + a), with
    half the round trips: what a small sum costs (RL models, compressed payloads). Above a few
    hundred KiB the extra buffer and pass outweigh the round saved (``bench/small_allreduce.py``)."""
    return world_size == 2 and nbytes <= EXCHANGE_MAX_BYTES


@dataclasses.dataclass(kw_only=True)
class CommConfig(Options):
    backend: str = "auto"
    """Process-group backend: gloo, nccl, or auto (nccl when CUDA is available, else gloo)."""
    device: str = "auto"
    """Device the model trains on: cpu, cuda, or auto (cuda:LOCAL_RANK when available)."""
    master_addr: str = "127.0.0.1"
    """Rendezvous address for the local launcher (torchrun sets its own)."""
    master_port: int = 0
    """Rendezvous port for the local launcher; 0 picks a free one."""
    timeout_s: float = 60.0
    """Seconds any collective or message may wait before the job stops with an error."""
    straggler: str = ""
    """Slow ranks for experiments, as RANK:SECONDS[,RANK:SECONDS]: that rank sleeps that long every step."""
    fault: str = ""
    """Fault injection for tests, as RANK:KIND@STEP[,...]; KIND is kill (SIGKILL), hang, or nan (NaN gradient)."""
    net: str = ""
    """Simulated network, e.g. latency=20ms,bandwidth=1Gbit: every message arrives latency + bytes/bandwidth late."""
    compression: str = "none"
    """Codec for what the strategy sends, as NAME[:KEY=VALUE...]: none, fp16, bf16, int8, qsgd:bits=4, sign,
    topk:ratio=0.01, randk:ratio=0.01, powersgd:rank=2; with error feedback (see docs/compression.md). On gradient
    transports top-k takes Deep Gradient Compression's momentum=M (momentum correction; needs optimizer.momentum=0),
    clip=C (local clipping) and warmup=STEPS[:warmup_from=0.25] (the kept ratio decays from 25 %). Any codec but
    powersgd takes decay=β in (0, 1]: error feedback scales its residual by β each step (SparseLoCo)."""
    compressed_sum: str = "all-gather"
    """How payloads of a codec that cannot be summed encoded (int8, qsgd, sign, topk, randk) are summed over the
    group: all-gather (every rank's payload to every rank: W − 1 payloads sent per rank, one encoding) or
    scatter-gather (a W-th of each payload to each rank, which sums it and encodes the sum again with error
    feedback of its own, then an all-gather of those sums: 2 (W − 1) / W payloads per rank, two encodings)."""

    def validate(self, section: str) -> None:
        choice(self.backend, f"{section}.backend", ("auto", "gloo", "nccl"))
        choice(self.device, f"{section}.device", ("auto", "cpu", "cuda"))
        check(self.timeout_s > 0, f"{section}.timeout_s", "> 0", self.timeout_s)
        check(0 <= self.master_port < 65536, f"{section}.master_port", "in [0, 65535]", self.master_port)
        parse_stragglers(self.straggler)
        parse_faults(self.fault)
        NetSim.parse(self.net)
        parse_codec(self.compression, f"{section}.compression")
        choice(self.compressed_sum, f"{section}.compressed_sum", COMPRESSED_SUMS)


COMPRESSED_SUMS = ("all-gather", "scatter-gather")
"""The transports of :attr:`CommConfig.compressed_sum` (see :mod:`agentsync.sync.compressed`)."""

LAUNCHER_STORE = "AGENTSYNC_LAUNCHER_STORE"
"""Set by the local launcher, which hosts the store itself: every rank is then a client of it."""


def rendezvous_store(host: str, port: int, rank: int, world_size: int,
                     timeout: datetime.timedelta) -> dist.TCPStore:
    """The job's key-value store, listening on ``host`` only: rank 0 hosts it, the others connect.

    The local launcher hosts it itself (as rank 0 here), so that no rank's death takes it down.

    torch's ``TCPStore`` binds every interface whatever host it is given (and has no
    authentication); handed a socket already bound to ``host``, it listens there alone.
    """
    if rank != 0:
        return dist.TCPStore(host, port, world_size, False, timeout=timeout)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    # detach: the store owns the descriptor from here on (the socket object must not close it)
    return dist.TCPStore(host, port, world_size, True, timeout=timeout, wait_for_workers=False,
                         master_listen_fd=listener.detach())


def torchelastic_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun, the agent's store (None: env:// finds it), seen through a prefix per restart.

    torchrun keeps one store across ``--max-restarts`` attempts and its env:// handler adds no
    prefix, so a restarted rank could read a dead peer's gloo address from the attempt before and
    time out connecting to it; the prefix keeps each attempt's keys apart.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not attempt or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, False,
                          timeout=timeout)
    return dist.PrefixStore(f"agentsync/attempt-{attempt}", agent)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class CommStats:
    """What one rank spent on communication."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0
    comm_time_s: float = 0.0
    codec_time_s: float = 0.0
    """Seconds spent encoding and decoding compressed payloads (compute, apart from ``comm_time_s``)."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load(self, saved: dict) -> None:
        """Continue from a checkpoint's counters, so cumulative figures stay cumulative on resume."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, type(getattr(self, f.name))(saved.get(f.name, getattr(self, f.name))))


class ByteMeter:
    """Counts what a rank sends, receives and waits for; sub-groups of a rank share one meter."""

    def __init__(self) -> None:
        self.stats = CommStats()
        self.counting = True
        self._lock = threading.Lock()  # parameter servers receive on several threads

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Traffic for measurement (consensus distance, final gathers) is not the strategy's cost."""
        saved = dataclasses.replace(self.stats)
        self.counting = False
        try:
            yield
        finally:
            self.counting = True
            self.stats.load(saved.as_dict())

    def account(self, sent: float, received: float, messages: int) -> None:
        if self.counting:
            with self._lock:
                self.stats.bytes_sent += int(round(sent))
                self.stats.bytes_received += int(round(received))
                self.stats.messages += messages

    def waited(self, seconds: float) -> None:
        self.stats.comm_time_s += seconds


class Work:
    """An in-flight operation; :meth:`wait` adds the time blocked to the owner's comm time and,
    under a simulated network, returns no earlier than ``delay_s`` after the operation started;
    then runs ``then``, the local part that completes the operation (an exchange's sum)."""

    def __init__(self, comm: "Comm", work, delay_s: float = 0.0, then: Callable[[], object] | None = None) -> None:
        self._comm, self._work, self._delay, self._started = comm, work, delay_s, time.perf_counter()
        self._then = then

    def wait(self) -> None:
        start = time.perf_counter()
        if self._work is not None:
            self._comm._wait(self._work)
        hidden = start - self._started  # compute that ran while the operation was in flight
        if self._delay > hidden:
            time.sleep(self._delay - hidden)
        self._comm.meter.waited(time.perf_counter() - start)
        if self._then is not None:
            self._then()
            self._then = None


class Comm:
    """A rank's view of a process group, counting everything it sends.

    Args:
        rank: this process's rank in ``group``.
        world_size: number of ranks in ``group``.
        config: timeouts, stragglers, faults and the simulated network.
        group: a ``torch.distributed`` group, or None for the default (world) group.
        meter: shared counters (sub-groups count into their parent's).
        device: where every tensor a collective or message touches lives.

    Example::

        comm = Comm.from_env(CommConfig())        # RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
        comm.all_reduce_(torch.ones(4))           # every rank now holds world_size * ones
        comm.stats.bytes_sent                      # 2 (W-1)/W * 16 bytes, the ring volume
    """

    def __init__(self, rank: int, world_size: int, config: CommConfig, *, group=None,
                 meter: ByteMeter | None = None, device: torch.device | None = None) -> None:
        self.rank, self.world_size, self.config, self.group = rank, world_size, config, group
        self.meter = meter if meter is not None else ByteMeter()
        self.device = device or torch.device("cpu")
        self.net = NetSim.parse(config.net)
        self.faults = Faults(config.straggler, config.fault)
        self.store: dist.Store | None = None
        """The launcher's store, where it hosts one (the local launcher): what regrouping needs."""
        self.membership: Membership | None = None

    @property
    def stats(self) -> CommStats:
        return self.meter.stats

    # -- set-up -----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, config: CommConfig) -> "Comm":
        """Join the job described by the torchrun environment variables."""
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(config.device, local_rank)
        backend = config.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", config.master_addr)
            os.environ.setdefault("MASTER_PORT", str(config.master_port or free_port()))
            timeout = datetime.timedelta(seconds=config.timeout_s)
            # under torchrun the agent's store is the rendezvous (env://); otherwise we host our own
            hosted = os.environ.get(LAUNCHER_STORE) == "1"
            store = torchelastic_store(world_size, timeout) if os.environ.get("TORCHELASTIC_RUN_ID") else \
                rendezvous_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                 -1 if hosted else rank, world_size, timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
                                    device_id=device if device.type == "cuda" else None)
        comm = cls(rank, world_size, config, device=device)
        if dist.is_initialized() and os.environ.get(LAUNCHER_STORE) == "1":
            comm.store = store
        return comm

    def allow_regrouping(self) -> bool:
        """Survive a lost peer by re-forming the group over the survivors (:mod:`agentsync.membership`).

        Only where the launcher hosts the store and announces losses (the local launcher), and only
        for the whole job's group; returns whether regrouping is on. Operations then raise
        :class:`PeerLost` where they would have failed on the dead peer.
        """
        if self.store is None or self.group is not None:
            return False
        backend = dist.get_backend()
        self.membership = Membership(self.store, self.world_size, backend,
                                     datetime.timedelta(seconds=self.config.timeout_s))
        return True

    def split(self, ranks: list[int]) -> "Comm | None":
        """A sub-group of ``ranks`` sharing these counters; every rank must call it, members get a Comm."""
        group = dist.new_group(ranks) if self.world_size > 1 else None
        if self.rank not in ranks:
            return None
        return Comm(ranks.index(self.rank), len(ranks), self.config, group=group, meter=self.meter,
                    device=self.device)

    def global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def close(self) -> None:
        """Leave the process group. Collect garbage around it first: strategies hold hooks in
        reference cycles, and gloo work objects freed only by the interpreter's final collection
        can abort the process (torch 2.13: SIGABRT, "terminate called without an active exception")."""
        if dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            gc.collect()

    # -- accounting -------------------------------------------------------------------------
    def uncounted(self):
        """Traffic for measurement (consensus distance, final gathers) is not the strategy's cost."""
        return self.meter.uncounted()

    def _account(self, sent: float, received: float, messages: int) -> None:
        self.meter.account(sent, received, messages)

    def _simulated(self, kind: str, nbytes: float, n: int = 2) -> float:
        """Seconds the simulated network adds to an operation (0 when off or uncounted)."""
        if self.net is None or not self.meter.counting:
            return 0.0
        return self.net.message(nbytes) if kind == "message" else getattr(self.net, kind)(nbytes, n)

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.meter.waited(time.perf_counter() - start)

    def _wait(self, work) -> None:
        try:
            work.wait(datetime.timedelta(seconds=self.config.timeout_s))
        except RuntimeError as e:
            if self.membership is None or isinstance(e, PeerLost):
                raise
            self.rank, self.world_size = self.membership.regroup(e)
            raise PeerLost([r["rank"] for r in self.membership.lost]) from e

    # -- collectives ------------------------------------------------------------------------
    def all_reduce_async(self, tensor: torch.Tensor, op: str = "sum") -> Work:
        """Start an in-place all-reduce; ring volume 2 (W-1)/W bytes each way per rank (between two
        ranks a small sum is one exchange instead: :func:`sums_by_exchange`)."""
        n, size = self.world_size, tensor.numel() * tensor.element_size()
        if n == 1:
            return Work(self, None)
        if op == "sum" and sums_by_exchange(size, n) and tensor.is_contiguous():
            self._account(size, size, 1)
            both = [torch.empty_like(tensor) for _ in range(n)]
            other = both[1 - self.rank]
            return Work(self, dist.all_gather(both, tensor, group=self.group, async_op=True),
                        self._simulated("all_gather", size, n), then=lambda: tensor.add_(other))
        self._account(2 * (n - 1) / n * size, 2 * (n - 1) / n * size, 2 * (n - 1))
        # the group's own allreduce, as DDP's reducer calls it: dist.all_reduce's checks and profiler
        # range cost ~20 us a call, twice a step on the critical path of an allreduce step
        options = dist.AllreduceOptions()
        options.reduceOp = REDUCE_OPS[op]
        group = self.group if self.group is not None else dist.group.WORLD
        return Work(self, group.allreduce([tensor], options), self._simulated("all_reduce", size, n))

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        self.all_reduce_async(tensor, op).wait()
        return tensor

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean over the group."""
        return self.all_reduce_(tensor).div_(self.world_size)

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """In-place broadcast from group rank ``src``; the root sends W-1 copies, others receive one."""
        n, size = self.world_size, tensor.numel() * tensor.element_size()
        if n == 1:
            return tensor
        if self.rank == src:
            self._account(size * (n - 1), 0, n - 1)
        else:
            self._account(0, size, 1)
        Work(self, dist.broadcast(tensor, self.global_rank(src), group=self.group, async_op=True),
             self._simulated("broadcast", size, n)).wait()
        return tensor

    def gather(self, tensor: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        """Every rank's ``tensor`` (same shape on all ranks) at ``dst``, None elsewhere: only ``dst``
        holds W copies; each other rank sends one, ``dst`` receives W-1."""
        n, size = self.world_size, tensor.numel() * tensor.element_size()
        if n == 1:
            return [tensor.clone()]
        out = [torch.empty_like(tensor) for _ in range(n)] if self.rank == dst else None
        self._account(0, size * (n - 1), n - 1) if self.rank == dst else self._account(size, 0, 1)
        Work(self, dist.gather(tensor, out, dst=self.global_rank(dst), group=self.group, async_op=True),
             self._simulated("gather", size, n)).wait()
        return out

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape on all ranks); ring volume (W-1) copies each way."""
        out, work = self.all_gather_async(tensor)
        work.wait()
        return out

    def all_gather_async(self, tensor: torch.Tensor) -> tuple[list[torch.Tensor], Work]:
        """Start an all-gather; the list holds every rank's ``tensor`` once the Work is waited for."""
        n, size = self.world_size, tensor.numel() * tensor.element_size()
        if n == 1:
            return [tensor.clone()], Work(self, None)
        out = [torch.empty_like(tensor) for _ in range(n)]
        self._account(size * (n - 1), size * (n - 1), n - 1)
        return out, Work(self, dist.all_gather(out, tensor, group=self.group, async_op=True),
                         self._simulated("all_gather", size, n))

    def all_to_all_async(self, tensor: torch.Tensor) -> tuple[torch.Tensor, Work]:
        """Start an all-to-all of ``tensor``'s W equal blocks: block j goes to rank j, and block i of
        the result (once the Work is waited for) is rank i's block for this rank; W − 1 blocks each way."""
        n, size = self.world_size, tensor.numel() * tensor.element_size()
        if n == 1:
            return tensor.clone(), Work(self, None)
        out = torch.empty_like(tensor)
        self._account(size * (n - 1) / n, size * (n - 1) / n, n - 1)
        return out, Work(self, dist.all_to_all_single(out, tensor, group=self.group, async_op=True),
                         self._simulated("all_to_all", size, n))

    def barrier(self) -> None:
        if self.world_size > 1:
            self._timed(lambda: self._wait(dist.barrier(group=self.group, async_op=True)))

    # -- point-to-point ---------------------------------------------------------------------
    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> Work:
        self._account(tensor.numel() * tensor.element_size(), 0, 1)
        return Work(self, dist.isend(tensor, self.global_rank(dst), group=self.group, tag=tag))

    def irecv(self, tensor: torch.Tensor, src: int | None = None, tag: int = 0) -> Work:
        """Receive; under a simulated network it completes latency + bytes/bandwidth after posting."""
        size = tensor.numel() * tensor.element_size()
        self._account(0, size, 0)
        src = None if src is None else self.global_rank(src)
        return Work(self, dist.irecv(tensor, src, group=self.group, tag=tag), self._simulated("message", size))

    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self.isend(tensor, dst, tag).wait()

    def recv(self, tensor: torch.Tensor, src: int | None = None, tag: int = 0, *,
             timeout_s: float | None = None) -> None:
        """Blocking receive. ``timeout_s`` overrides the group's timeout for a server listening to an
        idle worker; that idle wait is not counted as communication time."""
        work = self.irecv(tensor, src, tag)
        if timeout_s is None:
            work.wait()
        else:
            work._work.wait(datetime.timedelta(seconds=timeout_s))
            # the idle wait ended when the message was sent: under a simulated network it still travels
            time.sleep(self._simulated("message", tensor.numel() * tensor.element_size()))

    def exchange(self, send: torch.Tensor, recv: torch.Tensor, peer: int, tag: int = 0) -> None:
        """Swap equal-sized tensors with ``peer`` without deadlock (both sides post both)."""
        works = [self.irecv(recv, peer, tag), self.isend(send, peer, tag)]
        for work in works:
            work.wait()

    # -- bytes over tensors (checkpoint gathers; no pickles travel) -------------------------
    def gather_bytes(self, payload: bytes, dst: int = 0) -> list[bytes] | None:
        """Every rank's ``payload`` at ``dst`` (others get None), carried as uint8 tensors."""
        if self.world_size == 1:
            return [payload]
        length = torch.tensor([len(payload)], dtype=torch.int64, device=self.device)
        lengths = [int(x) for x in self.all_gather(length)]
        data = torch.zeros(max(lengths), dtype=torch.uint8)
        data[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else data[:0]
        gathered = self.gather(data.to(self.device), dst)  # not all-gathered: one rank holds W payloads
        if gathered is None:
            return None
        return [bytes(t[:n].cpu().numpy().tobytes()) for t, n in zip(gathered, lengths)]

    def broadcast_bytes(self, payload: bytes | None, src: int = 0) -> bytes:
        if self.world_size == 1:
            return payload or b""
        length = torch.tensor([len(payload) if self.rank == src else 0], dtype=torch.int64, device=self.device)
        self.broadcast_(length, src)
        data = torch.zeros(int(length), dtype=torch.uint8)
        if self.rank == src and payload:
            data[:] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        data = self.broadcast_(data.to(self.device), src)
        return bytes(data.cpu().numpy().tobytes())

    # -- experiments ------------------------------------------------------------------------
    def straggle(self) -> None:
        self.faults.straggle(self.rank_in_world)

    def inject_fault(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return self.faults.inject(self.rank_in_world, step, loss)

    @property
    def rank_in_world(self) -> int:
        """This rank's number in the job as it started (a survivor's keeps it after regrouping)."""
        rank = self.global_rank(self.rank)
        return rank if self.membership is None else self.membership.members[rank]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("comm.device is cuda but no CUDA device is available; use cpu or auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
