"""Real MLflow SQL stores for the SQL writer's tests, and their rows as plain tuples.

Creating an MLflow database runs every Alembic migration (seconds), so tests copy a template
SQLite file made once per module; :func:`table_rows` reads what the writer and MLflow compare on.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

TABLES = ("metrics", "latest_metrics", "params", "tags")


def sql_store(uri: str, artifacts: Path) -> Any:
    """MLflow's own SqlAlchemyStore on ``uri`` (creates the schema when the database is empty)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store: Any = SqlAlchemyStore
    return store(uri, str(artifacts))


def sqlite_template(directory: Path) -> Path:
    """An empty MLflow SQLite database at the schema head (made once; copy it per test)."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "template.db"
    sql_store(f"sqlite:///{db}", directory / "artifacts").engine.dispose()
    return db


def sqlite_store(template: Path, directory: Path) -> Any:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, directory / "mlflow.db")
    return sql_store(f"sqlite:///{directory / 'mlflow.db'}", directory / "artifacts")


def table_rows(engine: sa.Engine, run_map: Mapping[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of metrics, latest_metrics, params, tags (all columns) and runs (name, status,
    lifecycle_stage, start/end time) of the runs in ``run_map``, with each run uuid replaced by
    ``run_map[uuid]`` (a name that is the same in two databases), sorted."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    meta = sa.MetaData()
    with engine.connect() as conn:
        for name in TABLES:
            table = sa.Table(name, meta, autoload_with=conn)
            cols = sorted(c.name for c in table.columns)
            rows = []
            for row in conn.execute(sa.select(*(table.c[c] for c in cols))):
                d = dict(zip(cols, row, strict=True))
                if d["run_uuid"] not in run_map:
                    continue
                d["run_uuid"] = run_map[d["run_uuid"]]
                if "is_nan" in d:
                    d["is_nan"] = bool(d["is_nan"])
                rows.append(tuple(d[c] for c in cols))
            out[name] = sorted(rows, key=repr)
        runs = sa.Table("runs", meta, autoload_with=conn)
        q = sa.select(
            runs.c.run_uuid,
            runs.c.name,
            runs.c.status,
            runs.c.lifecycle_stage,
            runs.c.start_time,
            runs.c.end_time,
        )
        out["runs"] = sorted((run_map[r[0]], *r[1:]) for r in conn.execute(q) if r[0] in run_map)
    return out


def rebuild_sqlite_table(db: Path, table: str, old: str, new: str) -> None:
    """Recreate ``table`` of the SQLite database ``db`` from its own ``CREATE TABLE`` statement
    with ``old`` replaced by ``new`` (a column's type, a constraint, a column dropped), keeping the
    rows of the columns both versions have: a real schema that differs from MLflow's."""
    import sqlite3

    with sqlite3.connect(db) as con:
        (ddl,) = con.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        assert old in ddl, f"{old!r} is not in {ddl}"
        before = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        con.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
        con.execute(ddl.replace(old, new))
        after = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        cols = ", ".join(c for c in before if c in after)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_old")
        con.execute(f"DROP TABLE {table}_old")
