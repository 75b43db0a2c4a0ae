"""The daemon's exception tree. zmq and MLflow exceptions are mapped into it at one boundary each
(``server.py`` for frames, ``sink.classify`` for MLflow)::

    TrackerDaemonError
    ├── ConfigError          bad configuration: names the key and what is wrong (exit code 2)
    ├── AlreadyRunning       another daemon holds the state dir lock or answers on the socket
    └── SinkError            a write to the MLflow backend failed
        ├── RetryableSinkError   transient (database locked, connection refused, HTTP 5xx/429,
        │                        timeouts): retried with capped exponential backoff and jitter
        └── PermanentSinkError   the backend refuses the data (invalid value, changed param,
                                 deleted or missing run): isolated and reported to the client

Protocol errors are ``tracker_client.protocol.ProtocolError`` (shared with the client).
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "ConfigError",
    "PermanentSinkError",
    "RetryableSinkError",
    "SinkError",
    "TrackerDaemonError",
]


class TrackerDaemonError(Exception):
    """Base class of the daemon's own errors."""


class ConfigError(TrackerDaemonError):
    """The configuration is invalid."""


class AlreadyRunning(TrackerDaemonError):
    """Another daemon owns the state directory or the socket."""


class SinkError(TrackerDaemonError):
    """A write to the MLflow backend failed. ``code`` is MLflow's error code name."""

    def __init__(self, code: str, message: str, *, whole_run: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # True when the failure concerns the run itself (missing, deleted), not one record.
        self.whole_run = whole_run


class RetryableSinkError(SinkError):
    """Try again later; the data is kept."""


class PermanentSinkError(SinkError):
    """Retrying will not help; the records are reported as failed."""
