"""The only writer to the MLflow backend. Blocking calls: the daemon runs them in worker threads.

This module is the one boundary where MLflow is imported and where its exceptions are mapped
into :mod:`tracker_daemon.errors` (:func:`classify`). It talks to MLflow's tracking *store*
(``AbstractStore``: ``log_batch``, ``create_run``, ...) rather than ``MlflowClient`` so the
daemon's own default artifact root applies and no client-side re-validation runs twice.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_client import protocol as p

from ..errors import ConfigError, PermanentSinkError, RetryableSinkError, RunGone, SinkError
from .store_check import check_sqlite_store

if TYPE_CHECKING:
    from .sqlwriter import Outcome, SqlWriter

log = logging.getLogger("tracker_daemon")

__all__ = ["RunHandle", "Sink", "classify"]

_RETRYABLE_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
)
_RETRYABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EAGAIN, errno.EBUSY, errno.EIO, errno.EDQUOT})
_RUN_GONE_HINTS = ("must be in the 'active' state", "Run with id=", "not found")


@dataclass(frozen=True, slots=True)
class RunHandle:
    run_id: str
    experiment_id: str
    artifact_uri: str
    run_name: str
    params: dict[str, str]


def classify(exc: BaseException) -> SinkError:
    """Map an exception raised by MLflow (or below it) to a retryable or permanent SinkError."""
    if isinstance(exc, SinkError):
        return exc
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        message = exc.message if isinstance(exc.message, str) else str(exc.message)
        if code in _RETRYABLE_CODES or "database is locked" in message:
            return RetryableSinkError(code, message)
        if code == "RESOURCE_DOES_NOT_EXIST" or any(h in message for h in _RUN_GONE_HINTS):
            return RunGone(code, message)
        return PermanentSinkError(code, message)
    if isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and exc.errno in _RETRYABLE_ERRNOS
    ):
        return RetryableSinkError("TEMPORARILY_UNAVAILABLE", f"{type(exc).__name__}: {exc}")
    name = type(exc).__module__ + "." + type(exc).__name__
    if name.startswith("requests.") or name.startswith("urllib3.") or "OperationalError" in name:
        return RetryableSinkError("TEMPORARILY_UNAVAILABLE", f"{type(exc).__name__}: {exc}")
    return PermanentSinkError("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")


class Sink:
    """MLflow writes for one backend store. Methods block; every one raises only SinkError.

    ``mode`` is the ``sink`` setting: with "sql" or "auto" and a SQL store whose schema the
    :mod:`.sqlwriter` was tested with, :attr:`writer` is set and records go through
    :meth:`write_entries` (many runs per transaction); otherwise through :meth:`log_batch`.
    ``sqlite_wal`` switches a SQLite store to WAL mode at open."""

    def __init__(
        self,
        backend_uri: str,
        artifact_root: str,
        *,
        mode: str = "auto",
        sqlite_wal: bool = True,
        make_parents: bool = True,
    ) -> None:
        self.backend_uri = backend_uri
        self.make_parents = make_parents  # False: an explicit store path (store_check)
        self.artifact_root = artifact_root
        self.mode = mode
        self.sqlite_wal = sqlite_wal
        self.writer: SqlWriter | None = None
        self.described = "mlflow: not opened yet"  # the status document's "sink"
        self._store: Any = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise ConfigError naming the path and the cause if the store can never be opened
        (a SQLite file: see :mod:`~tracker_daemon.store.store_check`); other faults are retried."""
        check_sqlite_store(self.backend_uri, make_parents=self.make_parents)

    def open(self) -> None:
        """Create the store (and, for SQLite, the database and its schema). Blocking, slow once."""
        self.check()
        try:
            if "://" not in self.artifact_root:
                Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            from mlflow.tracking._tracking_service.utils import _get_store

            if self.backend_uri.startswith(("http://", "https://")):
                # mlflow-artifacts:/ URIs of runs resolve against the tracking server
                import mlflow

                mlflow.set_tracking_uri(self.backend_uri)
            self._store = _get_store(self.backend_uri, self.artifact_root)  # type: ignore[no-untyped-call]
            engine = getattr(self._store, "engine", None)
            if engine is not None and self.backend_uri.startswith("sqlite:") and self.sqlite_wal:
                _sqlite_wal(engine)
        except Exception as exc:
            raise classify(exc) from exc
        self.writer = self._open_writer(engine)

    def _open_writer(self, engine: Any) -> SqlWriter | None:
        """The SQL writer when the setting and the database allow it (the schema guard); says
        which path records take in one log line."""
        if self.mode == "mlflow":
            self.described = "mlflow: log_batch per run (sink = mlflow)"
            return None
        if engine is None:
            self.described = "mlflow: log_batch per run (not a SQL store)"
            return None
        from .sqlwriter import SqlWriter, schema_problem

        try:
            problem = schema_problem(engine)
        except Exception as exc:
            raise classify(exc) from exc
        if problem is not None:
            if self.mode == "sql":
                raise ConfigError(
                    f"sink = 'sql': the SQL writer cannot write this database: {problem}. "
                    "Bring the database to the installed MLflow's schema (mlflow db upgrade "
                    "URI), or set sink = 'auto' to fall back to MLflow's log_batch"
                )
            self.described = f"mlflow: log_batch per run ({problem})"
            log.warning("event=sql_writer_off reason=%r note=using_mlflow_log_batch", problem)
            return None
        self.described = "sql: many runs per transaction"
        log.info("event=sql_writer_on dialect=%s", engine.dialect.name)
        return SqlWriter(engine)

    def status(self) -> dict[str, Any]:
        return {"sink": self.described}

    @property
    def store(self) -> Any:
        if self._store is None:
            raise RuntimeError("Sink.open() was not called")
        return self._store

    # ------------------------------------------------------------------ records

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[p.Metric],
        params: Sequence[p.Param],
        tags: Sequence[p.Tag],
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        try:
            self.store.log_batch(
                run_id,
                [
                    Metric(
                        m.key,
                        m.value,
                        m.timestamp,
                        m.step,
                        model_id=m.model_id,
                        dataset_name=m.dataset_name,
                        dataset_digest=m.dataset_digest,
                    )
                    for m in metrics
                ],
                [Param(x.key, x.value) for x in params],
                [RunTag(t.key, t.value) for t in tags],
            )
        except Exception as exc:
            raise classify(exc) from exc

    def write_entries(
        self,
        entries: Sequence[tuple[str, Sequence[p.Record]]],
        units: frozenset[int] = frozenset(),
    ) -> list[Outcome]:
        """The records of many runs in one transaction (see :class:`~.sqlwriter.SqlWriter`);
        the entries at the indexes ``units`` are units (all-or-nothing)."""
        if self.writer is None:
            raise RuntimeError("the SQL writer is not in use")
        try:
            return self.writer.write(entries, units)
        except Exception as exc:
            raise classify(exc) from exc

    # ------------------------------------------------------------------ runs and experiments

    def get_or_create_experiment(self, name: str) -> str:
        """Experiment id by name, creating it if missing; safe against concurrent creators."""
        from mlflow.exceptions import MlflowException

        try:
            with self._lock:
                exp = self.store.get_experiment_by_name(name)
                if exp is None:
                    try:
                        return str(self.store.create_experiment(name))
                    except MlflowException as exc:
                        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                            raise
                        exp = self.store.get_experiment_by_name(name)
                if exp.lifecycle_stage != "active":
                    raise PermanentSinkError(
                        "INVALID_PARAMETER_VALUE",
                        f"experiment {name!r} is deleted; restore it or choose another name",
                    )
                return str(exp.experiment_id)
        except Exception as exc:
            raise classify(exc) from exc

    def create_run(
        self,
        experiment_id: str,
        start_time: int,
        tags: dict[str, str],
        run_name: str | None,
        parent_run_id: str | None,
    ) -> RunHandle:
        from mlflow.entities import RunTag

        try:
            all_tags = dict(tags)
            if parent_run_id:
                self.store.get_run(parent_run_id)  # fail clearly if the parent does not exist
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.store.create_run(
                experiment_id=experiment_id,
                user_id=all_tags.get("mlflow.user", "unknown"),
                start_time=start_time,
                tags=[RunTag(k, v) for k, v in all_tags.items()],
                run_name=run_name,
            )
        except Exception as exc:
            raise classify(exc) from exc
        info = run.info
        return RunHandle(info.run_id, str(info.experiment_id), info.artifact_uri, info.run_name, {})

    def resume_run(self, run_id: str) -> RunHandle:
        """Reopen an existing run (status back to RUNNING, as MLflow's start_run(run_id) does)."""
        try:
            run = self.store.get_run(run_id)
            if run.info.lifecycle_stage != "active":
                raise PermanentSinkError(
                    "INVALID_PARAMETER_VALUE", f"run {run_id} is deleted; it cannot be resumed"
                )
            if run.info.status != "RUNNING":
                self.store.update_run_info(run_id, 1, None, None)  # RunStatus.RUNNING == 1
        except Exception as exc:
            raise classify(exc) from exc
        info = run.info
        return RunHandle(
            info.run_id,
            str(info.experiment_id),
            info.artifact_uri,
            info.run_name,
            dict(run.data.params),
        )

    def run_info(self, run_id: str) -> RunHandle:
        """A run's identity and artifact location (read only)."""
        try:
            info = self.store.get_run(run_id).info
        except Exception as exc:
            raise classify(exc) from exc
        return RunHandle(info.run_id, str(info.experiment_id), info.artifact_uri, info.run_name, {})

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        from mlflow.entities import RunStatus

        try:
            self.store.update_run_info(run_id, RunStatus.from_string(status), end_time, None)
        except Exception as exc:
            raise classify(exc) from exc

    # ------------------------------------------------------------------ artifacts

    def upload_artifact(
        self, artifact_uri: str, local_path: str, artifact_path: str | None
    ) -> None:
        """Upload a file or directory (the daemon's private, verified copy) to the run's
        artifact location."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            repo = get_artifact_repository(artifact_uri)
            if os.path.isdir(local_path):  # like mlflow.log_artifacts: the directory's contents
                repo.log_artifacts(local_path, artifact_path)  # type: ignore[no-untyped-call]
            else:
                repo.log_artifact(local_path, artifact_path)  # type: ignore[no-untyped-call]
        except Exception as exc:
            error = classify(exc)
            if "Invalid artifact" in error.message:  # MLflow says INTERNAL_ERROR; never retry
                raise PermanentSinkError("INVALID_PARAMETER_VALUE", error.message) from exc
            raise error from exc


def _sqlite_wal(engine: Any) -> None:
    """WAL mode: a reader (``mlflow ui``) never blocks the writer, nor the writer a reader. It
    is a property of the database file, so every connection (MLflow's, the UI's) uses it. The
    default ``synchronous`` (FULL) is kept: a committed transaction survives a power loss, which
    the journal's mark relies on."""
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
    if str(mode).lower() != "wal":
        log.warning("event=sqlite_wal_unavailable journal_mode=%s note=kept", mode)
