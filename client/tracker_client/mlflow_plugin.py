"""Entry points for MLflow (``tracker_client.mlflow_plugin:tracking_store`` and
``:registry_store``, named in client/pyproject.toml): ``MLFLOW_TRACKING_URI=tracker://`` routes
unmodified MLflow code through the daemon. The plugin is :mod:`tracker_client.mlflow.plugin`;
this path stays for the entry points and for code that imports it. Imports nothing from mlflow.
"""

from __future__ import annotations

from .mlflow.plugin import registry_store, tracking_store
from .mlflow.uri import address_of

__all__ = ["address_of", "registry_store", "tracking_store"]
