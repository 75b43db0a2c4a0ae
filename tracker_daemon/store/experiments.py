"""What ``start_run`` needs beyond the sink's run calls, for clients without ``call``
(client/PROTOCOL.md, section 5.4): find an active experiment by name (a read: the store is
asked each time, so a rename, delete or restore — through the daemon or by anyone else, e.g.
the MLflow UI — is seen at once), create an experiment with an artifact location, set
experiment tags, and find the latest run of a given name in an experiment (``resume``
``"by_name"``). Blocking MLflow store calls (run them through the daemon's ``write``); every
method raises only :class:`~tracker_daemon.errors.SinkError`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from ..errors import PermanentSinkError
from .sink import classify

__all__ = ["RESUME_BY_NAME", "Experiments", "name_filter"]

RESUME_BY_NAME = "by_name"


def name_filter(run_name: str) -> str:
    """MLflow's search filter for runs named exactly ``run_name`` (quoted with ' or ")."""
    for quote in ("'", '"'):
        if quote not in run_name:
            return f"attributes.run_name = {quote}{run_name}{quote}"
    raise PermanentSinkError(
        "INVALID_PARAMETER_VALUE",
        f"run_name {run_name[:200]!r}: a name holding both ' and \" cannot be resumed by name",
    )


@functools.cache
def _find_query() -> Any:
    """SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = :name (MLflow's own
    table object: its columns as the installed MLflow defines them)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlExperiment

    table = SqlExperiment.__table__
    return sa.select(table.c.experiment_id, table.c.lifecycle_stage).where(
        table.c.name == sa.bindparam("name")
    )


class Experiments:
    """Experiment creation with a location, experiment tags, runs by name (MLflow store)."""

    def __init__(self, store: Callable[[], Any]) -> None:
        self._store = store  # the sink's MLflow tracking store (opened later than we are built)
        self._lock = threading.Lock()

    def find(self, name: str) -> str | None:
        """The id of the active experiment named ``name`` now, or None (none, or deleted). On
        an SQL store one indexed SELECT on MLflow's own ``experiments`` table object (~0.3 ms;
        MLflow's get_experiment_by_name also loads the tags through its ORM: ~7 ms), else the
        store's get_experiment_by_name."""
        try:
            store = self._store()
            engine = getattr(store, "engine", None)
            if engine is not None:
                with engine.connect() as conn:
                    row = conn.execute(_find_query(), {"name": name}).first()
                found = None if row is None else (row[0], row[1])
            else:
                exp = store.get_experiment_by_name(name)
                found = None if exp is None else (exp.experiment_id, exp.lifecycle_stage)
        except Exception as exc:
            raise classify(exc) from exc
        if found is None or found[1] != "active":
            return None
        return str(found[0])

    def get_or_create(self, name: str, artifact_location: str | None) -> str:
        """The id of the active experiment ``name``; created with ``artifact_location`` (nil:
        the daemon's artifact root) when it does not exist. An existing experiment keeps its
        location. Safe against concurrent creators."""
        from mlflow.exceptions import MlflowException

        try:
            store = self._store()
            with self._lock:
                exp = store.get_experiment_by_name(name)
                if exp is None:
                    try:
                        return str(store.create_experiment(name, artifact_location or None))
                    except MlflowException as exc:
                        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                            raise
                        exp = store.get_experiment_by_name(name)
                if exp.lifecycle_stage != "active":
                    raise PermanentSinkError(
                        "INVALID_PARAMETER_VALUE",
                        f"experiment {name!r} is deleted; restore it or choose another name",
                    )
                return str(exp.experiment_id)
        except Exception as exc:
            raise classify(exc) from exc

    def set_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Set (or replace) each tag on the experiment, as MLflow's set_experiment_tag."""
        from mlflow.entities import ExperimentTag

        try:
            store = self._store()
            for key, value in tags.items():
                store.set_experiment_tag(experiment_id, ExperimentTag(key, value))
        except Exception as exc:
            raise classify(exc) from exc

    def latest_run_named(self, experiment_id: str, run_name: str) -> str | None:
        """The id of the active run named ``run_name`` in the experiment with the latest start
        time (any status), or None."""
        from mlflow.entities import ViewType

        try:
            runs = self._store().search_runs(
                [experiment_id],
                name_filter(run_name),
                ViewType.ACTIVE_ONLY,
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        except Exception as exc:
            raise classify(exc) from exc
        return str(runs[0].info.run_id) if runs else None
