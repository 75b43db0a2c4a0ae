"""Per-run buffering of records into MLflow ``log_batch`` calls (pure: no I/O, no clock).

The daemon hands every decoded DATA frame to :meth:`Batcher.add` together with its
:class:`Origin` (client id and frame seq) and the current monotonic time, and asks
:meth:`Batcher.pop_ready` for batches to send. Time only ever comes in as an argument, so the
module is deterministic and trivially testable.

Rules
-----
Buffering
    Records are buffered per ``run_id``, one FIFO per kind (metrics, params, tags).

Batch shape
    MLflow limits one ``log_batch`` call to ``max_metrics`` (1000) metrics, ``max_params`` (100)
    params, ``max_tags`` (100) tags and ``max_entities`` (1000) entities in total. A batch takes,
    from one run, in FIFO order within each kind: params up to ``max_params``, then tags up to
    ``max_tags`` (and what is left of ``max_entities``), then metrics up to
    ``min(max_metrics, max_entities - params - tags)``. 2,500 metrics and 250 params therefore
    become ``[100 p + 900 m]``, ``[100 p + 900 m]``, ``[50 p + 700 m]``. Records that do not fit
    stay buffered in their order. Kinds are independent in MLflow, so a metric may be sent
    before a param that arrived earlier, but order within a kind is never changed.
    :attr:`Batch.items` lists the records of one batch in their exact arrival order.

Params are write-once
    Per run, the batcher remembers every param key -> value it has accepted (buffered, handed
    out in a batch, or declared by :meth:`Batcher.seed_params` for a resumed run). A param whose
    key is already known is not buffered: with the same value it is settled at once as a no-op
    (``Settled(..., failure=None)``); with another value it is settled at once with an
    ``INVALID_PARAMETER_VALUE`` :class:`~tracker_client.protocol.Failure`. The first of two
    same-key params in one :meth:`~Batcher.add` call wins. :meth:`Batcher.param_failed`
    forgets a key whose commit failed, so it may be logged again. The memory of a run lasts
    until :meth:`Batcher.forget_run`; the daemon calls :meth:`Batcher.release_run` when the run
    ends, which forgets it once nothing of it is buffered.

Units
    :meth:`Batcher.add_unit` buffers the records of one *unit* (one ``tracker://`` ``log_batch``
    call, PROTOCOL.md 5.2: all-or-nothing). A unit is never split and never merged: it becomes
    one :class:`Batch` of its own (``unit`` True), handed out after every record of its run that
    arrived before it and before any that arrived after it. Params of a unit: if a key is known
    with another value the whole unit settles at once as failed — one reported failure, with
    MLflow's message listing every changed key, the other records settled unreported; a key
    known with the same value is settled as a no-op and left out of the unit; a unit with
    duplicate param keys is buffered untouched (the sink refuses it with MLflow's message).

When a run is due
    A run with buffered records is *due* when ``now >= oldest_arrival + max_age`` (its oldest
    buffered record has waited ``max_age``), when it holds enough to fill a batch (metrics >=
    ``max_metrics`` or params >= ``max_params`` or tags >= ``max_tags`` or all records >=
    ``max_entities``), or when it is *expedited*. :meth:`Batcher.expedite` marks a run (or all
    runs) with buffered records; it stays expedited, including for records that arrive later,
    until its buffer is empty. Expediting a run with nothing buffered does nothing.

Fairness
    :meth:`Batcher.pop_ready` returns one batch from the due run whose oldest buffered record
    is the oldest, so a busy run cannot starve a quiet one.

Cost
    ``add`` is O(records); ``pop_ready`` is O(batch size + log(runs)) (a heap of runs ordered by
    oldest record, plus a set of runs due by size or expedite); ``next_deadline`` is amortised
    O(1). Buffers are lists with a moving head (sliced out in one C call per batch) plus one
    small "chunk" tuple per contiguous same-kind stretch of one ``add`` call, which records the
    arrival time and the arrival order across kinds.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Final

from tracker_client.protocol import Metric, Param, Record, Tag

from .batches import (
    INVALID_PARAMETER_VALUE,
    Batch,
    Origin,
    Settled,
    _conflict,
    _Item,
    _Lane,
    _PendingUnit,
    _Run,
    _unit_conflict,
    unit_failure,
)

__all__ = ["Batch", "Batcher", "Origin", "Settled", "unit_failure"]


class Batcher:
    """Buffers records per run and cuts them into MLflow-sized batches (see module docstring)."""

    def __init__(
        self,
        *,
        max_age: float = 0.05,
        max_metrics: int = 1000,
        max_params: int = 100,
        max_tags: int = 100,
        max_entities: int = 1000,
    ) -> None:
        if not (isinstance(max_age, int | float) and math.isfinite(max_age) and max_age >= 0):
            raise ValueError(f"max_age must be a finite number >= 0, got {max_age!r}")
        for name, limit in (
            ("max_metrics", max_metrics),
            ("max_params", max_params),
            ("max_tags", max_tags),
            ("max_entities", max_entities),
        ):
            if type(limit) is not int or limit < 1:
                raise ValueError(f"{name} must be an int >= 1, got {limit!r}")
        self._max_age = float(max_age)
        self._max_metrics = max_metrics
        self._max_params = max_params
        self._max_tags = max_tags
        self._max_entities = max_entities
        self._runs: dict[str, _Run] = {}  # every run with state (buffer and/or known params)
        self._heap: list[tuple[float, int, _Run]] = []  # (oldest arrival, token, run); lazy
        self._urgent: set[_Run] = set()  # active runs due by size or expedite
        self._serial = 0
        self._pending = 0
        self._active = 0

    # ----------------------------------------------------------------------------------------
    # Input

    def add(self, origin: Origin, records: Iterable[Record], now: float) -> list[Settled]:
        """Buffer ``records`` (all from the DATA frame ``origin``) that arrived at ``now``.

        Returns the records settled at once instead of being buffered: params whose key is
        already known for the run (no-op if same value, ``INVALID_PARAMETER_VALUE`` if not).
        """
        settled: list[Settled] = []
        runs = self._runs
        serial = self._serial
        run_id: str | None = None
        run = _NO_RUN
        lane: _Lane | None = None
        touched: list[_Run] = []
        added = 0
        try:
            for rec in records:
                if rec.run_id != run_id:
                    run_id = rec.run_id
                    found = runs.get(run_id)
                    if found is None:
                        found = runs[run_id] = _Run(run_id)
                    run = found
                    touched.append(run)
                    lane = None
                cls = type(rec)
                if cls is Metric:
                    target = run.metrics
                elif type(rec) is Param:  # (not `cls`: mypy narrows `rec` only this way)
                    old = run.known.get(rec.key)
                    if old is not None:
                        fail = None if old == rec.value else _conflict(rec, old)
                        settled.append(Settled(origin, rec, fail))
                        continue
                    run.known[rec.key] = rec.value
                    target = run.params
                elif cls is Tag:
                    target = run.tags
                else:
                    raise TypeError(f"not a record: {rec!r}")
                if target is not lane:
                    lane = target
                    serial += 1
                    lane.chunks.append((lane.base + len(lane.buf), now, serial))
                lane.buf.append((rec, origin))
                added += 1
        finally:  # even if a bad record raised, account for the ones buffered before it
            self._serial = serial
            if added:
                self._activate(touched, added, now)
        return settled

    def add_unit(self, origin: Origin, records: list[Record], now: float) -> list[Settled]:
        """Buffer one unit (records of one run, from the DATA frame ``origin``; see "Units" in
        the module docstring). Returns the records settled at once: all of them when a param
        changes a known one, else the params already known with the same value."""
        if not records:
            return []
        run_id = records[0].run_id
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run(run_id)
        params = [r for r in records if type(r) is Param]
        settled: list[Settled] = []
        if len({r.key for r in params}) == len(params):  # duplicates: the sink refuses them
            changed = [
                (r, old) for r in params if (old := run.known.get(r.key)) not in (None, r.value)
            ]
            if changed:
                at = records.index(changed[0][0])
                message = _unit_conflict(run_id, changed)
                return unit_failure(origin, records, at, INVALID_PARAMETER_VALUE, message)
            kept: list[Record] = []
            for rec in records:
                if type(rec) is Param:
                    if rec.key in run.known:  # the same value: a no-op
                        settled.append(Settled(origin, rec, None))
                        continue
                    run.known[rec.key] = rec.value
                kept.append(rec)
            records = kept
        if not records:
            return settled
        run.units.append(_PendingUnit([(r, origin) for r in records], now, run.marks()))
        run.unit_records += len(records)
        self._activate([run], len(records), now)
        return settled

    def seed_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Declare params already stored in MLflow for ``run_id`` (a resumed run). They count as
        known: re-logging one with the same value is a no-op, with another value a failure.
        Seeded values replace what the batcher remembered for those keys."""
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run(run_id)
        run.known.update(params)

    def param_failed(self, run_id: str, key: str) -> None:
        """Forget param ``key`` of ``run_id``: its commit failed, so it may be logged again."""
        run = self._runs.get(run_id)
        if run is not None:
            run.known.pop(key, None)

    def forget_run(self, run_id: str) -> None:
        """Drop all state of ``run_id``: its known params and, if any, its buffered records.
        Dropped records are discarded without being settled, so call this only once the run's
        buffer is empty (e.g. after its end-of-run flush) unless they are meant to be lost."""
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        if run.active:
            self._pending -= run.buffered()
            self._active -= 1
            self._urgent.discard(run)
        run.active = False
        run.token = -1  # its heap entry becomes stale
        run.known.clear()
        run.metrics = _Lane()
        run.params = _Lane()
        run.tags = _Lane()
        run.units.clear()
        run.unit_records = 0

    def release_run(self, run_id: str) -> bool:
        """Forget an ended run's param memory if nothing of it is buffered; True if forgotten.
        (A later changed param of that run is then refused by MLflow instead of here.)"""
        run = self._runs.get(run_id)
        if run is None or run.buffered():
            return False
        self.forget_run(run_id)
        return True

    def expedite(self, run_id: str | None = None) -> None:
        """Make ``run_id`` (every run when ``None``) due now, and keep it due, including for
        records that arrive later, until its buffer has been emptied. No effect on a run with
        nothing buffered."""
        if run_id is None:
            candidates: Iterable[_Run] = self._runs.values()
        else:
            found = self._runs.get(run_id)
            candidates = () if found is None else (found,)
        for run in candidates:
            if run.active:
                run.expedited = True
                self._urgent.add(run)

    # ----------------------------------------------------------------------------------------
    # Output

    def pop_ready(self, now: float) -> Batch | None:
        """One batch from the due run with the oldest buffered record, or ``None`` if no run is
        due at ``now``."""
        top = self._top()
        if top is None:
            return None
        run = top[2]
        if not (top[0] + self._max_age <= now or run in self._urgent):
            if not self._urgent:
                return None
            run = min(self._urgent, key=_age_order)
        return self._take(run)

    def next_deadline(self) -> float | None:
        """The earliest monotonic time at which a run becomes due by age; if a run is already
        due by size or expedite, the arrival time of the oldest buffered record (<= now).
        ``None`` when nothing is buffered."""
        top = self._top()
        if top is None:
            return None
        return top[0] if self._urgent else top[0] + self._max_age

    @property
    def max_age(self) -> float:
        """How long a record waits before its run is due (may be changed at any time)."""
        return self._max_age

    @max_age.setter
    def max_age(self, value: float) -> None:
        self._max_age = float(value)

    @property
    def pending(self) -> int:
        """Records buffered, not yet handed out in a batch."""
        return self._pending

    @property
    def runs(self) -> int:
        """Runs with buffered records."""
        return self._active

    # ----------------------------------------------------------------------------------------
    # Internals

    def _activate(self, touched: list[_Run], added: int, now: float) -> None:
        """Bookkeeping after ``add`` buffered ``added`` records of the ``touched`` runs."""
        self._pending += added
        for run in touched:
            if not run.active:
                if not run.holds():
                    continue  # only already-known params for this run
                run.active = True
                self._active += 1
                self._serial += 1
                run.token = self._serial
                run.oldest = now
                heapq.heappush(self._heap, (now, run.token, run))
            if run not in self._urgent and self._full(run):
                self._urgent.add(run)

    def _full(self, run: _Run) -> bool:
        m, p, t = len(run.metrics), len(run.params), len(run.tags)
        return (
            m >= self._max_metrics
            or p >= self._max_params
            or t >= self._max_tags
            or m + p + t + run.unit_records >= self._max_entities
        )

    def _top(self) -> tuple[float, int, _Run] | None:
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[2].token == entry[1]:
                return entry
            heapq.heappop(heap)
        return None

    def _take(self, run: _Run) -> Batch:
        mp, pp, tp = run.metrics, run.params, run.tags
        before_m, before_p, before_t = len(mp), len(pp), len(tp)
        unit: _PendingUnit | None = None
        if run.units:  # only the records that arrived before the first unit, or the unit
            marks = run.units[0].marks
            before_m = min(before_m, marks[0] - mp.base - mp.head)
            before_p = min(before_p, marks[1] - pp.base - pp.head)
            before_t = min(before_t, marks[2] - tp.base - tp.head)
            if before_m <= 0 and before_p <= 0 and before_t <= 0:
                unit = run.units.popleft()
                run.unit_records -= len(unit.items)
        n_p = min(before_p, self._max_params, self._max_entities)
        n_t = min(before_t, self._max_tags, self._max_entities - n_p)
        n_m = min(before_m, self._max_metrics, self._max_entities - n_p - n_t)
        if unit is not None:
            items = unit.items
        elif n_p == 0 and n_t == 0:
            items = mp.take(n_m, None)
        elif n_m == 0 and n_t == 0:
            items = pp.take(n_p, None)
        elif n_m == 0 and n_p == 0:
            items = tp.take(n_t, None)
        else:  # several kinds: interleave their stretches back into arrival order
            segments: list[tuple[int, int, int, list[_Item]]] = []
            for lane, n in ((mp, n_m), (pp, n_p), (tp, n_t)):
                if n:
                    lane.take(n, segments)
            segments.sort(key=_serial_of)
            items = []
            for _, lo, hi, out in segments:
                items += out[lo:hi]
        self._pending -= len(items)
        old_token = run.token
        if run.holds():
            run.oldest = run.oldest_arrival()
            self._serial += 1
            run.token = self._serial
            entry = (run.oldest, run.token, run)
            heap = self._heap
            if heap[0][1] == old_token:  # usual case: the run was the heap top
                heapq.heapreplace(heap, entry)
            else:
                heapq.heappush(heap, entry)
                if len(heap) > 2 * self._active + 64:
                    self._heap = [e for e in heap if e[2].token == e[1]]
                    heapq.heapify(self._heap)
            if not run.expedited and not self._full(run):
                self._urgent.discard(run)
        else:
            run.active = False
            run.expedited = False
            run.token = -1
            self._active -= 1
            self._urgent.discard(run)
        return Batch(run.run_id, items, unit is not None)


def _age_order(run: _Run) -> tuple[float, int]:
    return run.oldest, run.token


def _serial_of(segment: tuple[int, int, int, list[_Item]]) -> int:
    return segment[0]


_NO_RUN: Final = _Run("")  # placeholder before the first record of an add() call
