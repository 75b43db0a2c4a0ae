"""The committer: the sink lanes (lanes.py) and what commits their batches.

    add(origin, records) ─► lanes.add ─► wake the lanes that got records (only those)
    lane loop: the batcher's max age from the arrival rate (pacing.py), then pop_ready: with a
      SQL writer, once a batch is due every buffered batch, up to TXN_RECORDS
      a batch of an offline run whose start_run may still come (offline_ids.py: Waiting) is
        parked, with the later batches of that run, until it is handled or its deadline passes;
        the lane goes on with the others (nobody waits for an unknown offline id)
      SQL writer ─► commit_all: look up the run ids, backend.write(write_entries): ONE transaction
        for the batches of many runs; the writer decides conflicts before writing and reports, per
        batch, ok / the run is gone / which records failed ─► settlement
        the database refuses the transaction as a whole (a permanent error) ─► count a fallback,
        commit each batch as below
      log_batch ─► commit: look up the run id, backend.write(log_batch)
        ok ─► settlement.committed          permanent error ─► bisect the batch until the bad
        (a batch of one record, or an error about the whole run) ─► each record failed
      a batch holding a metric with a model_id (MLflow 3 logged-model metrics) always goes to
      MLflow's log_batch, in its place in the order of the run's batches
    expedite_client(client) ─► only the runs that client touched become due now (a barrier)
    add_unit(origin, records) ─► one unit (a tracker:// log_batch call) is one batch: in one SQL
      transaction, decided as a whole by the writer, or one MLflow log_batch call; it is never
      bisected, and when it fails it is reported once (its other records settle unreported)

Retries of transient errors happen inside ``backend.write`` (forever: a batch is never given up
on while the backend is merely unavailable).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from tracker_client import protocol as p

from ..errors import PermanentSinkError, RunGone, SinkError
from ..ops.status import Counters
from .backend import Backend
from .batcher import Batch, Origin, Settled, unit_failure
from .lanes import Lanes
from .offline_ids import Waiting, is_offline
from .pacing import CommitPacer
from .wakeup import Wakeup

__all__ = ["TXN_RECORDS", "Committer", "Settles"]

log = logging.getLogger("tracker_daemon")

# Records per SQL transaction at most: large enough that a transaction's fixed cost (the commit,
# its fsync, the reads of runs and latest metrics) is small per record; small enough that a
# transaction takes well under a second on SQLite, so barriers and readers are not held up.
TXN_RECORDS = 20_000


class Settles(Protocol):
    """What the committer needs from settlement.py."""

    def committed(self, per_origin: Mapping[Origin, int]) -> None: ...

    def settle(
        self,
        origin: Origin,
        run_id: str | None,
        record: p.Record | None,
        failure: p.Failure | None,
        *,
        reported: bool = True,
    ) -> None: ...


class Committer:
    def __init__(
        self,
        lanes: Lanes,
        backend: Backend,
        settlement: Settles,
        counters: Counters,
        *,
        log_batch: Callable[..., Any],
        write_entries: Callable[..., list[Any]] | None = None,
        lookup: Callable[[str, bool], str | Waiting | RunGone],
        replayed: Callable[[Origin], bool] = lambda origin: False,
        runs_of: Callable[[str], Iterable[str]],
        after_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        pacer: CommitPacer | None = None,
    ) -> None:
        self.lanes = lanes
        self.backend = backend
        self.settlement = settlement
        self.counters = counters
        self._log_batch = log_batch
        # the SQL writer's transaction, when in use (set once the sink is open)
        self.write_entries = write_entries
        self._lookup_run = lookup  # run_service.RunService.lookup
        self._replayed = replayed  # was this frame received before a restart (feeder.py)?
        self._runs_of = runs_of
        self._after_commit = after_commit
        self._clock = clock
        self.pacer = pacer  # None: the batcher's max age stays as configured
        self.wakes = [Wakeup() for _ in range(len(lanes))]
        self.idle = Wakeup()  # set when a lane finds nothing to do and nothing is committing
        self.committing = 0
        # batches of offline runs whose start_run may still come, in order, per offline id; the
        # ids whose start_run was handled since; per lane, the deadlines of its parked ids
        self._parked: dict[str, list[Batch]] = {}
        self.parked_records = 0
        self._handled: set[str] = set()
        self._deadlines: list[list[tuple[float, str]]] = [[] for _ in range(len(lanes))]

    # ------------------------------------------------------------------ input (event loop)

    def add(self, origin: Origin, records: list[p.Record]) -> None:
        """Buffer valid records of one message; records settled at once (a param re-logged
        with its value) are settled; the lanes that got records are woken."""
        now = self._clock()
        if self.pacer is not None:
            self.pacer.note(len(records), now)
        self._settle_now(self.lanes.add(origin, records, now))
        self._wake_for(records)

    def add_unit(self, origin: Origin, records: list[p.Record]) -> None:
        """Buffer one unit of a message (valid records of one run, all-or-nothing)."""
        now = self._clock()
        if self.pacer is not None:
            self.pacer.note(len(records), now)
        self._settle_now(self.lanes.add_unit(origin, records, now))
        self._wake_for(records)

    def _settle_now(self, settled: list[Settled]) -> None:
        for s in settled:
            rec = s.record
            self.settlement.settle(s.origin, rec.run_id, rec, s.failure, reported=s.reported)

    def _wake_for(self, records: list[p.Record]) -> None:
        if len(self.wakes) == 1:
            self.wakes[0].set()
            return
        for lane in {self.lanes.lane_of(run_id) for run_id in {r.run_id for r in records}}:
            self.wakes[lane].set()

    def wake_all(self) -> None:
        for wake in self.wakes:
            wake.set()

    def expedite_client(self, client_id: str) -> None:
        """Make the buffered records of every run ``client_id`` touched due now (its barrier);
        other clients' runs keep their batching."""
        for lane in self.lanes.expedite_runs(self._runs_of(client_id)):
            self.wakes[lane].set()

    def expedite_all(self) -> None:
        """Everything due now (drain)."""
        self.lanes.expedite(None)
        self.wake_all()

    def offline_handled(self, offline_id: str) -> None:
        """The start_run of ``offline_id`` was handled: its parked batches are due."""
        if offline_id in self._parked:
            self._handled.add(offline_id)
            self.wakes[self.lanes.lane_of(offline_id)].set()

    @property
    def pending(self) -> int:
        """Records buffered or parked (not handed to the backend yet)."""
        return self.lanes.pending + self.parked_records

    @property
    def busy(self) -> bool:
        return bool(self.lanes.pending or self.committing or self._parked)

    # ------------------------------------------------------------------ lanes

    async def run_lane(self, lane: int) -> None:
        """One lane: commits the batches of its runs, one at a time, in order."""
        wake = self.wakes[lane]
        while True:
            if self.pacer is not None:  # one transaction takes every run; log_batch one run
                share = 1 if self.write_entries is not None else self.lanes.runs(lane)
                self.lanes.set_max_age(lane, self.pacer.max_age(self._clock(), share))
            batches = self._take(lane)
            if not batches:
                if not self.committing:
                    self.idle.set()
                deadline = self._next_deadline(lane)
                await wake.wait(None if deadline is None else max(0.0, deadline - self._clock()))
                continue
            self.committing += 1
            try:
                if self.write_entries is None:
                    for batch in batches:
                        await self.commit(batch)
                else:
                    await self.commit_all(batches)
            finally:
                self.committing -= 1
            self._after_commit()

    def _take(self, lane: int) -> list[Batch]:
        """The parked batches that are decided now, then one due batch; with the SQL writer,
        once one is due, every buffered batch of the lane (its transaction's fixed cost is paid
        once for them) up to TXN_RECORDS. A batch of an offline run still Waiting is parked."""
        now = self._clock()
        batches = self._unpark(lane, now)
        total = sum(len(b) for b in batches)
        sql = self.write_entries is not None
        due = math.inf if (sql and batches) else now
        while total < TXN_RECORDS and (sql or not batches):
            batch = self.lanes.pop_ready(lane, due)
            if batch is None:
                break
            if self._park(batch):
                continue
            batches.append(batch)
            total += len(batch)
            if sql:
                due = math.inf  # one is due: every buffered batch rides its transaction
        return batches

    def _park(self, batch: Batch, verdict: str | Waiting | RunGone | None = None) -> bool:
        """Park ``batch`` if its run is an offline id that is not decided yet, or has batches
        parked (the run's order is kept)."""
        run_id = batch.run_id
        parked = self._parked.get(run_id)
        if parked is None:
            if not is_offline(run_id):
                return False
            verdict = self._lookup(batch) if verdict is None else verdict
            if not isinstance(verdict, Waiting):
                return False
            parked = self._parked[run_id] = []
            heapq.heappush(self._deadlines[self.lanes.lane_of(run_id)], (verdict.until, run_id))
        parked.append(batch)
        self.parked_records += len(batch)
        return True

    def _unpark(self, lane: int, now: float) -> list[Batch]:
        """The parked batches of runs now decided (handled, or past their deadline), in order."""
        deadlines = self._deadlines[lane]
        due: list[str] = []
        while deadlines and deadlines[0][0] <= now:
            due.append(heapq.heappop(deadlines)[1])
        for run_id in [r for r in self._handled if self.lanes.lane_of(r) == lane]:
            self._handled.discard(run_id)
            due.append(run_id)
        batches: list[Batch] = []
        for run_id in due:
            parked = self._parked.get(run_id)
            if parked is None:
                continue  # taken already
            verdict = self._lookup(parked[0])
            if isinstance(verdict, Waiting):  # a new start_run for it arrived: wait for that
                heapq.heappush(deadlines, (verdict.until, run_id))
                continue
            del self._parked[run_id]
            self.parked_records -= sum(len(b) for b in parked)
            batches += parked
        return batches

    def _next_deadline(self, lane: int) -> float | None:
        deadline = self.lanes.next_deadline(lane)
        deadlines = self._deadlines[lane]
        if deadlines and (deadline is None or deadlines[0][0] < deadline):
            return deadlines[0][0]
        return deadline

    async def commit_all(self, batches: list[Batch]) -> None:
        """Commit batches of many runs in order: runs of SQL-writable batches in one
        transaction each, a batch with logged-model metrics through log_batch in its place."""
        pending: list[Batch] = []
        for batch in batches:
            if any(type(r) is p.Metric and r.model_id is not None for r, _ in batch.items):
                await self._transaction(pending)
                pending = []
                await self.commit(batch)
            else:
                pending.append(batch)
        await self._transaction(pending)

    async def _transaction(self, batches: list[Batch]) -> None:
        if not batches:
            return
        assert self.write_entries is not None
        entries: list[tuple[str, Batch]] = []
        for batch in batches:
            run_id = self._run_id(batch)
            if run_id is not None:
                entries.append((run_id, batch))
        if not entries:
            return
        started = self._clock()
        units = frozenset(i for i, (_, b) in enumerate(entries) if b.unit)
        try:
            outcomes = await self.backend.write(
                self.write_entries,
                [(run_id, [r for r, _ in b.items]) for run_id, b in entries],
                units,
            )
        except PermanentSinkError as exc:  # refused as a whole (e.g. another writer's rows)
            self.backend.note_error(exc)
            self.counters.sql_fallbacks += 1
            log.warning(
                "event=sql_fallback batches=%d reason=%r note=committing_each_run_with_log_batch",
                len(entries),
                exc.message[:300],
            )
            for _, batch in entries:
                await self.commit(batch)
            return
        self.counters.batches += 1
        self.counters.sink_latencies.append(self._clock() - started)
        committed: Counter[Origin] = Counter()
        for (_, batch), outcome in zip(entries, outcomes, strict=True):
            if outcome is None:
                committed.update(origin for _, origin in batch.items)
            elif batch.unit:  # UnitFailed, or RunFailed: the unit fails as one
                index = getattr(outcome, "index", 0)
                self._unit_failed(batch, index, PermanentSinkError(outcome.code, outcome.message))
            elif isinstance(outcome, dict):
                for i, (record, origin) in enumerate(batch.items):
                    failed = outcome.get(i)
                    if failed is None:
                        committed[origin] += 1
                    else:
                        self._failed_record(record, origin, PermanentSinkError(*failed))
            else:  # RunFailed: the run is missing or deleted
                self._failed(batch, RunGone(outcome.code, outcome.message))
        if committed:
            self.settlement.committed(committed)

    async def commit(self, batch: Batch) -> None:
        run_id = self._run_id(batch)
        if run_id is None:
            return
        started = self._clock()
        try:
            await self.backend.write(
                self._log_batch, run_id, batch.metrics, batch.params, batch.tags
            )
        except PermanentSinkError as exc:
            self.backend.note_error(exc)
            if batch.unit:  # one MLflow log_batch call refused: nothing of it was stored
                self._unit_failed(batch, 0, exc)
            elif len(batch) > 1 and not isinstance(exc, RunGone):
                first, second = batch.split()  # isolate the bad record(s) by bisection
                await self.commit(first)
                await self.commit(second)
            else:
                self._failed(batch, exc)
            return
        self.counters.batches += 1
        self.counters.sink_latencies.append(self._clock() - started)
        self.settlement.committed(Counter(origin for _, origin in batch.items))

    def _lookup(self, batch: Batch) -> str | Waiting | RunGone:
        run_id = batch.run_id
        if not is_offline(run_id):
            return run_id
        return self._lookup_run(run_id, any(self._replayed(o) for _, o in batch.items))

    def _run_id(self, batch: Batch) -> str | None:
        """The MLflow run id of the batch's run; None when its records failed (an offline id
        never created: the failure names it) or were parked."""
        verdict = self._lookup(batch)
        if isinstance(verdict, str):
            return verdict
        if isinstance(verdict, RunGone):
            self._failed(batch, verdict)
        else:  # Waiting again since it was taken (a new start_run for it arrived): park it
            self._park(batch, verdict)
        return None

    def _unit_failed(self, batch: Batch, index: int, error: SinkError) -> None:
        """A unit failed as one: ``batch.items[index]`` carries the reported failure."""
        records = [r for r, _ in batch.items]
        for record in records:
            if isinstance(record, p.Param):
                self.lanes.param_failed(record.run_id, record.key)
        origin = batch.items[0][1]  # a unit comes from one message
        self._settle_now(unit_failure(origin, records, index, error.code, error.message))

    def _failed(self, batch: Batch, error: SinkError) -> None:
        for record, origin in batch.items:
            self._failed_record(record, origin, error)

    def _failed_record(self, record: p.Record, origin: Origin, error: SinkError) -> None:
        if isinstance(record, p.Param):
            self.lanes.param_failed(record.run_id, record.key)
        failure = p.Failure(record, error.code, error.message)
        self.settlement.settle(origin, record.run_id, record, failure)
