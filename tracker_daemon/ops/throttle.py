"""Throttles for what one peer can make the daemon do over and over (pure: the caller passes
``now``, a monotonic time in seconds).

:class:`LogThrottle` lets one log line per key (e.g. peer and reason) through per interval and
counts the lines it holds back, so the next line of that key can say how many there were; a cap
on lines per interval over all keys bounds the log however many peers there are.
:class:`RateBudget` is a token bucket per key that may go into debt: e.g. the work one peer's
rejected frames may cost per second (beyond it, that peer's frames are dropped unread).

Both remember at most ``max_keys`` keys: when full, keys that are idle (their interval passed, or
their bucket refilled) are forgotten. If none is, new keys share one overflow line in
:class:`LogThrottle`, and are not tracked by :class:`RateBudget` (they stay ready: a budget never
holds back a key that has not spent it). A forgotten key's count of held-back lines is only in
``suppressed_total`` then.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

__all__ = ["LogThrottle", "RateBudget"]

_OVERFLOW: Final = ("<overflow>",)


@dataclass(slots=True)
class _Line:
    logged_at: float
    suppressed: int = 0


class LogThrottle:
    def __init__(self, interval: float, max_lines: int = 20, max_keys: int = 1024) -> None:
        if interval <= 0 or max_lines < 1 or max_keys < 1:
            raise ValueError("interval, max_lines and max_keys must be positive")
        self.interval = interval
        self.max_lines = max_lines  # per interval, over all keys
        self.max_keys = max_keys
        self.suppressed_total = 0
        self._lines: dict[Hashable, _Line] = {}
        self._window_start = float("-inf")
        self._window_lines = 0

    def check(self, key: Hashable, now: float) -> int | None:
        """None: do not log this line (it is counted). Otherwise log it, mentioning the returned
        number of lines held back for this key since its previous line."""
        line = self._lines.get(key)
        if line is None:
            key = self._room(key, now)
            line = self._lines.get(key)
        if line is not None and now - line.logged_at < self.interval:
            self._hold(line)
            return None
        if now - self._window_start >= self.interval:
            self._window_start, self._window_lines = now, 0
        if self._window_lines >= self.max_lines:
            if line is None:
                line = self._lines[key] = _Line(float("-inf"))
            self._hold(line)
            return None
        self._window_lines += 1
        if line is None:
            self._lines[key] = _Line(now)
            return 0
        held, line.logged_at, line.suppressed = line.suppressed, now, 0
        return held

    def _hold(self, line: _Line) -> None:
        line.suppressed += 1
        self.suppressed_total += 1

    def _room(self, key: Hashable, now: float) -> Hashable:
        if len(self._lines) < self.max_keys:
            return key
        for k in [k for k, v in self._lines.items() if now - v.logged_at >= self.interval]:
            del self._lines[k]  # (what it held back stays in suppressed_total)
        return key if len(self._lines) < self.max_keys else _OVERFLOW


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateBudget:
    def __init__(self, rate: float, burst: float, max_keys: int = 1024) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate, burst and max_keys must be positive")
        self.rate = rate  # tokens per second
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}
        self.untracked = 0  # spends not recorded because the table was full

    def ready(self, key: Hashable, now: float) -> bool:
        """Whether ``key`` has at least one token (a key never seen has a full bucket)."""
        b = self._buckets.get(key)
        return b is None or self._refill(b, now) >= 1

    def spend(self, key: Hashable, now: float, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket; it may go below zero (a debt that the rate
        pays back before the key is ready again)."""
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            if len(self._buckets) >= self.max_keys:
                self.untracked += 1
                return
            b = self._buckets[key] = _Bucket(self.burst, now)
        self._refill(b, now)
        b.tokens -= cost

    def _refill(self, b: _Bucket, now: float) -> float:
        b.tokens = min(self.burst, b.tokens + max(0.0, now - b.at) * self.rate)
        b.at = now
        return b.tokens

    def _forget_full(self, now: float) -> None:
        for k in [
            k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]:
            del self._buckets[k]
