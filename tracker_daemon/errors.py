"""The daemon's exception tree. zmq and MLflow exceptions are mapped into it at one boundary each
(``server.py`` for frames, ``sink.classify`` for MLflow)::

    TrackerDaemonError
    ├── ConfigError          bad configuration: names the key and what is wrong (exit code 2)
    ├── AlreadyRunning       another daemon holds the state dir lock or answers on the socket
    ├── JournalFull          the journal is at ``journal_max_bytes`` or the disk is full: the
    │                        entry was not written; the frame is refused (``journal_full``), not
    │                        acked, and the client offers it again
    └── SinkError            a write to the MLflow backend failed
        ├── RetryableSinkError   transient (database locked, connection refused, HTTP 5xx/429,
        │                        timeouts): retried with capped exponential backoff and jitter
        └── PermanentSinkError   the backend refuses the data (invalid value, changed param):
            │                    a failing batch is bisected, the bad records reported to the client
            └── RunGone          the run itself is missing or deleted (or an offline run was never
                                 created): every record of the batch fails, no bisection

``calls._call_error`` maps the exceptions of a ``call`` (a plugin's store method) like
``sink.classify``, except that MLflow's catch-all ``INTERNAL_ERROR`` (not "database is locked") is
a ``PermanentSinkError`` there: retrying it only delays the caller's exception.

Protocol errors are ``tracker_client.protocol.ProtocolError`` (shared with the client).
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "ConfigError",
    "JournalFull",
    "PermanentSinkError",
    "RetryableSinkError",
    "RunGone",
    "SinkError",
    "TrackerDaemonError",
]


class TrackerDaemonError(Exception):
    """Base class of the daemon's own errors."""


class ConfigError(TrackerDaemonError):
    """The configuration is invalid."""


class AlreadyRunning(TrackerDaemonError):
    """Another daemon owns the state directory or the socket."""


class JournalFull(TrackerDaemonError):
    """The journal reached its size limit or the disk is full; the entry was not written."""


class SinkError(TrackerDaemonError):
    """A write to the MLflow backend failed. ``code`` is MLflow's error code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RetryableSinkError(SinkError):
    """Try again later; the data is kept."""


class PermanentSinkError(SinkError):
    """Retrying will not help; the records are reported as failed."""


class RunGone(PermanentSinkError):
    """The run is missing or deleted (or an offline run was never created): no record of it can
    be written."""
