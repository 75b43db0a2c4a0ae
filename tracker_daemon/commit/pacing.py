"""Commit pacing (pure: time comes in as an argument): how long a record may wait in the batcher
before its lane commits it, from the rate records arrive at.

A commit has a fixed cost (a transaction: ``BEGIN``, the reads of runs and latest metrics, the
commit and its fsync; a ``log_batch`` call: MLflow's session and run lookups) that a busy daemon
shares among thousands of records and a lightly loaded one pays for a handful. The pacer
stretches the batcher's max age so that one commit carries about ``target`` records::

    max_age = clamp(target / rate_per_commit, floor, ceiling)

``rate_per_commit`` is the rate records arrived at over the last window, divided by ``share``
(1 with the SQL writer: one transaction takes every run's records; the number of runs with
buffered records with ``log_batch``: one call per run). ``floor`` is ``batch_max_age_ms``:
at high rates nothing changes; ``ceiling`` is ``commit_interval_ms``: at everyday rates records
become visible in the store at most about that late. Journaled records are durable already, so
the wait costs visibility only; a barrier (flush, end_run, a read) and a drain still make their
records due at once, and a full batch is due at once, whatever the age.
"""

from __future__ import annotations

__all__ = ["TARGET_RECORDS", "WINDOW_S", "CommitPacer"]

TARGET_RECORDS = 1000  # records per commit worth waiting for (one MLflow batch)
WINDOW_S = 1.0  # the arrival rate is measured over windows of about this long


class CommitPacer:
    """The batcher's max age from the arrival rate (see the module docstring)."""

    def __init__(
        self,
        *,
        floor: float,
        ceiling: float,
        target: int = TARGET_RECORDS,
        window: float = WINDOW_S,
    ) -> None:
        if not 0 <= floor <= ceiling:
            raise ValueError(f"need 0 <= floor <= ceiling, got {floor!r}, {ceiling!r}")
        if target < 1 or window <= 0:
            raise ValueError("target must be >= 1 and window > 0")
        self.floor = floor
        self.ceiling = ceiling
        self.target = target
        self.window = window
        self._start: float | None = None  # start of the current window
        self._count = 0  # records arrived in the current window
        self._rate = 0.0  # records/s over the last complete window

    def note(self, records: int, now: float) -> None:
        """``records`` arrived at ``now``."""
        if self._start is None:
            self._start = now
        elif now - self._start >= self.window:
            self._rate = self._count / (now - self._start)
            self._start, self._count = now, 0
        self._count += records

    def rate(self, now: float) -> float:
        """Records/s: the last complete window's, or the current one's once it is higher (a
        load that rises is followed at once, one that falls within a window)."""
        if self._start is None:
            return 0.0
        elapsed = now - self._start
        if elapsed >= self.window:  # no record for a whole window: the rate has fallen
            return self._count / elapsed
        return max(self._rate, self._count / self.window)

    def max_age(self, now: float, share: int = 1) -> float:
        """How long a record may wait at ``now``; ``share``: commits the rate is spread over."""
        per_commit = self.rate(now) / max(1, share)
        if per_commit <= 0:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.target / per_commit))
