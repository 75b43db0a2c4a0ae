"""Sink lanes (pure): runs are spread over ``n`` independent batchers (a new run joins the
least loaded lane and stays there until it is released), so up to ``n`` ``log_batch`` calls run
at once (REST backends) while the batches of any one run stay strictly in order (one lane per
run). SQLite uses one lane: it has one writer.

:class:`Lanes` offers the :class:`~tracker_daemon.commit.batcher.Batcher` calls the daemon makes for
all runs; ``pop_ready``/``next_deadline`` are per lane.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tracker_client.protocol import Record

from .batcher import Batch, Batcher, Origin, Settled

__all__ = ["Lanes"]


class Lanes:
    def __init__(self, n: int, *, max_age: float) -> None:
        if n < 1:
            raise ValueError("at least one lane")
        self.lanes = [Batcher(max_age=max_age) for _ in range(n)]
        self._assigned: dict[str, int] = {}  # run id -> lane, until the run is released
        self._load = [0] * n  # runs assigned per lane

    def __len__(self) -> int:
        return len(self.lanes)

    def lane_of(self, run_id: str) -> int:
        """A run's lane: sticky; a new run goes to the lane with the fewest runs (a hash would
        leave lanes idle: 8 runs hashed onto 4 lanes are rarely 2 + 2 + 2 + 2)."""
        if len(self.lanes) == 1:
            return 0
        lane = self._assigned.get(run_id)
        if lane is None:
            lane = min(range(len(self._load)), key=self._load.__getitem__)
            self._assigned[run_id] = lane
            self._load[lane] += 1
        return lane

    def _for(self, run_id: str) -> Batcher:
        return self.lanes[self.lane_of(run_id)]

    def add(self, origin: Origin, records: Iterable[Record], now: float) -> list[Settled]:
        if len(self.lanes) == 1:
            return self.lanes[0].add(origin, records, now)
        by_lane: dict[int, list[Record]] = {}
        for rec in records:
            by_lane.setdefault(self.lane_of(rec.run_id), []).append(rec)
        settled: list[Settled] = []
        for lane, recs in by_lane.items():
            settled += self.lanes[lane].add(origin, recs, now)
        return settled

    def add_unit(self, origin: Origin, records: list[Record], now: float) -> list[Settled]:
        """One unit (records of one run): see Batcher.add_unit."""
        return self._for(records[0].run_id).add_unit(origin, records, now) if records else []

    def pop_ready(self, lane: int, now: float) -> Batch | None:
        return self.lanes[lane].pop_ready(now)

    def next_deadline(self, lane: int) -> float | None:
        return self.lanes[lane].next_deadline()

    def set_max_age(self, lane: int, max_age: float) -> None:
        self.lanes[lane].max_age = max_age

    def runs(self, lane: int) -> int:
        """Runs of ``lane`` with buffered records."""
        return self.lanes[lane].runs

    def expedite(self, run_id: str | None = None) -> None:
        if run_id is not None:
            self._for(run_id).expedite(run_id)
            return
        for b in self.lanes:
            b.expedite(None)

    def expedite_runs(self, run_ids: Iterable[str]) -> set[int]:
        """Expedite these runs (those with nothing buffered are left alone, and no run is
        assigned a lane by this); the lanes these runs are on."""
        touched: set[int] = set()
        for run_id in run_ids:
            lane = 0 if len(self.lanes) == 1 else self._assigned.get(run_id)
            if lane is not None:
                self.lanes[lane].expedite(run_id)
                touched.add(lane)
        return touched

    def seed_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self._for(run_id).seed_params(run_id, params)

    def param_failed(self, run_id: str, key: str) -> None:
        self._for(run_id).param_failed(run_id, key)

    def release_run(self, run_id: str) -> bool:
        released = self._for(run_id).release_run(run_id)
        if released and run_id in self._assigned:
            self._load[self._assigned.pop(run_id)] -= 1
        return released

    @property
    def pending(self) -> int:
        return sum(b.pending for b in self.lanes)
