"""The feeder: how journaled messages reach the committer, within the memory budget.

    offer(msg) (just journaled) ─► spilling? nothing: it is read back from the journal later
                                   under budget: deliver   over it: spill from its position
    recover() (start)  ─► index the journal from its mark; spill from the first entry
    run(): spill_from ─► journal.read ─► deliver what is still outstanding, while the committer
           holds fewer than half the budget; reaching the journal head ends the spill
    deliver(msg): data ─► checked record by record (bad ones, and ones that did not decode, fail
                  at once, alone) ─► committer.add;
                  a unit (data.units) ─► one bad (or undecodable) record fails the whole unit at
                  once, reported once ─► else committer.add_unit, the unit kept whole
                  artifact ─► the artifact lane

One path: a backlog over the budget and a restart's replay are both read from the journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import anyio

from tracker_client import protocol as p
from tracker_client.wire.framing import HEADER
from tracker_client.wire.validation import record_problem

from ..commit.batcher import Origin, unit_failure
from ..commit.committer import Committer
from ..commit.wakeup import Wakeup
from ..ops.status import Counters
from .journal import SEGMENT_SUFFIX, Journal, Position
from .settlement import Settlement

__all__ = ["KIND_SEQUENCED", "READ_CHUNK_BYTES", "Feeder"]

log = logging.getLogger("tracker_daemon")


class ClientInfo(Protocol):
    """What replay updates in a client-table entry (intake/clients.py: ClientInfo): the runs it
    touched; a protocol, so the journal layer does not import intake."""

    @property
    def runs(self) -> set[str]: ...


KIND_SEQUENCED = b"D"  # journal entry: a sequenced client frame (data or artifact), verbatim
READ_CHUNK_BYTES = 4 * 1024 * 1024


def _after(pos: Position, payload: bytes) -> Position:
    return Position(pos.segment, pos.offset + HEADER.size + len(payload))


def _unreadable(rec: p.Unreadable) -> str:
    """A failure's message for a record that did not decode (it has no record to carry)."""
    run = f"run {rec.run_id}" if rec.run_id is not None else "a record of no readable run"
    return f"{run}: record not stored, it does not decode: {rec.problem}"


class Feeder:
    def __init__(
        self,
        journal: Journal,
        settlement: Settlement,
        committer: Committer,
        counters: Counters,
        *,
        budget: int,
        client: Callable[[str], ClientInfo],
        submit_artifact: Callable[[Origin, p.LogArtifact, bool], None],
    ) -> None:
        self.journal = journal
        self.settlement = settlement
        self.committer = committer
        self.counters = counters
        self.budget = budget
        self._client = client
        self._submit_artifact = submit_artifact
        self.spill_from: Position | None = None  # journal entries from here are not delivered
        self._recovered: dict[str, int] = {}  # client id -> highest seq replayed after a restart
        self.wake = Wakeup()

    @property
    def spilling(self) -> bool:
        return self.spill_from is not None

    def poke(self) -> None:
        """Room may have freed up (a batch was committed)."""
        if self.spill_from is not None:
            self.wake.set()

    # ------------------------------------------------------------------ start

    def recover(self, mark_position: Position, clients: dict[str, int]) -> tuple[int, int]:
        """Index the journal from its mark: every outstanding entry is registered with the
        settlement; the records are delivered later, within the budget. (entries, records)."""
        ledger = self.settlement.ledger
        entries = records = 0
        pos: Position | None = mark_position
        first: Position | None = None
        seg_times: dict[int, float] = {}
        while pos is not None:
            chunk = self.journal.read(pos)
            if not chunk:
                break
            for entry_pos, payload in chunk:
                if payload[:1] != KIND_SEQUENCED:
                    continue
                cid, seq, count = p.peek_sequenced(payload[1:])
                if not ledger.is_new(cid, seq):
                    continue  # a duplicate written twice; keep the first
                self.journal.track(entry_pos)
                written = self._segment_written(entry_pos.segment, seg_times)
                self.settlement.journaled(cid, seq, count, entry_pos, written)
                self._recovered[cid] = max(seq, self._recovered.get(cid, 0))
                first = first or entry_pos
                entries += 1
                records += count
            pos = _after(*chunk[-1])
        for cid, upto in clients.items():
            ledger.floor(cid, upto)
            self._client(cid)  # unbound until its first message
        self.spill_from = first
        self.counters.replayed = records
        return entries, records

    def _segment_written(self, segment: int, cache: dict[int, float]) -> float:
        """For a replayed entry, when it was written at the latest: its segment's mtime, as a
        monotonic time (the journal keeps no per-entry times)."""
        if segment not in cache:
            try:
                mtime = (self.journal.dir / f"{segment:010d}{SEGMENT_SUFFIX}").stat().st_mtime
            except OSError:
                mtime = time.time()
            cache[segment] = time.monotonic() - max(0.0, time.time() - mtime)
        return cache[segment]

    def replayed(self, origin: Origin) -> bool:
        """Was this frame received by the daemon before it restarted (replayed)?"""
        return origin.seq <= self._recovered.get(origin.client_id, 0)

    # ------------------------------------------------------------------ event loop

    def offer(self, msg: p.Data | p.LogArtifact) -> None:
        """A message was just journaled: deliver it now, or leave it to the journal."""
        if self.spill_from is not None:
            return  # read back in journal order once the backlog before it is delivered
        if self.committer.pending < self.budget:
            self.deliver(msg)
            return
        pos = self.settlement.positions.get((msg.client_id, msg.seq))
        if pos is None:
            return  # done already (a frame of no records): nothing to deliver
        self.spill_from = pos
        self.counters.spills += 1
        log.info("event=spill note=backlog_over_memory_budget_stays_in_journal")

    def deliver(self, msg: p.Data | p.LogArtifact, *, replayed: bool = False) -> None:
        """Hand a journaled message's records to the committer (or the artifact lane)."""
        origin = Origin(msg.client_id, msg.seq)
        if type(msg) is p.LogArtifact:  # checked by the lane, whichever way it came
            self._submit_artifact(origin, msg, replayed)
            return
        assert type(msg) is p.Data
        if not msg.units:
            self._records(origin, msg.records)
            return
        records, done = msg.records, 0
        for first, count in msg.units:  # checked by the decoder: ascending, one run each
            self._records(origin, records[done:first])
            self._unit(origin, list(records[first : first + count]))
            done = first + count
        self._records(origin, records[done:])

    def _records(self, origin: Origin, records: tuple[p.Record | p.Unreadable, ...]) -> None:
        good: list[p.Record] = []
        for rec in records:
            if isinstance(rec, p.Unreadable):  # fails alone: the frame's other records go on
                failure = p.Failure(None, "INVALID_PARAMETER_VALUE", _unreadable(rec))
                self.settlement.settle(origin, rec.run_id, None, failure)
                continue
            problem = record_problem(rec)
            if problem is None:
                good.append(rec)
            else:
                failure = p.Failure(rec, "INVALID_PARAMETER_VALUE", problem)
                self.settlement.settle(origin, rec.run_id, rec, failure)
        if good:
            # every run the frame touches: a barrier of this client expedites exactly these
            self._client(origin.client_id).runs.update({rec.run_id for rec in good})
            self.committer.add(origin, good)

    def _unit(self, origin: Origin, records: list[p.Record | p.Unreadable]) -> None:
        """A unit is all-or-nothing: one bad record (or one that did not decode) fails it whole,
        reported once, nothing of it committed."""
        for i, rec in enumerate(records):
            problem = _unreadable(rec) if isinstance(rec, p.Unreadable) else record_problem(rec)
            if problem is None:
                continue
            readable = [r for r in records if not isinstance(r, p.Unreadable)]
            index = readable.index(rec) if not isinstance(rec, p.Unreadable) else -1
            for s in unit_failure(origin, readable, index, "INVALID_PARAMETER_VALUE", problem):
                self.settlement.settle(
                    origin, s.record.run_id, s.record, s.failure, reported=s.reported
                )
            for j, other in enumerate(records):  # what did not decode fails with the unit
                if isinstance(other, p.Unreadable):
                    text = problem if j == i else _unreadable(other)
                    failure = p.Failure(None, "INVALID_PARAMETER_VALUE", text)
                    self.settlement.settle(origin, other.run_id, None, failure, reported=j == i)
            return
        good = [r for r in records if not isinstance(r, p.Unreadable)]
        self._client(origin.client_id).runs.add(good[0].run_id)
        self.committer.add_unit(origin, good)

    async def run(self) -> None:
        """Deliver journaled-but-undelivered entries (replay, or a backlog over the memory
        budget) as room frees up; then hand back to direct delivery."""
        while True:
            if self.spill_from is None or self.committer.pending >= self.budget // 2:
                await self.wake.wait(None if self.spill_from is None else 1.0)
                continue
            await self.feed_once()

    async def feed_once(self) -> None:
        """Read one chunk from ``spill_from`` and deliver what is still outstanding."""
        start = self.spill_from
        if start is None:
            return
        chunk = await anyio.to_thread.run_sync(self.journal.read, start, READ_CHUNK_BYTES)
        for pos, payload in chunk:
            if payload[:1] != KIND_SEQUENCED:
                continue
            msg = p.decode(payload[1:], max_frame=2**31)
            assert isinstance(msg, p.Data | p.LogArtifact)
            if self.settlement.positions.get((msg.client_id, msg.seq)) == pos:
                self._client(msg.client_id)
                self.deliver(msg, replayed=True)
        nxt = _after(*chunk[-1]) if chunk else self.journal.head
        self.spill_from = None if nxt >= self.journal.head else nxt
        self.committer.wake_all()
