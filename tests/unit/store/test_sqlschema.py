"""The SQL writer's schema guard (sqlschema.py) on real MLflow SQLite stores: any database whose
tables the writer touches agree with the installed MLflow's table objects passes, whatever its
Alembic revision; a real difference in one of them is named (table, column or constraint).

Stores made by other MLflow versions come from the side venvs of ``make compat`` (tests/compat.py:
the oldest and newest MLflow of the supported range), and, in a side venv's own run, from the
lock's MLflow; this module also runs in each side venv (marked compat)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.daemon import REPO
from tests.support.mlflow_tables import rebuild_sqlite_table, sqlite_store, sqlite_template
from tracker_daemon.store.sqlschema import WRITER_TABLES, schema_problem

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


MAKE_STORE = (
    "import sys, mlflow\n"
    "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore\n"
    "SqlAlchemyStore(sys.argv[1], sys.argv[2]).engine.dispose()\n"
    "print(mlflow.__version__)"
)


def other_mlflow_pythons() -> list[Path]:
    """Interpreters with another MLflow: make compat's side venvs (.venv-mlflow-VERSION) and,
    when this run is a side venv's, the lock's venv (TRACKER_COMPAT_LOCK_PYTHON)."""
    built = sorted(REPO.glob(".venv-mlflow-*/.key"))  # the stamp of a complete side venv
    found = [key.parent / "bin" / "python" for key in built]
    if os.environ.get("TRACKER_COMPAT_LOCK_PYTHON"):
        found.append(Path(os.environ["TRACKER_COMPAT_LOCK_PYTHON"]))
    return [py for py in found if py.parent.parent.resolve() != Path(sys.prefix).resolve()]


@pytest.mark.timeout(300)
def test_stores_made_by_other_mlflow_versions_pass(tmp_path: Path) -> None:
    """A real store made by another MLflow of the range, at that MLflow's own schema revision,
    passes this MLflow's guard: the writer's tables agree across the range (if a release
    changes one, this names it)."""
    pythons = other_mlflow_pythons()
    if not pythons:
        pytest.skip("no venv with another MLflow: make compat builds them (.venv-mlflow-VERSION)")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    for n, python in enumerate(pythons):
        db = tmp_path / f"store{n}.db"
        made = subprocess.run(
            [str(python), "-c", MAKE_STORE, f"sqlite:///{db}", str(tmp_path / f"art{n}")],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert made.returncode == 0, made.stderr[-2000:]
        version = made.stdout.strip().splitlines()[-1]
        assert problem(db) is None, f"a store made by MLflow {version}: {problem(db)}"
