"""The ``tracker`` URIs of the MLflow plugin and the ZeroMQ address each names (pure).

``tracker://`` (the default daemon address), ``tracker:///abs/path/tracker.sock`` (an ipc
socket), ``tracker+tcp://127.0.0.1:PORT`` (tcp). Imports nothing from mlflow.
"""

from __future__ import annotations

from ..wire.address import client_default_address

__all__ = ["address_of"]


def address_of(store_uri: str | None) -> str:
    """The ZeroMQ address a ``tracker`` URI names."""
    uri = store_uri or "tracker://"
    if uri.startswith("tracker+tcp://"):
        return "tcp://" + uri[len("tracker+tcp://") :].rstrip("/")
    if uri.startswith("tracker:"):
        rest = uri[len("tracker:") :]
        if rest.startswith("//"):
            rest = rest[2:]
        if rest in ("", "/"):
            return client_default_address()
        if rest.startswith("/"):
            return f"ipc://{rest}"
    raise ValueError(
        f"tracking URI {store_uri!r}: expected tracker://, tracker:///ABSOLUTE/PATH.sock or "
        "tracker+tcp://HOST:PORT"
    )
