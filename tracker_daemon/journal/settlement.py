"""Settlement: what happens once a record is committed or has failed.

    journaled(client, seq, count, pos) ─► ledger.accept; the entry's position and write time kept
    committed(origins) / settle(origin, record, failure)
        ─► ledger.settle ─► Progress: done  ─► journal.settle(pos), on_settled() (mark loop)
                                     moved ─► barriers.release(client)
        failure ─► counted, kept for the client's next barrier (ledger.fail), dead-lettered

The ledger (pure) only reports its progress; this module applies it to the journal and the
barriers. Dead letters go to ``deadletter.jsonl`` in the state dir, one JSON object a line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tracker_client import protocol as p

from ..commit.barriers import Barriers
from ..commit.batcher import Origin
from ..commit.ledger import Ledger, Progress
from ..ops.status import Counters
from .journal import Journal, Position

__all__ = ["Settlement"]

log = logging.getLogger("tracker_daemon")


class Settlement:
    def __init__(
        self,
        ledger: Ledger,
        journal: Journal,
        barriers: Barriers,
        counters: Counters,
        *,
        deadletter: Path,
        on_settled: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.journal = journal
        self.barriers = barriers
        self.counters = counters
        self.deadletter = deadletter
        self._on_settled = on_settled
        self.positions: dict[tuple[str, int], Position] = {}  # outstanding message -> entry
        self.written_at: dict[Position, float] = {}  # outstanding entry -> monotonic write time

    def journaled(
        self, client_id: str, seq: int, count: int, pos: Position, written_at: float
    ) -> None:
        """Message ``seq`` of ``client_id`` (``count`` records) is in the journal at ``pos``."""
        self.positions[(client_id, seq)] = pos
        self.written_at[pos] = written_at
        if self.ledger.accept(client_id, seq, count) and count == 0:
            self._apply(client_id, seq, Progress(done=True, moved=True))

    def oldest_uncommitted_age(self, now: float) -> float:
        """Seconds since the oldest journal entry that is not yet committed was written."""
        if not self.journal.outstanding:
            return 0.0
        written = self.written_at.get(self.journal.low_water())
        return 0.0 if written is None else max(0.0, now - written)

    def committed(self, per_origin: Mapping[Origin, int]) -> None:
        """``n`` records of each origin were committed (one batch)."""
        for origin, n in per_origin.items():
            self.counters.committed += n
            self._apply(
                origin.client_id, origin.seq, self.ledger.settle(origin.client_id, origin.seq, n)
            )

    def settle(
        self,
        origin: Origin,
        run_id: str | None,
        record: p.Record | None,
        failure: p.Failure | None,
        *,
        reported: bool = True,
    ) -> None:
        """One record (or artifact: ``record`` None) of ``origin`` is committed or failed.
        A failure not ``reported`` (another record of a failed unit: the unit is reported once)
        is counted and dead-lettered, not kept for the client's barrier."""
        if failure is not None:
            self.counters.failed += 1
            if reported:
                self.ledger.fail(origin.client_id, run_id, failure)
            self.dead_letter(origin, run_id, failure)
        else:
            self.counters.committed += 1
        self._apply(origin.client_id, origin.seq, self.ledger.settle(origin.client_id, origin.seq))

    def release(self, client_id: str) -> None:
        self.barriers.release(client_id)

    def _apply(self, client_id: str, seq: int, progress: Progress) -> None:
        if progress.done:
            pos = self.positions.pop((client_id, seq), None)
            if pos is not None:
                self.written_at.pop(pos, None)
                self.journal.settle(pos)
                self._on_settled()
        if progress.moved:
            self.barriers.release(client_id)

    def dead_letter(self, origin: Origin, run_id: str | None, failure: p.Failure) -> None:
        log.warning(
            "event=record_failed client=%s run=%s code=%s reason=%r",
            origin.client_id,
            run_id,
            failure.code,
            failure.message[:300],
        )
        entry = {
            "time": time.time(),
            "client_id": origin.client_id,
            "seq": origin.seq,
            "run_id": run_id,
            "record": None if failure.record is None else p.record_to_wire(failure.record),
            "code": failure.code,
            "reason": failure.message,
        }
        try:
            with open(self.deadletter, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, allow_nan=True) + "\n")
            self.counters.dead_lettered += 1
        except OSError as exc:
            log.error("event=deadletter_write_failed reason=%r", str(exc))
