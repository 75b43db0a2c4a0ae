"""The schema guard of the SQL writer (sqlwriter.py): is this database one it was tested with?

The writer reproduces MLflow's ``log_batch`` on MLflow's own tables, so it is only safe on the
schema revision it was tested against. :func:`schema_problem` reads the database's Alembic
revision (the ``alembic_version`` table MLflow's migrations maintain) and answers ``None`` when
it is in :data:`TESTED_REVISIONS`, otherwise one human line saying what was found and what was
expected; the daemon then logs that line and keeps using MLflow's ``log_batch``.

The dialect is checked too: the writer's insert-or-ignore exists for SQLite, PostgreSQL and
MySQL/MariaDB only.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

__all__ = ["SUPPORTED_DIALECTS", "TESTED_REVISIONS", "schema_problem"]

# The head of mlflow/store/db_migrations/versions in MLflow 3.17.x
# (dc11669786a5_add_job_executor_persistence_model.py: no migration names it as down_revision).
TESTED_REVISIONS: Final[frozenset[str]] = frozenset({"dc11669786a5"})

SUPPORTED_DIALECTS: Final = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})

# Not DDL: a selectable naming the table Alembic maintains, to read the revision.
_ALEMBIC_VERSION: Final = sa.table("alembic_version", sa.column("version_num", sa.String))


def schema_problem(engine: sa.Engine) -> str | None:
    """None when the database's ``alembic_version`` is in :data:`TESTED_REVISIONS` (and the
    dialect is supported); otherwise a one-line reason naming the revision found and the tested
    one(s). A missing or unreadable table is a reason too."""
    tested = ", ".join(sorted(TESTED_REVISIONS))
    dialect = engine.dialect.name
    if dialect not in SUPPORTED_DIALECTS:
        return (
            f"the SQL writer supports {', '.join(sorted(SUPPORTED_DIALECTS))}, "
            f"not the {dialect} dialect"
        )
    try:
        with engine.connect() as conn:
            found = sorted(str(v) for v in conn.scalars(sa.select(_ALEMBIC_VERSION.c.version_num)))
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"cannot read the schema revision (alembic_version: {reason}); "
            f"the SQL writer is tested with revision {tested}"
        )
    if not found:
        return (
            f"the alembic_version table is empty; the SQL writer is tested with revision {tested}"
        )
    if len(found) == 1 and found[0] in TESTED_REVISIONS:
        return None
    return (
        f"database schema revision {', '.join(found)} is not one the SQL writer is tested with "
        f"({tested})"
    )
