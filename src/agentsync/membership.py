"""Who is still in the job, and re-forming the process group over the survivors of a lost rank.

Decentralized strategies (``gossip``, ``local-sgd``, ``diloco``) have no single point of failure,
so a lost worker should cost them its data shard, not the job. gloo cannot shrink a process group
(torch 2.13: ``shrink_group`` is NCCL-only) and a collective with a dead peer fails, so the
survivors *abort and re-create* the group, as torchft does per quorum:

1. The launcher is the membership authority. It hosts the job's key-value store (so losing rank 0
   does not lose the store) and, when it sees a rank die, announces it there:
   ``agentsync/lost/K = RANK`` for the K-th loss, then ``agentsync/losses`` += 1.
2. A survivor whose operation fails reads the announcements (waiting a few seconds for the
   launcher's poll). No new loss announced: the error is real and propagates. Otherwise it
   destroys the old group and joins a new one of the survivors, through the store under a prefix
   naming them, ranks renumbered in their old order, and raises :class:`PeerLost`. A survivor
   blocked in the old group on a live peer (not the dead rank's neighbour in a ring) fails only
   when its operation times out (``comm.timeout_s``), so the survivors first meet in the store,
   waiting for several of those (:data:`REGROUP_TIMEOUTS`), and only then form the group.
3. The strategy drops the synchronization it was in (the step's local update stands) and, at the
   start of the next step, every survivor agrees on the furthest step reached
   (:meth:`~agentsync.sync.base.Strategy.rejoin`), so all of them make the same calls from there on.

A survivor that was not talking to the dead rank learns of the loss when it next talks to one
that has regrouped (their old sockets are closed): every survivor joins the new group.
"""
from __future__ import annotations

import datetime
import time

import torch.distributed as dist

LOSSES = "agentsync/losses"
ANNOUNCE_WAIT_S = 10.0
"""How long a survivor waits for the launcher to announce the loss behind a failed operation."""
REGROUP_TIMEOUTS = 6
"""How many operation timeouts (``comm.timeout_s``) the new group's rendezvous waits for a late
survivor: one per peer it may be blocked behind, with room for a loaded machine (a survivor once
came 80-100 s late with a 20 s timeout on 2 busy cores)."""


class PeerLost(RuntimeError):
    """A peer died; this rank now belongs to a group of the survivors (``ranks`` lost)."""

    def __init__(self, ranks: list[int]) -> None:
        super().__init__(f"rank(s) {', '.join(map(str, ranks))} lost; the survivors regrouped")
        self.ranks = ranks


def announce_lost(store: dist.Store, rank: int) -> None:
    """The launcher's side: ``rank`` (a rank of the original job) has died."""
    count = int(store.add(LOSSES, 0)) + 1
    store.set(f"agentsync/lost/{count}", str(rank))
    store.add(LOSSES, 1)


def announced(store: dist.Store) -> list[int]:
    """Every rank the launcher has announced lost, in order."""
    return [int(store.get(f"agentsync/lost/{k}")) for k in range(1, int(store.add(LOSSES, 0)) + 1)]


class Membership:
    """The original ranks still in the group, and regrouping when one is lost.

    Args:
        store: the launcher's store (outlives any rank).
        world_size: ranks the job started with.
        backend, timeout: as the process group was made.
    """

    def __init__(self, store: dist.Store, world_size: int, backend: str, timeout: datetime.timedelta) -> None:
        self.store, self.backend, self.timeout = store, backend, timeout
        self.members = list(range(world_size))
        self.lost: list[dict] = []
        """One entry per lost rank: ``{"rank", "time_s"}``, and ``"step"`` once the survivors agree on it
        (summary's ``lost_ranks``)."""
        self.pending = False
        """True from regrouping until the strategy has rejoined (survivors agreed on a step)."""
        self._started = time.time()

    def regroup(self, error: BaseException) -> tuple[int, int]:
        """After ``error`` in an operation: the new (rank, world size) in a group of the survivors.

        Raises ``error`` itself when the launcher announces no new loss: then it was not one.
        """
        lost = self._newly_lost()
        if not lost:
            raise error
        me = self.members[dist.get_rank()]
        self.members = [r for r in self.members if r not in lost]
        elapsed = round(time.time() - self._started, 3)
        self.lost += [{"rank": r, "time_s": elapsed} for r in lost]
        dist.destroy_process_group()
        rank, size = self.members.index(me), len(self.members)
        survivors = '-'.join(map(str, self.members))
        self._meet(dist.PrefixStore(f"agentsync/arrivals-{survivors}", self.store), size)
        prefix = dist.PrefixStore(f"agentsync/group-{survivors}", self.store)
        dist.init_process_group(self.backend, store=prefix, rank=rank, world_size=size, timeout=self.timeout)
        self.pending = True
        return rank, size

    def _meet(self, arrivals: dist.Store, size: int) -> None:
        """Wait in the store until all ``size`` survivors have come, for up to :data:`REGROUP_TIMEOUTS`
        operation timeouts (a survivor blocked behind live peers comes late), so that the new group's
        own rendezvous, which waits only its operation timeout, finds everyone there."""
        window = REGROUP_TIMEOUTS * self.timeout + datetime.timedelta(seconds=ANNOUNCE_WAIT_S)
        if arrivals.add("count", 1) == size:
            arrivals.set("all", "1")
        arrivals.wait(["all"], window)

    def rejoined(self, step: int) -> None:
        """The survivors agreed to go on from ``step``: the losses since the last agreement are dated by it."""
        self.pending = False
        for entry in self.lost:
            entry.setdefault("step", step)

    def _newly_lost(self) -> list[int]:
        deadline = time.monotonic() + ANNOUNCE_WAIT_S
        while True:
            lost = [r for r in announced(self.store) if r in self.members]
            if lost or time.monotonic() > deadline:
                return lost
            time.sleep(0.05)
