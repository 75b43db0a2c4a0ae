"""The schema guard of the SQL writer (sqlwriter.py): are the tables it touches the ones it expects?

The writer reproduces MLflow's ``log_batch`` with statements built from MLflow's own table objects
(``mlflow.store.tracking.dbmodels.models``) of the installed MLflow. It is safe on any database
whose tables it reads or writes agree with those objects, whatever the Alembic revision: MLflow
adds migrations for tables the writer never touches in most releases. :func:`schema_problem`
reflects the live tables (:data:`WRITER_TABLES`) and compares them with MLflow's:

- every column of MLflow's table exists, with the same kind of type (text, 32- or 64-bit
  integer, floating point, boolean) and the same nullability; a text column the writer writes is
  at least as long as MLflow's (the writer checks values against MLflow's limits, not the live
  column's);
- a column MLflow does not know is allowed only when an insert may leave it out (nullable or
  with a default);
- the primary key and the unique constraints have the same columns.

It answers ``None`` or one human line naming the table and column (or constraint) that differs;
the daemon then keeps MLflow's ``log_batch`` (``sink = auto``) or refuses to start (``sql``).
The dialect is checked too: the writer's insert-or-ignore exists for SQLite, PostgreSQL and
MySQL/MariaDB only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa

__all__ = ["SUPPORTED_DIALECTS", "WRITER_TABLES", "schema_problem", "table_problem"]

SUPPORTED_DIALECTS: Final = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})

# The tables the writer reads or writes, and per table the columns it writes (None: all).
WRITER_TABLES: Final[Mapping[str, frozenset[str] | None]] = {
    "runs": frozenset({"name"}),
    "metrics": None,
    "latest_metrics": None,
    "params": None,
    "tags": None,
}


def _mlflow_tables() -> dict[str, sa.Table]:
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    tables: list[sa.Table] = [
        m.__table__ for m in (SqlRun, SqlMetric, SqlLatestMetric, SqlParam, SqlTag)
    ]
    return {t.name: t for t in tables}


def _kind(type_: Any) -> str:
    """The kind of a column type as the writer relies on it."""
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.BigInteger):
        return "int64"
    if isinstance(type_, sa.Integer):
        # MySQL reflects MLflow's Boolean as TINYINT(1)
        return "boolean-or-int" if getattr(type_, "display_width", None) == 1 else "int32"
    if isinstance(type_, sa.Float | sa.Numeric):
        return "float"
    if isinstance(type_, sa.String):
        return "text"
    return type(type_).__name__


def _compatible(model_kind: str, live_kind: str) -> bool:
    if model_kind == live_kind:
        return True
    if live_kind == "boolean-or-int":
        return model_kind in ("boolean", "int32")
    # SQLite stores any INTEGER in 64 bits; a wider live column holds every value too
    return model_kind == "int32" and live_kind == "int64"


def _column_problem(
    table: str, model: sa.Column[Any], live: Mapping[str, Any], written: bool
) -> str | None:
    where = f"{table}.{model.name}"
    model_kind, live_kind = _kind(model.type), _kind(live["type"])
    if not _compatible(model_kind, live_kind):
        return f"column {where} is {live['type']!r} in the database, MLflow has {model.type!r}"
    if bool(live["nullable"]) != bool(model.nullable):
        said = "nullable" if live["nullable"] else "NOT NULL"
        return f"column {where} is {said} in the database, not in MLflow's table"
    if written and model_kind == "text":
        want = getattr(model.type, "length", None)
        have = getattr(live["type"], "length", None)
        if want is not None and have is not None and have < want:
            return f"column {where} holds {have} characters in the database, MLflow's {want}"
    return None


def table_problem(inspector: Any, model: sa.Table, written: frozenset[str] | None) -> str | None:
    """What differs between the live table ``model.name`` and MLflow's ``model`` (None: nothing
    the writer depends on)."""
    name = model.name
    live = {c["name"]: c for c in inspector.get_columns(name)}
    for column in model.columns:
        if column.name not in live:
            return f"column {name}.{column.name} is missing from the database"
        writes = written is None or column.name in written
        problem = _column_problem(name, column, live[column.name], writes)
        if problem is not None:
            return problem
    for extra, info in live.items():
        if extra not in model.columns and not info["nullable"] and info.get("default") is None:
            return f"column {name}.{extra} is NOT NULL without a default and unknown to MLflow"
    have_pk = set(inspector.get_pk_constraint(name).get("constrained_columns") or [])
    want_pk = {c.name for c in model.primary_key.columns}
    if have_pk != want_pk:
        return f"the primary key of {name} is {sorted(have_pk)}, MLflow's is {sorted(want_pk)}"
    have_uq = {frozenset(u["column_names"]) for u in inspector.get_unique_constraints(name)}
    want_uq = {
        frozenset(c.name for c in u.columns)
        for u in model.constraints
        if isinstance(u, sa.UniqueConstraint)
    }
    if have_uq != want_uq:
        return (
            f"the unique constraints of {name} are {sorted(map(sorted, have_uq))}, "
            f"MLflow's are {sorted(map(sorted, want_uq))}"
        )
    return None


def schema_problem(engine: sa.Engine) -> str | None:
    """None when the database's tables that the writer touches agree with the installed MLflow's
    table objects (and the dialect is supported); otherwise a one-line reason naming the table
    and column or constraint that differs."""
    dialect = engine.dialect.name
    if dialect not in SUPPORTED_DIALECTS:
        return (
            f"the SQL writer supports {', '.join(sorted(SUPPORTED_DIALECTS))}, "
            f"not the {dialect} dialect"
        )
    models = _mlflow_tables()
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            present = set(inspector.get_table_names())
            for name, written in WRITER_TABLES.items():
                if name not in present:
                    return f"the database has no {name} table"
                problem = table_problem(inspector, models[name], written)
                if problem is not None:
                    return problem
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot read the database's tables ({reason})"
    return None
