"""Entry points for MLflow: ``MLFLOW_TRACKING_URI=tracker://`` routes unmodified MLflow code
through the daemon.

MLflow loads these entry points while ``import mlflow`` is still running, so this module imports
nothing from mlflow: the store classes live in :mod:`tracker_client.mlflow.store`, imported when
MLflow first asks for a store. ``tracker_client.mlflow_plugin`` (the entry points' path) re-exports
this module.

URIs (parsed in :mod:`.uri`): ``tracker://`` (the default daemon address),
``tracker:///abs/path/tracker.sock`` (an ipc socket), ``tracker+tcp://127.0.0.1:PORT`` (tcp).
"""

from __future__ import annotations

from typing import Any

__all__ = ["registry_store", "tracking_store"]


def _skip_spark_probe() -> None:
    """MLflow builds an ``MlflowClient`` per fluent call and each one tries ``import pyspark``;
    when pyspark is not installed that failed import searches sys.path every time (~60 µs of a
    ~110 µs ``mlflow.log_metric``). A ``None`` entry in ``sys.modules`` makes the import fail at
    once — only done when pyspark is truly absent, so nothing that could import it changes."""
    import importlib.util
    import sys

    if "pyspark" not in sys.modules and importlib.util.find_spec("pyspark") is None:
        sys.modules["pyspark"] = None  # type: ignore[assignment]


def tracking_store(store_uri: str | None = None, artifact_uri: str | None = None) -> Any:
    from .store import TrackerStore

    _skip_spark_probe()

    # abstract only to mypy: the forwarders are attached when mlflow_store is imported
    return TrackerStore(store_uri or "tracker://", artifact_uri)  # type: ignore[abstract]


def registry_store(store_uri: str | None = None, tracking_uri: str | None = None) -> Any:
    from .store import TrackerRegistryStore

    return TrackerRegistryStore(store_uri or tracking_uri or "tracker://")  # type: ignore[abstract]
