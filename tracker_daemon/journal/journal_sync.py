"""Journal durability: the group fsync and its acks, and the low-water mark.

    appended ─► sync loop: one interval later (up to FSYNC_STRETCH intervals at low rates), one
                fsync (durability = "fsync") ─► acks sent
    settled  ─► mark loop: MARK_DELAY_S later, the mark (low water + client floors) written,
                committed segments deleted, then the daemon's other pending file writes

Disk full (diskspace.py): a failed fsync holds the acks back (clients keep the frames) and is
tried again every DISK_RETRY_S; a mark that cannot be written stays in memory and is tried again;
while the journal refuses data, a settled current segment is rolled so its space comes back.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import anyio

from tracker_client import protocol as p

from ..commit.wakeup import Wakeup
from ..ops.status import Counters
from .diskspace import DiskProblems, is_disk_error
from .journal import Journal

__all__ = [
    "CLIENT_MEMORY_S",
    "DISK_RETRY_S",
    "FRAMES_PER_FSYNC",
    "FSYNC_STRETCH",
    "FULL_MARK_DELAY_S",
    "MARK_DELAY_S",
    "JournalSync",
]

CLIENT_MEMORY_S = 7 * 24 * 3600  # how long the mark remembers an idle client's seq
DISK_RETRY_S = 1.0  # how often a write that failed for lack of space is tried again
FRAMES_PER_FSYNC = 32  # frames worth one group fsync: fewer wait up to FSYNC_STRETCH intervals
FSYNC_STRETCH = 4  # at low rates the group fsync waits at most this many intervals
MARK_DELAY_S = 1.0  # the mark is written this long after entries settle
FULL_MARK_DELAY_S = 0.2  # ... while the journal refuses data (its space comes back sooner)


class ClientInfo(Protocol):
    """What the mark loop reads of a client-table entry (intake/clients.py: ClientInfo); a
    protocol, so the journal layer does not import intake."""

    @property
    def last_seen(self) -> float: ...


class JournalSync:
    def __init__(
        self,
        journal: Journal,
        disk: DiskProblems,
        counters: Counters,
        *,
        durability: str,
        fsync_interval: float,
        received_upto: Callable[[str], int],
        clients: Mapping[str, ClientInfo],
        send: Callable[[bytes, p.Ack], Awaitable[object]],
        after_mark: Callable[[], Awaitable[None]],
    ) -> None:
        self.journal = journal
        self.disk = disk
        self.counters = counters
        self.durability = durability
        self.fsync_interval = fsync_interval
        self._received_upto = received_upto
        self._clients = clients
        self._send = send
        self._after_mark = after_mark
        self.pending_acks: dict[bytes, str] = {}  # peer -> client id, acked after the fsync
        self._synced: list[anyio.Event] = []  # set after the next group fsync (synced())
        self.sync_wake = Wakeup()
        self.mark_wake = Wakeup()
        self.frames = 0  # frames waiting for the next group fsync (their acks)

    def ack_later(self, identity: bytes, client_id: str) -> None:
        self.pending_acks[identity] = client_id
        self.frames += 1
        self.sync_wake.set()

    async def synced(self) -> None:
        """Return once everything appended so far is as durable as an ack promises (after the
        next group fsync with durability "fsync"; at once with "os")."""
        if self.durability != "fsync":
            return
        event = anyio.Event()
        self._synced.append(event)
        self.sync_wake.set()
        await event.wait()

    async def sync_loop(self) -> None:
        """Group fsync: after the first append, wait one interval, fsync once, ack everyone.
        At low rates (fewer than FRAMES_PER_FSYNC frames waiting) the wait stretches, an
        interval at a time, up to FSYNC_STRETCH intervals: an fsync and its acks cost the same
        for 3 frames as for 300. A ``synced()`` waiter (an END) ends the stretch."""
        while True:
            await self.sync_wake.wait(None)
            await anyio.sleep(self.fsync_interval)
            for _ in range(FSYNC_STRETCH - 1):
                if self.frames >= FRAMES_PER_FSYNC or self._synced:
                    break
                await anyio.sleep(self.fsync_interval)
            self.frames = 0
            if self.durability == "fsync":
                started = time.monotonic()
                waiters, self._synced = self._synced, []
                try:
                    await anyio.to_thread.run_sync(self.journal.sync)
                except OSError as exc:
                    if not is_disk_error(exc):
                        raise
                    # not durable: hold the acks back (clients keep the frames) and try again
                    self.disk.failed("journal (fsync)", exc, "acks_held_back_until_fsync_works")
                    self._synced[:0] = waiters
                    await anyio.sleep(DISK_RETRY_S)
                    self.sync_wake.set()
                    continue
                self.disk.ok("journal (fsync)")
                self.counters.fsyncs += 1
                self.counters.fsync_seconds += time.monotonic() - started
                for event in waiters:
                    event.set()
            await self.flush_acks()

    async def flush_acks(self) -> None:
        acks = list(self.pending_acks.items())
        self.pending_acks.clear()
        for identity, cid in acks:
            await self._send(identity, p.Ack(self._received_upto(cid)))

    async def mark_loop(self) -> None:
        """Persist the low-water mark a little after entries settle; delete committed segments.
        On a full disk: roll a settled current segment so its space can be reclaimed, and try
        the mark (and the daemon's other files, ``after_mark``) again every DISK_RETRY_S."""
        last = None
        while True:
            retry = bool(self.journal.full_reason or self.disk)
            await self.mark_wake.wait(DISK_RETRY_S if retry else None)
            # one mark for every commit of the next second; a full journal reclaims sooner
            await anyio.sleep(FULL_MARK_DELAY_S if self.journal.full_reason else MARK_DELAY_S)
            if self.journal.full_reason:
                self.journal.roll_if_settled()
            low = self.journal.low_water()
            floors = self.client_floors()
            if (low, floors) != last:
                try:
                    if self.durability == "fsync":
                        await anyio.to_thread.run_sync(self.journal.sync)
                    await anyio.to_thread.run_sync(self.journal.write_mark, low, floors)
                except OSError as exc:
                    if not is_disk_error(exc):
                        raise
                    self.disk.failed("journal mark.json", exc, "mark_kept_in_memory_retried")
                else:
                    self.disk.ok("journal mark.json")
                    self.counters.mark_writes += 1
                    last = (low, floors)
            await self._after_mark()

    def client_floors(self) -> dict[str, int]:
        """Per client, the highest contiguous seq accepted — persisted with the mark so a
        restarted daemon still recognises resends of messages it already committed."""
        now = time.monotonic()
        return {
            cid: self._received_upto(cid)
            for cid, info in self._clients.items()
            if now - info.last_seen < CLIENT_MEMORY_S and self._received_upto(cid)
        }
