"""The backend: the one place where the blocking :class:`~tracker_daemon.store.sink.Sink` is called.

    write(fn, *args, retry_for=None) ─► worker thread under the writer limiter (``writers`` slots)
    read(fn)                          ─► worker thread under the reader limiter (4 slots)
        a RetryableSinkError is retried with one policy (:class:`Backoff`: capped exponential,
        jittered) for ``retry_for`` s (writes: forever by default; reads: READ_RETRY_FOR_S)

Health accounting lives here too: every call's outcome is noted (``note_ok``/``note_error``) in
the daemon's :class:`~tracker_daemon.ops.status.Counters` (``last_sink_ok_at``, ``last_sink_error``,
``last_sink_error_at``, ``sink_retries``), which is what ``sink_failing_now`` and the
``sink_stalled`` health reason are computed from. Calls made elsewhere (the artifact lane's
uploads) report their outcome through ``note_ok``/``note_error`` so that a failure is cleared by
the next success of any kind, not only by the next ``log_batch``.

:class:`Backend` is the protocol the committer and the rest are written against;
``tests/unit/fakes.py::FakeBackend`` implements it without threads or MLflow.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from ..errors import RetryableSinkError, SinkError
from ..ops.status import Counters

__all__ = ["READ_RETRY_FOR_S", "READERS", "Backend", "Backoff", "ThreadBackend"]

log = logging.getLogger("tracker_daemon")
T = TypeVar("T")

READ_RETRY_FOR_S = 30.0  # a read (plugin call) gives up after this long
READERS = 4  # reads run in parallel with writes, at most this many at once


@dataclass(frozen=True, slots=True)
class Backoff:
    """The retry policy: ``first`` s, doubled per attempt up to ``cap``; each wait is jittered
    by a factor in [1 - jitter, 1 + jitter]."""

    first: float = 0.05
    cap: float = 30.0
    jitter: float = 0.5

    def delays(self) -> Iterator[float]:
        """The un-jittered delays: first, 2 * first, ... capped (an endless generator)."""
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)

    def jittered(self, delay: float, rand: Callable[[float, float], float]) -> float:
        return delay * rand(1 - self.jitter, 1 + self.jitter)


class Backend(Protocol):
    """What the data path and the control requests need from the MLflow backend."""

    async def write(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None) -> T:
        """Run a state-changing sink call; retry transient errors (forever, or ``retry_for`` s)."""
        ...

    async def read(self, fn: Callable[[], T]) -> T:
        """Run a read-only sink call; retry transient errors for READ_RETRY_FOR_S."""
        ...

    def note_error(self, exc: SinkError) -> None:
        """A sink call failed (health: the backend is failing until the next success)."""
        ...

    def note_ok(self) -> None:
        """A sink call succeeded."""
        ...


class ThreadBackend:
    """:class:`Backend` over a blocking sink: calls run in anyio worker threads."""

    def __init__(
        self,
        counters: Counters,
        *,
        writers: int,
        max_backoff: float,
        readers: int = READERS,
        sleep: Callable[[float], Any] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.counters = counters
        self.backoff = Backoff(cap=max_backoff)
        self.writer = anyio.CapacityLimiter(writers)
        self.readers = anyio.CapacityLimiter(readers)
        self._sleep = sleep
        self._clock = clock
        self._rand = rand

    async def write(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None) -> T:
        call = functools.partial(fn, *args)
        return await self._retrying(call, self.writer, retry_for)

    async def read(self, fn: Callable[[], T]) -> T:
        return await self._retrying(fn, self.readers, READ_RETRY_FOR_S)

    async def _retrying(
        self, call: Callable[[], T], limiter: anyio.CapacityLimiter, retry_for: float | None
    ) -> T:
        give_up = None if retry_for is None else self._clock() + retry_for
        for delay in self.backoff.delays():
            try:
                result = await anyio.to_thread.run_sync(call, limiter=limiter)
            except RetryableSinkError as exc:
                self.note_error(exc)
                if give_up is not None and self._clock() + delay > give_up:
                    raise
                self.counters.sink_retries += 1
                await self._sleep(self.backoff.jittered(delay, self._rand))
            else:
                self.note_ok()
                return result
        raise AssertionError("unreachable: delays() is endless")  # pragma: no cover

    def note_ok(self) -> None:
        self.counters.last_sink_ok_at = time.time()

    def note_error(self, exc: SinkError) -> None:
        self.counters.last_sink_error = str(exc)[:500]
        self.counters.last_sink_error_at = time.time()
        log.warning(
            "event=sink_error code=%s retryable=%s reason=%r",
            exc.code,
            isinstance(exc, RetryableSinkError),
            exc.message[:300],
        )
