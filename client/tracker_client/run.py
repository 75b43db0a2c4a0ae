"""A run as the training script sees it: :class:`Run`, and :class:`RunLink`, all it needs from
its :class:`~tracker_client.api.Tracker`.

Log calls validate their arguments with MLflow's rules (bad input raises at the call site), then
put the record, in wire form, on the link and return; they never wait on the daemon. ``flush``
and ``end`` are barriers the link performs; ``log_artifact(s)`` copies the file(s) now.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from . import protocol as p
from .wire import validation as v

__all__ = ["BARRIER_TIMEOUT", "CONNECT_TIMEOUT", "OFFLINE_TAG", "Run", "RunLink"]

CONNECT_TIMEOUT = float(os.environ.get("TRACKER_CONNECT_TIMEOUT", "10"))
BARRIER_TIMEOUT = float(os.environ.get("TRACKER_FLUSH_TIMEOUT", "120"))
# The tag of a run that really went offline (no daemon answered its start_run in time, or its
# start_run was imported from a spool): its value is the offline id (PROTOCOL.md section 5.1).
OFFLINE_TAG = "tracker.offline_id"

# The log_metric hot path looks these up as module globals, not attributes.
_time_ns = time.time_ns
_check_metric = v.check_metric
_metric_wire = p.metric_wire
# A plain metric (no model or dataset) is built inline on the hot path, in exactly the layout of
# protocol.metric_wire (tests/unit/client/test_run.py checks they agree): the call would add
# ~45 ns, a tenth of log_metric's own cost.


class RunLink(Protocol):
    """All a :class:`Run` needs from its :class:`Tracker` (the tracker's ``_link``)."""

    @property
    def put(self) -> Callable[[list[Any]], None]:
        """Queue one record in wire form (the log calls' path: never waits on the daemon)."""
        ...

    def stage(self, run_id: str, src: Path, artifact_path: str | None, *, is_dir: bool) -> None:
        """Copy ``src`` to the staging dir now; its upload follows everything logged before."""
        ...

    def barrier(self, run_id: str | None, timeout: float) -> None: ...
    def end(self, run_id: str, status: str, timeout: float) -> bool: ...
    def is_open(self, run_id: str) -> bool: ...
    def renamed(self, old_id: str, new_id: str) -> None:
        """An offline run got its MLflow id."""
        ...


class Run:
    """An MLflow run logged through the daemon. Use as a context manager to end it."""

    def __init__(
        self, link: RunLink, run_id: str, experiment_id: str, artifact_uri: str, run_name: str
    ) -> None:
        self._link = link
        self._put = link.put
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.artifact_uri = artifact_uri
        self.run_name = run_name
        self.offline_id: str | None = None  # set while the run started without a daemon

    def _adopt(self, fut: Future[p.DaemonMessage]) -> None:
        """A daemon finally created this offline run: use its MLflow id from now on."""
        if fut.cancelled() or fut.exception() is not None:
            return
        reply = fut.result()
        if isinstance(reply, p.RunStarted):
            self._link.renamed(self.run_id, reply.run_id)
            self.run_id, self.experiment_id = reply.run_id, reply.experiment_id
            self.artifact_uri, self.run_name = reply.artifact_uri, reply.run_name

    def __repr__(self) -> str:
        return f"<Run {self.run_id} experiment={self.experiment_id} name={self.run_name!r}>"

    def log_metric(
        self,
        key: str,
        value: float,
        step: int = 0,
        timestamp: int | None = None,
        *,
        model_id: str | None = None,
        dataset_name: str | None = None,
        dataset_digest: str | None = None,
    ) -> None:
        if timestamp is None:
            timestamp = _time_ns() // 1_000_000
        key, value, step, timestamp = _check_metric(key, value, step, timestamp)
        if model_id is None and dataset_name is None and dataset_digest is None:
            self._put(["m", self.run_id, key, value, timestamp, step, None, None, None])
            return
        extras = v.check_metric_extras(model_id, dataset_name, dataset_digest)
        self._put(_metric_wire(self.run_id, key, value, timestamp, step, *extras))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int = 0, timestamp: int | None = None
    ) -> None:
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        checked = [_check_metric(k, x, step, timestamp) for k, x in metrics.items()]
        for key, value, step_, ts in checked:
            self._put(["m", self.run_id, key, value, ts, step_, None, None, None])

    def log_param(self, key: str, value: Any) -> None:
        key, sval = v.check_param(key, value)
        self._put(["p", self.run_id, key, sval])

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, sval in [v.check_param(k, x) for k, x in params.items()]:
            self._put(["p", self.run_id, key, sval])

    def set_tag(self, key: str, value: Any) -> None:
        key, sval = v.check_tag(key, value)
        self._put(["t", self.run_id, key, sval])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, sval in [v.check_tag(k, x) for k, x in tags.items()]:
            self._put(["t", self.run_id, key, sval])

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Log a file. Its content now is what gets logged: it is copied before this returns."""
        src = Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(f"log_artifact: {src} is not a file")
        self._link.stage(self.run_id, src, v.check_artifact_path(artifact_path), is_dir=False)

    def log_artifacts(
        self, local_dir: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Log a directory's files (recursively), as of now."""
        src = Path(local_dir)
        if not src.is_dir():
            raise NotADirectoryError(f"log_artifacts: {src} is not a directory")
        self._link.stage(self.run_id, src, v.check_artifact_path(artifact_path), is_dir=True)

    def flush(self, timeout: float = BARRIER_TIMEOUT) -> None:
        """Return once everything this process logged is committed; CommitError on failures."""
        self._link.barrier(self.run_id, timeout)

    def end(self, status: str = "FINISHED", timeout: float = BARRIER_TIMEOUT) -> bool:
        """End the run with ``status`` (FINISHED, FAILED or KILLED) once everything logged is
        committed.

        The daemon journals the request and acknowledges it at once; from then on it sets the
        status after committing the run's records, even if this process exits right away or
        the daemon restarts. ``timeout`` only bounds how long this call waits for that commit:

        * True — committed and ended (CommitError if records failed);
        * False — not committed within ``timeout``: the daemon holds the END (or, with no
          daemon answering, the request is kept and spooled at exit); the status is set once
          the records are committed. Logged at INFO; the process may exit.

        Raises DaemonUnavailable when no daemon acknowledged the END within ``timeout`` and the
        tracker is not offline-capable (the request stays queued and is spooled at exit)."""
        status = v.check_status(status)
        return self._link.end(self.run_id, status, timeout)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._link.is_open(self.run_id):
            return
        if exc_type is None:
            self.end("FINISHED")
            return
        try:
            self.end("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        except Exception as end_exc:  # the original exception matters more; keep it raising
            if exc is not None:
                exc.add_note(f"tracker-client: ending the run also failed: {end_exc}")
