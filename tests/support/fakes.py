"""Stand-ins for unit tests of the data path (no threads, no MLflow).

``FakeBackend(handler)`` implements tracker_daemon.commit.backend.Backend: every
``write``/``read`` is
recorded and answered by ``handler(fn, args)`` (return a value or raise a SinkError). Outcomes
are recorded as ``errors`` (retryable ones only, as ThreadBackend) and ``oks``. It does not
retry: the retry policy is ThreadBackend's, tested on its own in test_backend.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tracker_daemon.errors import RetryableSinkError, SinkError

T = TypeVar("T")

Handler = Callable[[Callable[..., Any], tuple[Any, ...]], Any]


class FakeBackend:
    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda fn, args: None)
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.errors: list[SinkError] = []
        self.oks = 0

    async def write(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None) -> T:
        result: T = self._call(fn, args)
        return result

    async def read(self, fn: Callable[[], T]) -> T:
        result: T = self._call(fn, ())
        return result

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.calls.append((fn, args))
        try:
            result = self.handler(fn, args)
        except RetryableSinkError as exc:  # as ThreadBackend: a permanent one is the caller's
            self.note_error(exc)
            raise
        self.note_ok()
        return result

    def note_error(self, exc: SinkError) -> None:
        self.errors.append(exc)

    def note_ok(self) -> None:
        self.oks += 1
