"""The committer: the sink lanes (lanes.py) and what commits their batches.

    add(origin, records) ─► lanes.add ─► wake the lanes that got records (only those)
    lane loop: pop_ready ─► commit: resolve the run id, backend.write(log_batch)
        ok ─► settlement.committed          permanent error ─► bisect the batch until the bad
        (a batch of one record, or an error about the whole run) ─► each record failed
    expedite_client(client) ─► only the runs that client touched become due now (a barrier)

Retries of transient errors happen inside ``backend.write`` (forever: a batch is never given up
on while the backend is merely unavailable).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from tracker_client import protocol as p

from .backend import Backend
from .batcher import Batch, Origin
from .errors import PermanentSinkError, RunGone, SinkError
from .lanes import Lanes
from .status import Counters
from .wakeup import Wakeup

__all__ = ["Committer", "Settles"]


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
        resolve: Callable[[str], Awaitable[str]],
        runs_of: Callable[[str], Iterable[str]],
        after_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lanes = lanes
        self.backend = backend
        self.settlement = settlement
        self.counters = counters
        self._log_batch = log_batch
        self._resolve = resolve
        self._runs_of = runs_of
        self._after_commit = after_commit
        self._clock = clock
        self.wakes = [Wakeup() for _ in range(len(lanes))]
        self.idle = Wakeup()  # set when a lane finds nothing to do and nothing is committing
        self.committing = 0

    # ------------------------------------------------------------------ input (event loop)

    def add(self, origin: Origin, records: list[p.Record]) -> None:
        """Buffer valid records of one message; records settled at once (a param re-logged
        with its value) are settled; the lanes that got records are woken."""
        for settled in self.lanes.add(origin, records, self._clock()):
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
            batch = self.lanes.pop_ready(lane, self._clock())
            if batch is None:
                if not self.committing:
                    self.idle.set()
                deadline = self.lanes.next_deadline(lane)
                await wake.wait(None if deadline is None else max(0.0, deadline - self._clock()))
                continue
            self.committing += 1
            try:
                await self.commit(batch)
            finally:
                self.committing -= 1
            self._after_commit()

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
            if isinstance(record, p.Param):
                self.lanes.param_failed(record.run_id, record.key)
            failure = p.Failure(record, error.code, error.message)
            self.settlement.settle(origin, record.run_id, record, failure)
