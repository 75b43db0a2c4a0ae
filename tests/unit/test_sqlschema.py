"""The SQL writer's schema guard (sqlschema.py) on real MLflow SQLite stores: any database whose
tables the writer touches agree with the installed MLflow's table objects passes, whatever its
Alembic revision; a real difference in one of them is named (table, column or constraint).

Stores made by other MLflow versions are tested in tests/compat (the oldest and newest MLflow of
the supported range, each in its own venv)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.mlflow_tables import rebuild_sqlite_table, sqlite_store, sqlite_template
from tracker_daemon.sqlschema import WRITER_TABLES, schema_problem

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Iterator[Path]:
    store = sqlite_store(template, tmp_path / "store")
    store.engine.dispose()
    yield tmp_path / "store" / "mlflow.db"


def problem(db: Path) -> str | None:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        return schema_problem(engine)
    finally:
        engine.dispose()


def test_a_store_made_by_the_installed_mlflow_passes_whatever_its_revision(db: Path) -> None:
    assert problem(db) is None
    with sa.create_engine(f"sqlite:///{db}").begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0123abcd'"))
    assert problem(db) is None  # a migration of tables the writer never touches changes nothing


@pytest.mark.parametrize(
    ("table", "old", "new", "named"),
    [
        ("metrics", "step BIGINT", "step INTEGER", "column metrics.step is INTEGER()"),
        ("latest_metrics", "\ttimestamp BIGINT, \n", "", "latest_metrics.timestamp is missing"),
        ("tags", "value VARCHAR(8000)", "value VARCHAR(8000) NOT NULL", "tags.value is NOT NULL"),
        ("params", "value VARCHAR(8000)", "value VARCHAR(500)", "params.value holds 500 char"),
        (
            "latest_metrics",
            "run_uuid VARCHAR(32) NOT NULL, ",
            "run_uuid VARCHAR(32) NOT NULL, origin TEXT NOT NULL, ",
            "latest_metrics.origin is NOT NULL without a default",
        ),
        (
            "params",
            'PRIMARY KEY ("key", run_uuid)',
            "PRIMARY KEY (run_uuid)",
            "primary key of params",
        ),
        (
            "tags",
            "CONSTRAINT tag_pk",
            "CONSTRAINT tag_once UNIQUE (run_uuid), CONSTRAINT tag_pk",
            "unique constraints of tags",
        ),
    ],
)
def test_a_real_difference_is_named(db: Path, table: str, old: str, new: str, named: str) -> None:
    rebuild_sqlite_table(db, table, old, new)
    found = problem(db)
    assert found is not None and named in found, found
    assert "\n" not in found


def test_what_the_writer_never_depends_on_passes(db: Path) -> None:
    # an extra nullable column, a longer text column; and a shorter text column the writer only
    # reads: MLflow's own migrations leave runs.status at VARCHAR(9) against the model's 20
    extra = "run_uuid VARCHAR(32) NOT NULL, "
    rebuild_sqlite_table(db, "tags", extra, f"{extra}note TEXT, ")
    rebuild_sqlite_table(db, "params", "value VARCHAR(8000)", "value VARCHAR(10000)")
    assert problem(db) is None
    columns = {
        c["name"]: c for c in sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_columns("runs")
    }
    assert columns["status"]["type"].length < 20


def test_a_database_without_mlflows_tables(tmp_path: Path) -> None:
    found = problem(tmp_path / "empty.db")
    assert found == "the database has no runs table"
    assert set(WRITER_TABLES) == {"runs", "metrics", "latest_metrics", "params", "tags"}


def test_an_unsupported_dialect_is_named() -> None:
    engine: Any = sa.create_engine("sqlite://")
    engine.dialect.name = "oracle"
    assert schema_problem(engine) is not None and "oracle" in str(schema_problem(engine))
