"""What the batcher (batcher.py) buffers and hands out (pure: no I/O, no clock): where a record
came from (:class:`Origin`), a record settled without MLflow (:class:`Settled`), one ``log_batch``
call (:class:`Batch`), the per-run buffers (one lane per record kind, a pending unit) and the
failures of a param conflict. The rules are in batcher.py's docstring.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, TypeAlias

from tracker_client.protocol import Failure, Metric, Param, Record, Tag

__all__ = ["INVALID_PARAMETER_VALUE", "Batch", "Origin", "Settled", "unit_failure"]

INVALID_PARAMETER_VALUE: Final = "INVALID_PARAMETER_VALUE"
_MAX_SHOWN: Final = 100  # characters of a param value quoted in an error message
_COMPACT_AT: Final = 1024  # a lane's consumed prefix is dropped once it is this long and > half


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: one DATA frame of one client."""

    client_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class Settled:
    """A record that finished without going to MLflow.

    ``failure`` is ``None`` when the record was accepted as a no-op (a param re-logged with the
    value it already has).
    """

    origin: Origin
    record: Record
    failure: Failure | None
    reported: bool = True  # False: another record of a failed unit (reported once, not here)


_Item: TypeAlias = tuple[Record, Origin]


@dataclass(slots=True)
class Batch:
    """One MLflow ``log_batch`` call for one run.

    ``items`` holds every record this batch settles, with its origin, in arrival order. The
    :attr:`metrics`, :attr:`params` and :attr:`tags` properties are what to pass to
    ``log_batch``; they are computed from ``items`` on each access.
    """

    run_id: str
    items: list[_Item]
    unit: bool = False  # the records of one unit: one log_batch call, all-or-nothing

    @property
    def metrics(self) -> list[Metric]:
        return [r for r, _ in self.items if type(r) is Metric]

    @property
    def params(self) -> list[Param]:
        return [r for r, _ in self.items if type(r) is Param]

    @property
    def tags(self) -> list[Tag]:
        """Every tag record, in arrival order, duplicate keys included: MLflow's ``log_batch``
        applies its tags in order (``_set_tags``: the last value of a key wins, and each
        ``mlflow.runName`` goes through ``set_tag``, where an empty name changes nothing), which
        is exactly the result of the separate calls that logged them. Collapsing a key to its
        last value would lose a rename followed by an empty name."""
        return [r for r, _ in self.items if type(r) is Tag]

    def split(self) -> tuple[Batch, Batch]:
        """The first and second half of ``items`` (the first half is the smaller one when the
        length is odd), for isolating a bad record by bisection. Needs at least two items."""
        n = len(self.items)
        if n < 2:
            raise ValueError(f"cannot split a batch of {n} record(s)")
        if self.unit:
            raise ValueError("a unit is committed or fails as one: it is never split")
        mid = n // 2
        return Batch(self.run_id, self.items[:mid]), Batch(self.run_id, self.items[mid:])

    def __len__(self) -> int:
        return len(self.items)


class _Lane:
    """The FIFO of one kind of record of one run.

    ``buf[head:]`` are the buffered items. Positions are also counted absolutely (``base`` is
    how many items were dropped from the front of ``buf``), so that ``chunks`` can refer to
    them: each chunk ``(start, arrival_time, serial)`` marks the first item of a contiguous
    stretch of records of this kind appended by one ``add`` call. ``serial`` is unique and
    increasing across all lanes of all runs, which gives the arrival order across kinds.
    Invariant: the lane is empty if and only if ``chunks`` is empty.
    """

    __slots__ = ("base", "buf", "chunks", "head")

    def __init__(self) -> None:
        self.buf: list[_Item] = []
        self.head = 0
        self.base = 0
        self.chunks: deque[tuple[int, float, int]] = deque()

    def __len__(self) -> int:
        return len(self.buf) - self.head

    def take(self, n: int, segments: list[tuple[int, int, int, list[_Item]]] | None) -> list[_Item]:
        """Remove and return the first ``n`` (>= 1) items. If ``segments`` is given, append
        ``(serial, lo, hi, out)`` for each chunk stretch ``out[lo:hi]`` of the result."""
        buf = self.buf
        head = self.head
        end = head + n
        out = buf[head:end]
        first = self.base + head
        last = first + n
        total = self.base + len(buf)
        chunks = self.chunks
        pos = first
        while pos < last:
            serial = chunks[0][2]
            nxt = chunks[1][0] if len(chunks) > 1 else total
            stop = nxt if nxt < last else last
            if segments is not None:
                segments.append((serial, pos - first, stop - first, out))
            if nxt <= last:
                chunks.popleft()
            pos = stop
        if end == len(buf):
            buf.clear()
            self.base += end
            self.head = 0
        elif end >= _COMPACT_AT and end * 2 > len(buf):
            del buf[:end]
            self.base += end
            self.head = 0
        else:
            self.head = end
        return out


@dataclass(slots=True)
class _PendingUnit:
    """A buffered unit: its records, when it arrived, and where each lane ended then (absolute
    positions: the lane records before them arrived before the unit)."""

    items: list[_Item]
    arrival: float
    marks: tuple[int, int, int]  # metrics, params, tags


class _Run:
    """Everything the batcher knows about one run."""

    __slots__ = (
        "active",
        "expedited",
        "known",
        "metrics",
        "oldest",
        "params",
        "run_id",
        "tags",
        "token",
        "unit_records",
        "units",
    )

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics = _Lane()
        self.params = _Lane()
        self.tags = _Lane()
        self.known: dict[str, str] = {}
        self.active = False  # has buffered records
        self.expedited = False
        self.oldest = 0.0  # arrival time of the oldest buffered record (when active)
        self.token = -1  # serial of this run's live heap entry; -1 when not in the heap
        self.units: deque[_PendingUnit] = deque()
        self.unit_records = 0  # records in ``units``

    def oldest_arrival(self) -> float:
        times = [lane.chunks[0][1] for lane in (self.metrics, self.params, self.tags) if lane]
        if self.units:
            times.append(self.units[0].arrival)
        return min(times)

    def buffered(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags) + self.unit_records

    def holds(self) -> bool:
        return bool(self.metrics or self.params or self.tags or self.units)

    def marks(self) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            lane.base + len(lane.buf) for lane in (self.metrics, self.params, self.tags)
        )


def _shown(value: str) -> str:
    return value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "..."


def _unit_conflict(run_id: str, changed: list[tuple[Param, str]]) -> str:
    """MLflow's ``_log_params`` message for the params of one call that change stored ones."""
    listed = [{"key": r.key, "old_value": old, "new_value": r.value} for r, old in changed]
    return (
        "Changing param values is not allowed. Params were already"
        f" logged='{listed}' for run ID='{run_id}'."
    )


def unit_failure(
    origin: Origin, records: list[Record], index: int, code: str, message: str
) -> list[Settled]:
    """Every record of a failed unit settled: ``records[index]`` with the reported failure, the
    others with the same error, unreported (the unit is reported once)."""
    out = []
    for i, rec in enumerate(records):
        text = message if i == index else f"not stored: its log_batch call failed: {message}"
        out.append(Settled(origin, rec, Failure(rec, code, text), reported=i == index))
    return out


def _conflict(rec: Param, old: str) -> Failure:
    return Failure(
        rec,
        INVALID_PARAMETER_VALUE,
        f"param {rec.key!r} was already logged with value {_shown(old)!r} for run {rec.run_id}; "
        f"MLflow does not allow changing it to {_shown(rec.value)!r}",
    )
