"""Counters for ``call`` requests (the ``tracker://`` MLflow plugin's store calls), by kind.

A call is a *read* or a *write* (``calls.StoreCalls.is_read``: reads need no writer slot). For each
kind the daemon counts calls answered, calls that failed (answered with an error: the MLflow error,
a barrier timeout, a full request queue) and the latency of the last ``LATENCY_WINDOW`` calls,
from the moment the request's task starts (before the barrier: the wait for the client's earlier
records is part of what the caller waits for) until its reply is sent.

A failed call is one log line, ``event=call_failed kind=... method=... code=... reason=...``.
A client could make calls fail as fast as it can send them, so the lines are throttled per
(client, method, code), like the daemon's other refusal logs: the next line of a key says how many
were held back (``suppressed=``); the counters always count every one.

The status document gets ``calls``: ``{"read": {...}, "write": {...}}``, each with ``calls``,
``failures`` and ``latency_ms`` (``p50``, ``p99``, as ``sink_latency_ms``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from .throttle import LogThrottle

__all__ = ["CALL_KINDS", "LATENCY_WINDOW", "CallStats"]

log = logging.getLogger("tracker_daemon.calls")

CALL_KINDS: Final = ("read", "write")
LATENCY_WINDOW = 2048  # latencies kept per kind, for p50/p99
FAILED_LOG_INTERVAL_S = 10.0  # one call_failed line per (client, method, code) this often
FAILED_LOG_LINES = 20  # ... and at most this many such lines per interval over all keys


@dataclass(slots=True)
class _Kind:
    calls: int = 0
    failures: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def latency_ms(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        if not lat:
            return {"p50": 0.0, "p99": 0.0}
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return {"p50": round(statistics.median(lat) * 1000, 3), "p99": round(p99 * 1000, 3)}


class CallStats:
    """Counts, failures and latencies of calls per kind; logs failed calls (throttled)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kinds = {kind: _Kind() for kind in CALL_KINDS}
        self._log = LogThrottle(FAILED_LOG_INTERVAL_S, FAILED_LOG_LINES)

    def done(self, kind: str, seconds: float | None) -> None:
        """A call of ``kind`` was answered; ``seconds`` it took (None: not timed, e.g. refused
        before it started)."""
        k = self._kinds[kind]
        k.calls += 1
        if seconds is not None:
            k.latencies.append(seconds)

    def failed(self, kind: str, client_id: str, method: str, code: str, reason: str) -> None:
        """The call just counted by :meth:`done` failed with ``code``: count and log it."""
        self._kinds[kind].failures += 1
        held = self._log.check((client_id, method, code), self._clock())
        if held is not None:
            log.warning(
                "event=call_failed kind=%s method=%s code=%s reason=%r client=%s suppressed=%d",
                kind,
                method[:100],
                code,
                reason[:300],
                client_id[:36] or "-",
                held,
            )

    def count(self, kind: str) -> tuple[int, int]:
        """(calls, failures) of ``kind`` so far."""
        k = self._kinds[kind]
        return k.calls, k.failures

    def status(self) -> dict[str, Any]:
        return {
            "calls": {
                kind: {"calls": k.calls, "failures": k.failures, "latency_ms": k.latency_ms()}
                for kind, k in self._kinds.items()
            }
        }
