"""The SQL writer: MLflow's ``log_batch`` for many runs in ONE transaction, on MLflow's own tables.

MLflow's ``SqlAlchemyStore.log_batch`` costs a session, a ``_get_run`` per section, an ORM object
per metric, a ``latest_metrics`` read-modify-write and a commit per run batch. This writer does
the same work for a list of entries ``(run_id, records)`` with a handful of statements::

    validate (pure: model_id -> ValueError, run id format)
    BEGIN (SQLite: BEGIN IMMEDIATE, so the reads below and the writes are one atomic step)
    SELECT runs          WHERE run_uuid IN (...)                      missing / deleted -> RunFailed
    SELECT params        WHERE run_uuid IN (...)                      (when the entries hold params)
    SELECT latest_metrics WHERE run_uuid IN (...) AND key IN (...)
                         ORDER BY run_uuid, key FOR UPDATE            (when they hold metrics)
    SELECT tags (keys)   WHERE run_uuid IN (...) AND key IN (...)     (when they hold tags)
    decide every record in memory, in entry order (conflicts fail one record, not the transaction)
    INSERT metrics (insert-or-ignore) / INSERT+UPDATE latest_metrics / INSERT params /
    INSERT+UPDATE tags / UPDATE runs.name           -- executemany, statements built once
    COMMIT

The statements are SQLAlchemy Core built from MLflow's table objects
(``mlflow.store.tracking.dbmodels.models``); nothing here writes DDL. The rules, record for
record, are those of ``sqlalchemy_store.py`` (``log_batch``, ``_log_params``,
``_log_metrics_once``, ``_update_latest_metrics_if_necessary``, ``_set_tags``/``set_tag``/
``update_run_info``), as the committer applies them (a failing batch bisected down to its failing
records; a run-level failure fails every record of the entry):

* metrics: NaN stored as value 0 with ``is_nan``; +/-inf as +/-1.7976931348623157e308; a metric
  equal on the primary key to a stored one is a no-op (a replay after a crash neither fails nor
  doubles); ``latest_metrics`` keeps per (run, key) the greatest (step, timestamp, value) with the
  sanitized value, strictly greater replaces, in arrival order.
* params: MLflow's ``_validate_param`` (truncation included), then insert-once; the same value
  again is a no-op, another value fails that record with ``_log_params``' message.
* tags: MLflow's ``_validate_tag``; within an entry the last value of a key wins (as the batch
  the committer hands to ``log_batch``); upsert; ``mlflow.runName`` with a non-empty value also
  sets ``runs.name`` (``update_run_info``), an empty one changes nothing.

Validation messages use the paths MLflow reports for a batch of one record (``params[0].key``),
which is what the committer's bisection reports. Metrics with a ``model_id`` are not written here
(``ValueError``): the caller routes them to MLflow's ``log_batch``.
Database errors propagate as SQLAlchemy exceptions; the transaction is rolled back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import sqlalchemy as sa
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.utils.validation import (
    _validate_metric,
    _validate_param,
    _validate_run_id,
    _validate_tag,
)

from tracker_client.protocol import Metric, Param, Record, Tag

from .sqlschema import TESTED_REVISIONS, schema_problem

__all__ = ["TESTED_REVISIONS", "Outcome", "RunFailed", "SqlWriter", "schema_problem"]

_RUN_NAME_TAG: Final = "mlflow.runName"
_MAX_FLOAT: Final = 1.7976931348623157e308
_INF: Final = math.inf
_IN_CHUNK: Final = 500  # keys per IN (...) list, like MLflow's batches of 500

_RUNS: Final[sa.Table] = SqlRun.__table__
_METRICS: Final[sa.Table] = SqlMetric.__table__
_LATEST: Final[sa.Table] = SqlLatestMetric.__table__
_PARAMS: Final[sa.Table] = SqlParam.__table__
_TAGS: Final[sa.Table] = SqlTag.__table__
# The order of a metric row tuple (the table's column order; checked against the compiled insert).
_METRIC_COLUMNS: Final = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")


@dataclass(frozen=True, slots=True)
class RunFailed:
    """Every record of the entry failed: the run is missing, deleted or its id is malformed.
    ``code`` and ``message`` are MLflow's (``_get_run`` / ``_check_run_is_active``)."""

    code: str
    message: str


Outcome: TypeAlias = RunFailed | dict[int, tuple[str, str]] | None
"""None: every record committed; RunFailed: none did; a dict: index into the entry's records ->
(code, message) of each record that failed (the others committed)."""

_Failure: TypeAlias = tuple[str, str]
_Key: TypeAlias = tuple[str, str]  # (run_uuid, key)


def _mlflow_failure(exc: MlflowException) -> _Failure:
    message = exc.message if isinstance(exc.message, str) else str(exc.message)
    return str(exc.error_code), message


def _insert_or_ignore(engine: sa.Engine, table: sa.Table) -> Any:
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing()
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing()
    if name in ("mysql", "mariadb"):
        return sa.insert(table).prefix_with("IGNORE")
    raise ValueError(f"the SQL writer does not support the {name} dialect")


class _Tx:
    """What one transaction read and decided: the state the records are applied to, in order."""

    __slots__ = (
        "latest",
        "latest_dirty",
        "latest_stored",
        "metric_rows",
        "param_rows",
        "params",
        "run_names",
        "tags",
        "tags_stored",
    )

    def __init__(self) -> None:
        self.params: dict[_Key, str] = {}
        self.param_rows: list[dict[str, Any]] = []
        self.metric_rows: list[tuple[str, float, int, int, bool, str]] = []  # _METRIC_COLUMNS
        self.latest: dict[_Key, tuple[int, int, float, bool]] = {}  # step, timestamp, value, nan
        self.latest_stored: set[_Key] = set()
        self.latest_dirty: dict[_Key, None] = {}
        self.tags: dict[_Key, str] = {}
        self.tags_stored: set[_Key] = set()
        self.run_names: dict[str, str] = {}


class SqlWriter:
    """Blocking; each :meth:`write` uses its own connection and transaction, so calls from
    several threads are safe (the database serialises them)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        ids: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
        keys: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
        self._select_runs = sa.select(_RUNS.c.run_uuid, _RUNS.c.lifecycle_stage).where(
            _RUNS.c.run_uuid.in_(ids)
        )
        self._select_params = sa.select(_PARAMS.c.run_uuid, _PARAMS.c.key, _PARAMS.c.value).where(
            _PARAMS.c.run_uuid.in_(ids)
        )
        lm = _LATEST.c
        self._select_latest = (
            sa.select(lm.run_uuid, lm.key, lm.step, lm.timestamp, lm.value, lm.is_nan)
            .where(lm.run_uuid.in_(ids), lm.key.in_(keys))
            .order_by(lm.run_uuid, lm.key)
            .with_for_update()  # as MLflow; SQLite has no row locks (BEGIN IMMEDIATE instead)
        )
        self._select_tags = sa.select(_TAGS.c.run_uuid, _TAGS.c.key).where(
            _TAGS.c.run_uuid.in_(ids), _TAGS.c.key.in_(keys)
        )
        # The hot statement: compiled once to the driver's SQL; rows go to the DBAPI's
        # executemany as tuples in _METRIC_COLUMNS order (dicts for a named paramstyle).
        compiled = _insert_or_ignore(engine, _METRICS).compile(dialect=engine.dialect)
        self._insert_metrics_sql = str(compiled)
        order = list(compiled.positiontup or ()) if engine.dialect.positional else None
        if order is not None and order != list(_METRIC_COLUMNS):
            raise RuntimeError(f"unexpected bind order of the metrics insert: {order}")
        self._named_params = order is None
        self._insert_latest = sa.insert(_LATEST)
        self._update_latest = (
            sa.update(_LATEST)
            .where(lm.run_uuid == sa.bindparam("b_run"), lm.key == sa.bindparam("b_key"))
            .values(
                value=sa.bindparam("b_value"),
                timestamp=sa.bindparam("b_timestamp"),
                step=sa.bindparam("b_step"),
                is_nan=sa.bindparam("b_is_nan"),
            )
        )
        self._insert_params = sa.insert(_PARAMS)
        self._insert_tags = sa.insert(_TAGS)
        self._update_tags = (
            sa.update(_TAGS)
            .where(_TAGS.c.run_uuid == sa.bindparam("b_run"), _TAGS.c.key == sa.bindparam("b_key"))
            .values(value=sa.bindparam("b_value"))
        )
        self._update_run_name = (
            sa.update(_RUNS)
            .where(_RUNS.c.run_uuid == sa.bindparam("b_run"))
            .values(name=sa.bindparam("b_value"))
        )
        self._metric_keys_ok: set[str] = set()  # metric names MLflow's rules accepted

    # ------------------------------------------------------------------ the transaction

    def write(self, entries: Sequence[tuple[str, Sequence[Record]]]) -> list[Outcome]:
        """Commit every entry in ONE transaction, applied in list order; one Outcome per entry.
        Uses the entry's run id, never ``record.run_id``. Raises ValueError for a Metric with a
        ``model_id`` (before touching the database); database errors propagate."""
        outcomes: list[Outcome] = [None] * len(entries)
        run_ids: dict[str, None] = {}
        for n, (run_id, records) in enumerate(entries):
            for rec in records:
                if type(rec) is Metric and rec.model_id is not None:
                    raise ValueError(
                        f"metric {rec.key!r} has a model_id: route it to MLflow's log_batch"
                    )
            try:
                _validate_run_id(run_id)  # type: ignore[no-untyped-call]
            except MlflowException as exc:
                outcomes[n] = RunFailed(*_mlflow_failure(exc))
                continue
            run_ids[run_id] = None
        if not run_ids:
            return outcomes
        with self._engine.connect() as conn:
            if self._sqlite:
                # pysqlite would BEGIN only at the first write, after the reads: take the write
                # lock first so what is decided from the reads still holds when it is written.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                self._apply(conn, entries, list(run_ids), outcomes)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return outcomes

    def _apply(
        self,
        conn: sa.Connection,
        entries: Sequence[tuple[str, Sequence[Record]]],
        run_ids: list[str],
        outcomes: list[Outcome],
    ) -> None:
        stages = {
            str(r): str(s) for r, s in conn.execute(self._select_runs, {"ids": run_ids}).all()
        }
        live: dict[str, None] = {}
        metric_keys: set[str] = set()
        tag_keys: set[str] = set()
        has_params = False
        for n, (run_id, records) in enumerate(entries):
            if outcomes[n] is not None:
                continue
            stage = stages.get(run_id)
            if stage is None:
                outcomes[n] = RunFailed(
                    "RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found"
                )
            elif stage != "active":
                outcomes[n] = RunFailed(
                    "INVALID_PARAMETER_VALUE",
                    f"The run {run_id} must be in the 'active' state. Current state is {stage}.",
                )
            else:
                live[run_id] = None
                for rec in records:
                    t = type(rec)
                    if t is Metric:
                        metric_keys.add(rec.key)
                    elif t is Tag:
                        tag_keys.add(rec.key)
                    else:
                        has_params = True
        if not live:
            return
        tx = _Tx()
        self._read(conn, tx, list(live), has_params, sorted(metric_keys), sorted(tag_keys))
        for n, (run_id, records) in enumerate(entries):
            if outcomes[n] is None:
                failures = self._decide(tx, run_id, records)
                outcomes[n] = failures or None
        self._flush(conn, tx)

    def _read(
        self,
        conn: sa.Connection,
        tx: _Tx,
        runs: list[str],
        has_params: bool,
        metric_keys: list[str],
        tag_keys: list[str],
    ) -> None:
        if has_params:
            for run, key, value in conn.execute(self._select_params, {"ids": runs}):
                tx.params[(run, key)] = value
        for i in range(0, len(metric_keys), _IN_CHUNK):
            args = {"ids": runs, "keys": metric_keys[i : i + _IN_CHUNK]}
            for run, key, step, ts, value, is_nan in conn.execute(self._select_latest, args):
                tx.latest[(run, key)] = (step, ts, value, bool(is_nan))
        tx.latest_stored.update(tx.latest)
        for i in range(0, len(tag_keys), _IN_CHUNK):
            args = {"ids": runs, "keys": tag_keys[i : i + _IN_CHUNK]}
            tx.tags_stored.update((run, key) for run, key in conn.execute(self._select_tags, args))

    # ------------------------------------------------------------------ deciding (pure)

    def _decide(self, tx: _Tx, run_id: str, records: Sequence[Record]) -> dict[int, _Failure]:
        failures: dict[int, _Failure] = {}
        last_tag: dict[str, int] = {}  # key -> index of its last record (order of first appearance)
        ok_keys = self._metric_keys_ok
        metric_rows = tx.metric_rows
        latest = tx.latest
        dirty = tx.latest_dirty
        for i, rec in enumerate(records):
            if isinstance(rec, Metric):
                key, value, ts, step = rec.key, rec.value, rec.timestamp, rec.step
                if not (
                    key in ok_keys
                    and type(value) is float
                    and type(ts) is int
                    and ts >= 0
                    and type(step) is int
                ):
                    problem = self._metric_problem(rec)
                    if problem is not None:
                        failures[i] = problem
                        continue
                    value = float(value)
                is_nan = False
                if value != value:
                    is_nan, value = True, 0.0
                elif value == _INF:
                    value = _MAX_FLOAT
                elif value == -_INF:
                    value = -_MAX_FLOAT
                metric_rows.append((key, value, ts, step, is_nan, run_id))
                lk = (run_id, key)
                cur = latest.get(lk)
                if cur is None or (step, ts, value) > (cur[0], cur[1], cur[2]):
                    latest[lk] = (step, ts, value, is_nan)
                    dirty[lk] = None
            elif isinstance(rec, Param):
                problem = self._param(tx, run_id, rec)
                if problem is not None:
                    failures[i] = problem
            else:
                last_tag[rec.key] = i
        for i in last_tag.values():
            problem = self._tag(tx, run_id, records[i])
            if problem is not None:
                failures[i] = problem
        return failures

    def _metric_problem(self, rec: Metric) -> _Failure | None:
        try:
            _validate_metric(rec.key, rec.value, rec.timestamp, rec.step, path="metrics[0]")  # type: ignore[no-untyped-call]
        except MlflowException as exc:
            return _mlflow_failure(exc)
        self._metric_keys_ok.add(rec.key)
        return None

    @staticmethod
    def _param(tx: _Tx, run_id: str, rec: Param) -> _Failure | None:
        try:
            param = _validate_param(rec.key, rec.value, path="params[0]")  # type: ignore[no-untyped-call]
        except MlflowException as exc:
            return _mlflow_failure(exc)
        key, value = param.key, param.value
        old = tx.params.get((run_id, key))
        if old is None:
            tx.params[(run_id, key)] = value
            tx.param_rows.append({"run_uuid": run_id, "key": key, "value": value})
            return None
        if old == value:
            return None
        non_matching = [{"key": key, "old_value": old, "new_value": value}]
        return (
            "INVALID_PARAMETER_VALUE",
            "Changing param values is not allowed. Params were already"
            f" logged='{non_matching}' for run ID='{run_id}'.",
        )

    @staticmethod
    def _tag(tx: _Tx, run_id: str, rec: Record) -> _Failure | None:
        try:
            tag = _validate_tag(rec.key, rec.value, path="tags[0]")  # type: ignore[no-untyped-call]
        except MlflowException as exc:
            return _mlflow_failure(exc)
        if tag.key == _RUN_NAME_TAG:
            if not tag.value:  # update_run_info(run_name="") changes nothing
                return None
            tx.run_names[run_id] = tag.value
        tx.tags[(run_id, tag.key)] = tag.value
        return None

    # ------------------------------------------------------------------ writing

    def _flush(self, conn: sa.Connection, tx: _Tx) -> None:
        if tx.metric_rows:
            rows: Sequence[Any] = tx.metric_rows
            if self._named_params:
                rows = [dict(zip(_METRIC_COLUMNS, row, strict=True)) for row in rows]
            conn.exec_driver_sql(self._insert_metrics_sql, rows)
        if tx.latest_dirty:
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            for lk in tx.latest_dirty:
                step, ts, value, is_nan = tx.latest[lk]
                if lk in tx.latest_stored:
                    updates.append(
                        {
                            "b_run": lk[0],
                            "b_key": lk[1],
                            "b_value": value,
                            "b_timestamp": ts,
                            "b_step": step,
                            "b_is_nan": is_nan,
                        }
                    )
                else:
                    inserts.append(
                        {
                            "run_uuid": lk[0],
                            "key": lk[1],
                            "value": value,
                            "timestamp": ts,
                            "step": step,
                            "is_nan": is_nan,
                        }
                    )
            if inserts:
                conn.execute(self._insert_latest, inserts)
            if updates:
                conn.execute(self._update_latest, updates)
        if tx.param_rows:
            conn.execute(self._insert_params, tx.param_rows)
        if tx.tags:
            new = [
                {"run_uuid": r, "key": k, "value": v}
                for (r, k), v in tx.tags.items()
                if (r, k) not in tx.tags_stored
            ]
            old = [
                {"b_run": r, "b_key": k, "b_value": v}
                for (r, k), v in tx.tags.items()
                if (r, k) in tx.tags_stored
            ]
            if new:
                conn.execute(self._insert_tags, new)
            if old:
                conn.execute(self._update_tags, old)
        if tx.run_names:
            conn.execute(
                self._update_run_name,
                [{"b_run": r, "b_value": v} for r, v in tx.run_names.items()],
            )
