"""The committer: the sink lanes (lanes.py) and what commits their batches.

    add(origin, records) ─► lanes.add ─► wake the lanes that got records (only those)
    lane loop: the batcher's max age from the arrival rate (pacing.py), then pop_ready: with a
      SQL writer, once a batch is due every buffered batch, up to TXN_RECORDS
      SQL writer ─► commit_all: resolve the run ids, backend.write(write_entries): ONE transaction
        for the batches of many runs; the writer decides conflicts before writing and reports, per
        batch, ok / the run is gone / which records failed ─► settlement
        the database refuses the transaction as a whole (a permanent error) ─► count a fallback,
        commit each batch as below
      log_batch ─► commit: resolve the run id, backend.write(log_batch)
        ok ─► settlement.committed          permanent error ─► bisect the batch until the bad
        (a batch of one record, or an error about the whole run) ─► each record failed
      a batch holding a metric with a model_id (MLflow 3 logged-model metrics) always goes to
      MLflow's log_batch, in its place in the order of the run's batches
    expedite_client(client) ─► only the runs that client touched become due now (a barrier)

Retries of transient errors happen inside ``backend.write`` (forever: a batch is never given up
on while the backend is merely unavailable).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from tracker_client import protocol as p

from .backend import Backend
from .batcher import Batch, Origin
from .errors import PermanentSinkError, RunGone, SinkError
from .lanes import Lanes
from .pacing import CommitPacer
from .status import Counters
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
        self, origin: Origin, run_id: str | None, record: p.Record | None, failure: p.Failure | None
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
        resolve: Callable[[str], Awaitable[str]],
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
        self._resolve = resolve
        self._runs_of = runs_of
        self._after_commit = after_commit
        self._clock = clock
        self.pacer = pacer  # None: the batcher's max age stays as configured
        self.wakes = [Wakeup() for _ in range(len(lanes))]
        self.idle = Wakeup()  # set when a lane finds nothing to do and nothing is committing
        self.committing = 0

    # ------------------------------------------------------------------ input (event loop)

    def add(self, origin: Origin, records: list[p.Record]) -> None:
        """Buffer valid records of one message; records settled at once (a param re-logged
        with its value) are settled; the lanes that got records are woken."""
        now = self._clock()
        if self.pacer is not None:
            self.pacer.note(len(records), now)
        for settled in self.lanes.add(origin, records, now):
            rec = settled.record
            self.settlement.settle(settled.origin, rec.run_id, rec, settled.failure)
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

    @property
    def busy(self) -> bool:
        return bool(self.lanes.pending or self.committing)

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
                deadline = self.lanes.next_deadline(lane)
                await wake.wait(None if deadline is None else max(0.0, deadline - self._clock()))
                continue
            self.committing += 1
            try:
                if self.write_entries is None:
                    await self.commit(batches[0])
                else:
                    await self.commit_all(batches)
            finally:
                self.committing -= 1
            self._after_commit()

    def _take(self, lane: int) -> list[Batch]:
        """One due batch; with the SQL writer, once one is due, every batch of the lane (its
        transaction's fixed cost is paid once for them) up to TXN_RECORDS."""
        batch = self.lanes.pop_ready(lane, self._clock())
        if batch is None:
            return []
        batches, total = [batch], len(batch)
        while self.write_entries is not None and total < TXN_RECORDS:
            batch = self.lanes.pop_ready(lane, math.inf)
            if batch is None:
                break
            batches.append(batch)
            total += len(batch)
        return batches

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
            try:
                entries.append((await self._resolve(batch.run_id), batch))
            except PermanentSinkError as exc:  # the run could not be created
                self.backend.note_error(exc)
                self._failed(batch, exc)
        if not entries:
            return
        started = self._clock()
        try:
            outcomes = await self.backend.write(
                self.write_entries, [(run_id, [r for r, _ in b.items]) for run_id, b in entries]
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
        started = self._clock()
        try:
            run_id = await self._resolve(batch.run_id)
            await self.backend.write(
                self._log_batch, run_id, batch.metrics, batch.params, batch.tags
            )
        except PermanentSinkError as exc:
            self.backend.note_error(exc)
            if len(batch) > 1 and not isinstance(exc, RunGone):
                first, second = batch.split()  # isolate the bad record(s) by bisection
                await self.commit(first)
                await self.commit(second)
            else:
                self._failed(batch, exc)
            return
        self.counters.batches += 1
        self.counters.sink_latencies.append(self._clock() - started)
        self.settlement.committed(Counter(origin for _, origin in batch.items))

    def _failed(self, batch: Batch, error: SinkError) -> None:
        for record, origin in batch.items:
            self._failed_record(record, origin, error)

    def _failed_record(self, record: p.Record, origin: Origin, error: SinkError) -> None:
        if isinstance(record, p.Param):
            self.lanes.param_failed(record.run_id, record.key)
        failure = p.Failure(record, error.code, error.message)
        self.settlement.settle(origin, record.run_id, record, failure)
