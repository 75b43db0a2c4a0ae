"""``tracker_client.address``: the path the daemon and older code import; the module is
:mod:`tracker_client.wire.address` (this one only re-exports it; the client's own modules import
the new path, a contract in .importlinter)."""

from __future__ import annotations

from .wire.address import (
    ENV_ADDRESS,
    SOCKET_NAME,
    access_problem,
    client_default_address,
    daemon_default_address,
    ipc_path,
    no_answer,
)

__all__ = [
    "ENV_ADDRESS",
    "SOCKET_NAME",
    "access_problem",
    "client_default_address",
    "daemon_default_address",
    "ipc_path",
    "no_answer",
]
