"""When to try importing a spool again (pure): a spool whose import failed is retried after a
delay that doubles with each failure (30 s, 60 s, … up to an hour); one the daemon refused for
good is not retried until the file changes (size or mtime), e.g. an operator replaced it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SpoolBackoff"]

FIRST_DELAY_S = 30.0
MAX_DELAY_S = 3600.0


@dataclass(slots=True)
class _Failure:
    attempts: int
    retry_at: float  # monotonic; inf: only once the file changes
    stamp: tuple[int, int]  # (size, mtime_ns) when it failed


class SpoolBackoff:
    def __init__(self) -> None:
        self._failed: dict[Path, _Failure] = {}

    def due(self, path: Path, now: float) -> bool:
        f = self._failed.get(path)
        if f is None:
            return True
        if _stamp(path) != f.stamp:  # changed since it failed: try it at once
            del self._failed[path]
            return True
        return now >= f.retry_at

    def failed(self, path: Path, now: float, *, permanent: bool = False) -> float:
        """Record a failed import; returns the delay before the next attempt (inf: none)."""
        prev = self._failed.get(path)
        attempts = prev.attempts + 1 if prev is not None else 1
        delay = float("inf") if permanent else min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (attempts - 1))
        self._failed[path] = _Failure(attempts, now + delay, _stamp(path))
        return delay

    def attempts(self, path: Path) -> int:
        f = self._failed.get(path)
        return 0 if f is None else f.attempts

    def forget(self, path: Path) -> None:
        self._failed.pop(path, None)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)
