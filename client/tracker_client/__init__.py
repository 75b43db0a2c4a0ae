"""tracker_client: log MLflow metrics, params, tags and artifacts through tracker-daemon.

    import tracker_client

    tracker = tracker_client.connect()          # $TRACKER_DAEMON_ADDRESS or the default socket
    with tracker.start_run(experiment="mnist", run_name="lr-0.1") as run:
        run.log_params({"lr": 0.1, "batch": 64})
        for step in range(1000):
            run.log_metric("loss", 1.0 / (step + 1), step=step)   # returns in microseconds
    # leaving the block commits everything and marks the run FINISHED (FAILED on an exception)

Importing this package imports only the standard library, pyzmq and msgpack (never mlflow).
"""

from __future__ import annotations

from ._version import __version__
from .api import Tracker, connect, query_status
from .errors import CommitError, DaemonError, DaemonUnavailable, RecordsDropped, TrackerError
from .run import Run
from .source import default_tags

__all__ = [
    "CommitError",
    "DaemonError",
    "DaemonUnavailable",
    "RecordsDropped",
    "Run",
    "Tracker",
    "TrackerError",
    "__version__",
    "connect",
    "default_tags",
    "query_status",
]
