"""The SQL writer: MLflow's ``log_batch`` for many runs in ONE transaction, on MLflow's own tables.

MLflow's ``SqlAlchemyStore.log_batch`` costs a session, a ``_get_run`` per section, an ORM object
per metric, a ``latest_metrics`` read-modify-write and a commit per run batch. This writer does
the same work for a list of entries ``(run_id, records)`` with a handful of statements::

    validate (pure: model_id -> ValueError, run id format)
    BEGIN (SQLite: BEGIN IMMEDIATE, so the reads below and the writes are one atomic step)
    SELECT runs           WHERE run_uuid IN (...)                     missing / deleted -> RunFailed
    SELECT params         WHERE run_uuid IN (...)                     (when the entries hold params)
    SELECT latest_metrics WHERE run_uuid IN (...) AND key IN (...)
                          ORDER BY run_uuid, key FOR UPDATE           (when they hold metrics)
    SELECT tags (keys)    WHERE run_uuid IN (...) AND key IN (...)    (when they hold tags)
    decide every record in memory, in entry order (sqlrules.py: a conflict fails one record)
    INSERT metrics (insert-or-ignore) / INSERT+UPDATE latest_metrics / INSERT params /
    INSERT+UPDATE tags / UPDATE runs.name          -- executemany, statements built once
    COMMIT

The statements are SQLAlchemy Core built from MLflow's table objects
(``mlflow.store.tracking.dbmodels.models``); nothing here writes DDL. The metrics insert, the
one statement per record, is compiled once to the driver's SQL and given tuples (executemany) or,
on PostgreSQL, one array per column (``INSERT ... SELECT FROM unnest(...)``). Every conflict
is decided before anything is written, so one bad record never rolls back another run's rows.
Metrics with a ``model_id`` are not written here (``ValueError``): the caller routes them to
MLflow's ``log_batch``. Database errors propagate as SQLAlchemy exceptions, rolled back.
:mod:`sqlschema` guards the writer: the live tables it touches must agree with those objects.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy as sa
from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)

from tracker_client.protocol import Metric, Record, Tag

from .sqlrules import (
    Decisions,
    Outcome,
    RunFailed,
    UnitFailed,
    bad_run_id,
    run_failure,
    unit_problem,
)
from .sqlschema import schema_problem

__all__ = ["Outcome", "RunFailed", "SqlWriter", "UnitFailed", "schema_problem"]

_IN_CHUNK: Final = 500  # keys per IN (...) list, like MLflow's batches of 500

_RUNS: Final[sa.Table] = SqlRun.__table__
_METRICS: Final[sa.Table] = SqlMetric.__table__
_LATEST: Final[sa.Table] = SqlLatestMetric.__table__
_PARAMS: Final[sa.Table] = SqlParam.__table__
_TAGS: Final[sa.Table] = SqlTag.__table__
# The order of a metric row tuple (the table's column order; checked against the compiled insert).
_METRIC_COLUMNS: Final = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
_pk_order: Final = operator.itemgetter(0, 2, 3, 5, 1, 4)  # a metric row's primary key, in order


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


def _pg_insert_arrays() -> Any:
    """PostgreSQL: one INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT DO NOTHING
    for all the rows (about half the client CPU of an executemany, and faster)."""
    from sqlalchemy.dialects import postgresql

    arrays = [
        sa.bindparam(f"a_{c}", type_=postgresql.ARRAY(_METRICS.c[c].type)) for c in _METRIC_COLUMNS
    ]
    rows = sa.func.unnest(*arrays).table_valued(*_METRIC_COLUMNS).render_derived()
    select = sa.select(*(rows.c[c] for c in _METRIC_COLUMNS))
    return postgresql.insert(_METRICS).from_select(_METRIC_COLUMNS, select).on_conflict_do_nothing()


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
        # The hot statement: compiled once to the driver's SQL. Rows go to the DBAPI as tuples in
        # _METRIC_COLUMNS order (executemany; dicts for a named paramstyle), or on PostgreSQL as
        # one array per column.
        self._arrays = engine.dialect.name == "postgresql"
        stmt = _pg_insert_arrays() if self._arrays else _insert_or_ignore(engine, _METRICS)
        compiled = stmt.compile(dialect=engine.dialect)
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

    def write(
        self,
        entries: Sequence[tuple[str, Sequence[Record]]],
        units: frozenset[int] = frozenset(),
    ) -> list[Outcome]:
        """Commit every entry in ONE transaction, applied in list order; one Outcome per entry.
        The entries whose index is in ``units`` are units: each is decided as one MLflow
        ``log_batch`` call, all-or-nothing (sqlrules.py). Uses the entry's run id, never
        ``record.run_id``. Raises ValueError for a Metric with a ``model_id`` (before touching
        the database); database errors propagate."""
        outcomes: list[Outcome] = [None] * len(entries)
        run_ids: dict[str, None] = {}
        for n, (run_id, records) in enumerate(entries):
            for rec in records:
                if type(rec) is Metric and rec.model_id is not None:
                    raise ValueError(
                        f"metric {rec.key!r} has a model_id: route it to MLflow's log_batch"
                    )
            outcomes[n] = bad_run_id(run_id)
            if outcomes[n] is None and n in units:
                # checked before the run, as MLflow does
                outcomes[n] = unit_problem(records, self._metric_keys_ok)
            if outcomes[n] is None:
                run_ids[run_id] = None
        if not run_ids:
            return outcomes
        with self._engine.connect() as conn:
            conn.begin()
            driver: Any = conn.connection.driver_connection
            if self._sqlite and not driver.in_transaction:
                # pysqlite would BEGIN only at the first write, after the reads: take the write
                # lock first so what is decided from the reads still holds when it is written.
                # (An engine whose "begin" event already emits BEGIN is left to it.)
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                self._apply(conn, entries, list(run_ids), outcomes, units)
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
        units: frozenset[int],
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
            checked = () if n in units else records  # a unit's records passed unit_problem
            outcomes[n] = run_failure(run_id, stages.get(run_id), checked, self._metric_keys_ok)
            if outcomes[n] is None:
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
        tx = Decisions(self._metric_keys_ok)
        self._read(conn, tx, list(live), has_params, sorted(metric_keys), sorted(tag_keys))
        for n, (run_id, records) in enumerate(entries):
            if outcomes[n] is None:
                if n in units:
                    outcomes[n] = tx.unit(run_id, records)
                    continue
                failures = tx.entry(run_id, records)
                outcomes[n] = failures or None
        self._flush(conn, tx)

    def _read(
        self,
        conn: sa.Connection,
        tx: Decisions,
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

    # ------------------------------------------------------------------ writing

    def _flush(self, conn: sa.Connection, tx: Decisions) -> None:
        if tx.metric_rows:
            # in primary-key order (key, timestamp, step, run_uuid, value, is_nan): the B-tree is
            # then filled page by page instead of at random places (the rows are identical on a
            # duplicate key, so the order changes nothing else)
            rows: Any = sorted(tx.metric_rows, key=_pk_order)
            if self._arrays:
                columns = zip(*rows, strict=True)
                rows = {f"a_{c}": list(v) for c, v in zip(_METRIC_COLUMNS, columns, strict=True)}
            elif self._named_params:
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
