"""The client's send queue: the bounded deque, its three buffer policies, drop accounting, and
the one path from the queue to protocol frames (sending, spilling to the spool, the exit spool).

:class:`Outbox` is what log calls (any thread) touch: ``put`` appends one record in wire form and
wakes the I/O thread only when it is asleep. The queue holds at most ``max_buffer`` records; when
it is full the ``policy`` decides: ``block`` (the log call waits), ``drop-oldest`` (the oldest
record is dropped, counted, warned once) or ``spool`` (the I/O thread moves the oldest part to the
spool; if the spool cannot be written either, the queue may grow to twice ``max_buffer``, and
beyond that the oldest records are dropped, counted as *lost*, warned once and reported by the
next barrier). Control items (requests, artifacts) are never dropped.

:class:`FrameMaker` takes items off the front of the queue only to frame them: a run of records
becomes one ``data`` frame of at most ``max_records`` records and ``max_bytes`` bytes; a control
item (a request or a sequenced message such as an artifact) becomes its own frame. A
:class:`UnitRecords` item (the records of one MLflow ``log_batch`` call) is never split across
frames: for a daemon that announced ``units`` its records go into one frame as one entry of
``data.units`` (committed all-or-nothing); otherwise — an older daemon, or a unit larger than a
frame — they go as independent records, as before units existed. The caller then
places the frame (sends it, or writes it to the spool) and either keeps it — only then does the
frame's seq count as used — or calls :meth:`FrameMaker.give_back`, which puts the items back at
the front of the queue in their order. A frame is encoded with the seq the caller passes as
``next_seq`` (its last used seq + 1), so a frame that could not be placed leaves no gap in the
client's seqs. Pure: no I/O, no clock, no threads of its own (producers may append to the queue's
right end meanwhile).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from .. import protocol as p

__all__ = [
    "POLICIES",
    "RECORDS_PER_FRAME",
    "Call",
    "Control",
    "FrameMaker",
    "MakeMessage",
    "Outbox",
    "Unit",
    "UnitRecords",
    "records_in",
]

_log = logging.getLogger("tracker_client")

POLICIES = ("spool", "block", "drop-oldest")

# At most this many records per data frame: the lowest max_records_per_frame a daemon can be
# configured with (PROTOCOL.md section 11), so no daemon refuses a frame for its record count.
RECORDS_PER_FRAME = 1000

MakeMessage = Callable[[int, int], p.ClientMessage]  # (req, seq) -> message


class Control(Protocol):
    """A control item in the queue: ``future`` is None for a sequenced or unanswered message."""

    @property
    def make(self) -> MakeMessage: ...
    @property
    def future(self) -> Future[Any] | None: ...
    @property
    def sequenced(self) -> bool: ...


class Call:
    """A control item of the transport: ``future`` is None for a sequenced message (kept until
    acked, like DATA) and for a request nobody waits for."""

    __slots__ = ("future", "make", "sequenced")

    def __init__(self, make: MakeMessage, future: Future[Any] | None, sequenced: bool) -> None:
        self.make = make
        self.future = future
        self.sequenced = sequenced


class UnitRecords:
    """A queue item: records (wire form, one run) that commit all-or-nothing."""

    __slots__ = ("records",)

    def __init__(self, records: list[list[Any]]) -> None:
        self.records = records


@dataclass(frozen=True, slots=True)
class Unit:
    """One frame made from the queue. ``seq``: for a data frame or a sequenced control item, the
    seq it carries; for a request, the last seq before it (a barrier's ``seq``)."""

    frame: bytes
    records: list[list[Any]]  # the records of a data frame; empty for a control item
    call: Control | None
    seq: int
    req: int = 0
    items: list[Any] | None = None  # a data frame's queue items (records and UnitRecords)

    @property
    def sequenced(self) -> bool:
        return self.call is None or self.call.sequenced


class FrameMaker:
    """Frames the front of ``queue`` for client ``client_id()`` within the limits."""

    def __init__(
        self,
        queue: deque[Any],
        client_id: Callable[[], str],
        *,
        max_records: int = RECORDS_PER_FRAME,
        max_bytes: int = p.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be >= 1")
        self.queue = queue
        self.client_id = client_id
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.units = False  # the daemon announced "units" (set from its welcome)

    def take(self, next_seq: int, new_req: Callable[[], int]) -> Unit | None:
        """The next frame from the front of the queue, or None when the queue is empty. A request
        whose caller gave up (its future is cancelled) is dropped from the queue, not framed."""
        q = self.queue
        recs: list[Any] = []  # queue items: records and UnitRecords
        n = 0  # records in them
        while q and n < self.max_records:
            try:
                item = q.popleft()
            except IndexError:  # a producer dropped the last item meanwhile (drop-oldest)
                break
            if type(item) is list:
                recs.append(item)
                n += 1
                continue
            if type(item) is UnitRecords:
                size = len(item.records)
                if not self.units or size < 2:  # plain records (an older daemon)
                    q.extendleft(reversed(item.records))
                elif n and n + size > self.max_records:
                    q.appendleft(item)  # whole, in the next frame
                    break
                else:
                    recs.append(item)
                    n += size
                continue
            if recs:  # the records before a control item go first, in their own frame
                q.appendleft(item)
                break
            if item.sequenced:
                return Unit(p.encode(item.make(0, next_seq)), [], item, next_seq)
            fut = item.future
            if fut is not None and not (fut.running() or fut.set_running_or_notify_cancel()):
                continue  # abandoned (cancelled) before it was sent
            req = new_req()
            return Unit(p.encode(item.make(req, next_seq - 1)), [], item, next_seq - 1, req)
        if not recs:
            return None
        unit = self._data(recs, next_seq)
        if unit is None:  # a unit larger than a frame went back as independent records
            return self.take(next_seq, new_req)
        return unit

    def give_back(self, unit: Unit) -> None:
        """Put a unit's items back at the front of the queue (give back the last unit first)."""
        if unit.call is not None:
            self.queue.appendleft(unit.call)
        else:
            self.queue.extendleft(reversed(unit.records if unit.items is None else unit.items))

    def _data(self, items: list[Any], seq: int) -> Unit | None:
        cid = self.client_id()
        k = len(items)
        frame, recs = self._encode(cid, seq, items)
        while len(frame) > self.max_bytes and k > 1:
            # shrink in proportion (with a margin), then halve until it fits; whole items only
            k = max(1, min(k // 2 + k % 2, k * self.max_bytes * 9 // (10 * len(frame))))
            frame, recs = self._encode(cid, seq, items[:k])
        if k < len(items):  # the rest goes back to the front, for the next frame
            self.queue.extendleft(reversed(items[k:]))
            items = items[:k]
        if len(frame) > self.max_bytes and type(items[0]) is UnitRecords:
            self.queue.extendleft(reversed(items[0].records))  # cannot go as one unit
            return None
        return Unit(frame, recs, None, seq, items=items)

    @staticmethod
    def _encode(cid: str, seq: int, items: list[Any]) -> tuple[bytes, list[list[Any]]]:
        recs: list[list[Any]] = []
        units: list[list[int]] = []
        for item in items:
            if type(item) is list:
                recs.append(item)
            else:
                units.append([len(recs), len(item.records)])
                recs.extend(item.records)
        return p.encode_data(cid, seq, recs, units), recs


def records_in(frame: bytes) -> int:
    """How many records a spool or wire frame carries (1 for an artifact, 0 for a request)."""
    try:
        msg = p.decode(frame, max_frame=2**31)
    except p.ProtocolError:
        return 0
    if isinstance(msg, p.Data):
        return len(msg.records)
    return 1 if isinstance(msg, p.LogArtifact) else 0


class Outbox:
    """The bounded send queue of one client and its overflow policy.

    ``wake()`` nudges the I/O thread (starting it if needed); ``stopped()`` says it is gone (a
    blocked ``put`` then stops waiting). The I/O thread sets ``idle`` while it sleeps, takes
    frames through ``maker`` and calls :meth:`space_freed` after it emptied part of the queue;
    the spool side sets ``spool_error`` while the spool cannot be written (None when it can).
    """

    def __init__(
        self,
        *,
        max_buffer: int,
        policy: str,
        maker: Callable[[deque[Any]], FrameMaker],
        wake: Callable[[], None],
        stopped: Callable[[], bool],
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.queue: deque[Any] = deque()
        self.max_buffer = max_buffer
        self.policy = policy
        self.maker = maker(self.queue)
        self._wake = wake
        self._stopped = stopped
        self.reset()

    def reset(self) -> None:
        """Empty, with fresh counters and locks (at start, and in a forked child: the parent's
        records are the parent's, its locks may be held by a thread that does not exist here)."""
        self.queue.clear()
        self.idle = True
        self._space = threading.Condition()
        self.space_waiters = 0
        self._drop_lock = threading.Lock()
        self.dropped = 0  # records dropped, by either policy
        self._lost = 0  # records dropped because neither daemon nor spool took them; unreported
        self.lost_total = 0
        self.lost_reason = ""
        self.spool_error: str | None = None  # why the spool cannot be written now

    def __len__(self) -> int:
        return len(self.queue)

    def put(self, record: list[Any]) -> None:
        """Queue one record in wire form. Waits only with policy ``block`` on a full buffer."""
        q = self.queue
        if len(q) >= self.max_buffer:
            self._overflow()
        q.append(record)
        if self.idle:
            self._wake()

    def should_spill(self) -> bool:
        """Policy spool, and the queue at its bound: the I/O thread moves its oldest part to the
        spool. At the bound, not only over it: a blocked ``put`` waits while len >= max_buffer,
        and must not wait for a spill that never comes."""
        return self.policy == "spool" and len(self.queue) >= self.max_buffer

    def put_unit(self, records: list[list[Any]]) -> None:
        """Queue records of one run that commit all-or-nothing (counts as one item)."""
        q = self.queue
        if len(q) >= self.max_buffer:
            self._overflow()
        q.append(UnitRecords(records))
        if self.idle:
            self._wake()

    def put_control(self, item: Control) -> None:
        """Queue a request or a sequenced control message (never dropped, never waits)."""
        self.queue.append(item)
        self._wake()

    def take_all(self, next_seq: int, new_req: Callable[[], int], down_to: int = 0) -> list[Unit]:
        """Frame the front of the queue until at most ``down_to`` items are left (seqs from
        ``next_seq`` on, in order); the caller keeps or gives back every unit."""
        units: list[Unit] = []
        seq = next_seq - 1
        while len(self.queue) > down_to:
            unit = self.maker.take(seq + 1, new_req)
            if unit is None:
                break
            units.append(unit)
            if unit.sequenced:
                seq = unit.seq
        return units

    def give_back(self, units: list[Unit]) -> None:
        for unit in reversed(units):
            self.maker.give_back(unit)

    def take_lost(self) -> int:
        """Records lost (dropped with no daemon and no spool) since the last call."""
        with self._drop_lock:
            lost, self._lost = self._lost, 0
        return lost

    def space_freed(self) -> None:
        """The I/O thread took from the queue (or stopped): wake ``put`` calls waiting for room."""
        with self._space:
            self._space.notify_all()

    def _overflow(self) -> None:
        full = len(self.queue) >= 2 * self.max_buffer
        if self.policy == "drop-oldest":
            self._drop_oldest(self.max_buffer)
        elif self.policy == "spool" and full and self.spool_error is not None:
            self._drop_oldest(2 * self.max_buffer)  # no daemon, no spool: memory is the bound
        elif self.policy == "block" or full:
            self._wait_for_space()  # spool: only if the I/O thread cannot keep up at all
        elif self.spool_error is None:  # (else the I/O thread retries the spool on a timer)
            self._wake()  # the I/O thread moves the oldest part of the queue to the spool

    def _wait_for_space(self) -> None:
        self._wake()  # starts the I/O thread if needed
        with self._space:
            self.space_waiters += 1
            try:
                while len(self.queue) >= self.max_buffer and not self._stopped():
                    self._wake()
                    self._space.wait(0.1)
            finally:
                self.space_waiters -= 1

    def _drop_oldest(self, bound: int) -> None:
        q = self.queue
        with self._drop_lock:
            n = 0
            while len(q) >= bound:
                try:
                    item = q.popleft()
                except IndexError:
                    break
                if type(item) is UnitRecords:  # dropped whole
                    n += len(item.records)
                    continue
                if type(item) is not list:  # never drop a control request
                    q.appendleft(item)
                    break
                n += 1
            if not n:
                return
            first = self.dropped == 0
            self.dropped += n
            if self.policy != "drop-oldest":
                first = self.lost_total == 0
                self._lost += n
                self.lost_total += n
                self.lost_reason = self.spool_error or "unknown"
        if not first:
            return
        if self.policy == "drop-oldest":
            _log.warning(
                "tracker-client: buffer full (%d records); dropping the oldest records "
                "(policy drop-oldest); further drops are counted, not logged",
                self.max_buffer,
            )
        else:
            _log.warning(
                "tracker-client: no daemon takes the data and the spool cannot be written (%s); "
                "%d records are held in memory and the oldest beyond that are DROPPED; the next "
                "flush() or end() raises RecordsDropped with the count",
                self.spool_error,
                2 * self.max_buffer,
            )
