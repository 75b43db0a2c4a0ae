"""Queue → frames: the one path from the client's queue to protocol frames within the daemon's
limits, used for sending, for spilling to the spool and for the spool written at exit.

:class:`FrameMaker` takes items off the front of the queue only to frame them: a run of records
becomes one ``data`` frame of at most ``max_records`` records and ``max_bytes`` bytes; a control
item (a request or a sequenced message such as an artifact) becomes its own frame. The caller then
places the frame (sends it, or writes it to the spool) and either keeps it — only then does the
frame's seq count as used — or calls :meth:`FrameMaker.give_back`, which puts the items back at
the front of the queue in their order. A frame is encoded with the seq the caller passes as
``next_seq`` (its last used seq + 1), so a frame that could not be placed leaves no gap in the
client's seqs. Pure: no I/O, no clock, no threads of its own (producers may append to the queue's
right end meanwhile).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from . import protocol as p

__all__ = ["RECORDS_PER_FRAME", "Control", "FrameMaker", "Unit", "records_in"]

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


@dataclass(frozen=True, slots=True)
class Unit:
    """One frame made from the queue. ``seq``: for a data frame or a sequenced control item, the
    seq it carries; for a request, the last seq before it (a barrier's ``seq``)."""

    frame: bytes
    records: list[list[Any]]  # the records of a data frame; empty for a control item
    call: Control | None
    seq: int
    req: int = 0

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

    def take(self, next_seq: int, new_req: Callable[[], int]) -> Unit | None:
        """The next frame from the front of the queue, or None when the queue is empty. A request
        whose caller gave up (its future is cancelled) is dropped from the queue, not framed."""
        q = self.queue
        recs: list[list[Any]] = []
        while q and len(recs) < self.max_records:
            try:
                item = q.popleft()
            except IndexError:  # a producer dropped the last item meanwhile (drop-oldest)
                break
            if type(item) is list:
                recs.append(item)
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
        return self._data(recs, next_seq)

    def give_back(self, unit: Unit) -> None:
        """Put a unit's items back at the front of the queue (give back the last unit first)."""
        if unit.call is not None:
            self.queue.appendleft(unit.call)
        else:
            self.queue.extendleft(reversed(unit.records))

    def _data(self, recs: list[list[Any]], seq: int) -> Unit:
        cid = self.client_id()
        frame = p.encode_data(cid, seq, recs)
        n = len(recs)
        while len(frame) > self.max_bytes and n > 1:
            # shrink in proportion (with a margin), then halve until it fits
            n = max(1, min(n // 2 + n % 2, n * self.max_bytes * 9 // (10 * len(frame))))
            frame = p.encode_data(cid, seq, recs[:n])
        if n < len(recs):  # the rest goes back to the front, for the next frame
            self.queue.extendleft(reversed(recs[n:]))
            recs = recs[:n]
        return Unit(frame, recs, None, seq)


def records_in(frame: bytes) -> int:
    """How many records a spool or wire frame carries (1 for an artifact, 0 for a request)."""
    try:
        msg = p.decode(frame, max_frame=2**31)
    except p.ProtocolError:
        return 0
    if isinstance(msg, p.Data):
        return len(msg.records)
    return 1 if isinstance(msg, p.LogArtifact) else 0
