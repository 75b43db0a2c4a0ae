"""Barrier waiters: a flush, end_run or plugin call of a client waits until every sequenced
message of that client up to a seq is done (``committed_upto >= seq``), or a timeout.

    wait(client, seq) ─► already done? True
                      └► expedite(client): make that client's buffered runs due now (only its own)
                         park an event; release(client) sets the events whose seq is done

Each client's waiters are a :class:`WaiterQueue` (pure): a heap by seq, so ``release`` touches only
the waiters it wakes (O(log n) each), and a waiter that times out is only marked gone (O(1)); gone
entries are dropped when they reach the top of the heap, or all at once when they outnumber the
live ones (amortised O(1) per removal). No operation scans every waiter of a client: a storm of
barriers that expire together costs time linear in their number, never quadratic. How many
barriers a client may hold at once is bounded by its requests (control.py, request_slots.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

__all__ = ["Barriers", "WaiterQueue"]

T = TypeVar("T")
COMPACT_MIN = 64  # gone entries a queue may hold before it is compacted


@dataclass(slots=True, eq=False)
class _Entry(Generic[T]):
    seq: int
    order: int
    token: T
    live: bool = True

    def __lt__(self, other: _Entry[T]) -> bool:
        return (self.seq, self.order) < (other.seq, other.order)


@dataclass(slots=True)
class WaiterQueue(Generic[T]):
    """Waiters of one client by seq: ``add`` and ``pop_done`` O(log n), ``remove`` O(1)
    amortised. ``len()`` counts the live waiters."""

    _heap: list[_Entry[T]] = field(default_factory=list)
    _live: int = 0
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return self._live

    @property
    def entries(self) -> int:
        """Entries held, live or gone (bounded by 2 x live + ``COMPACT_MIN``)."""
        return len(self._heap)

    def add(self, seq: int, token: T) -> _Entry[T]:
        entry = _Entry(seq, next(self._order), token)
        heapq.heappush(self._heap, entry)
        self._live += 1
        return entry

    def remove(self, entry: _Entry[T]) -> None:
        """Forget a waiter that gave up (a no-op once it was popped or removed)."""
        if not entry.live:
            return
        entry.live = False
        self._live -= 1
        gone = len(self._heap) - self._live
        if gone > COMPACT_MIN and gone > self._live:
            self._heap = [e for e in self._heap if e.live]
            heapq.heapify(self._heap)

    def pop_done(self, upto: int) -> list[T]:
        """The tokens of the live waiters with ``seq <= upto``, removed, in seq order."""
        heap, out = self._heap, []
        while heap and heap[0].seq <= upto:
            entry = heapq.heappop(heap)
            if entry.live:
                entry.live = False
                self._live -= 1
                out.append(entry.token)
        while heap and not heap[0].live:  # gone entries on top: drop them now
            heapq.heappop(heap)
        return out


class Barriers:
    def __init__(
        self,
        committed_upto: Callable[[str], int],
        *,
        expedite: Callable[[str], None],
        timeout: float,
    ) -> None:
        self._committed_upto = committed_upto
        self._expedite = expedite
        self.timeout = timeout
        self._waiters: dict[str, WaiterQueue[anyio.Event]] = {}
        self._count = 0

    @property
    def waiting(self) -> int:
        return self._count

    def release(self, client_id: str) -> None:
        """Wake the waiters of ``client_id`` whose seq is done now."""
        queue = self._waiters.get(client_id)
        if queue is None:
            return
        woken = queue.pop_done(self._committed_upto(client_id))
        self._count -= len(woken)
        for event in woken:
            event.set()
        if not queue:
            del self._waiters[client_id]

    async def wait(self, client_id: str, seq: int, within: float | None = None) -> bool:
        """True once every message of ``client_id`` up to ``seq`` is done; False after
        ``within`` s (default: the barrier timeout)."""
        if self._committed_upto(client_id) >= seq:
            return True
        self._expedite(client_id)
        event = anyio.Event()
        queue = self._waiters.get(client_id)
        if queue is None:
            queue = self._waiters[client_id] = WaiterQueue()
        entry = queue.add(seq, event)
        self._count += 1
        try:
            with anyio.move_on_after(self.timeout if within is None else within):
                await event.wait()
                return True
            return event.is_set()  # woken just as the deadline passed
        finally:
            if entry.live:  # timed out or cancelled: not woken
                queue.remove(entry)
                self._count -= 1
                if not queue and self._waiters.get(client_id) is queue:
                    del self._waiters[client_id]
