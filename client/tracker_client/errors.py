"""Exceptions raised by the client. Bad arguments raise plain ``TypeError``/``ValueError`` at the
call site; everything that involves the daemon derives from :class:`TrackerError`::

    TrackerError
    ├── DaemonUnavailable     no daemon answered within the timeout (names the address)
    ├── DaemonError           the daemon refused a request (``code`` is MLflow's or the protocol's)
    ├── CommitError           a barrier (flush/end) found records that could not be committed;
    │                         ``failures`` lists each record with its MLflow error code and reason
    └── RecordsDropped        records this process logged were dropped before reaching a daemon
                              (no daemon answered and the spool could not be written); ``count``
"""

from __future__ import annotations

from collections.abc import Sequence

from .protocol import Failure

__all__ = [
    "CommitError",
    "DaemonError",
    "DaemonUnavailable",
    "RecordsDropped",
    "TrackerError",
]


class TrackerError(Exception):
    """Base class of the client's daemon-related errors."""


class DaemonUnavailable(TrackerError, TimeoutError):
    """No tracker-daemon answered in time."""


class DaemonError(TrackerError):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CommitError(TrackerError):
    """Some records were not committed to MLflow; each failure says which and why."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        self.failures = tuple(failures)
        shown = "; ".join(_describe(f) for f in self.failures[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} record(s) were not committed: {shown}{more}")


class RecordsDropped(TrackerError):
    """``count`` records logged since the last report were dropped and will not be delivered:
    no daemon took them and the spool could not be written (``reason``)."""

    def __init__(self, count: int, reason: str, more: str = "") -> None:
        self.count = count
        self.reason = reason
        super().__init__(
            f"{count} record(s) logged by this process were dropped and will not be delivered: "
            f"no daemon took them and the spool could not be written ({reason}){more}"
        )


def _describe(f: Failure) -> str:
    rec = f.record
    what = "request" if rec is None else f"{type(rec).__name__.lower()} {rec.key!r}"
    return f"{what}: {f.code}: {f.message}"
