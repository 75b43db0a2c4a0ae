"""Where the daemon listens by default (shared by the client and the daemon; pure, no I/O but stat).

Resolution order for a client: ``$TRACKER_DAEMON_ADDRESS``; else the first existing socket
among the per-user socket (``$XDG_RUNTIME_DIR/tracker-daemon/tracker.sock``), the system socket
(``/run/tracker-daemon/tracker.sock``) and the /tmp fallback
(``/tmp/tracker-daemon-$UID/tracker.sock``); else the address a daemon started by this user would
bind by default.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ENV_ADDRESS",
    "SOCKET_NAME",
    "client_default_address",
    "daemon_default_address",
    "access_problem",
    "ipc_path",
    "no_answer",
]

ENV_ADDRESS = "TRACKER_DAEMON_ADDRESS"
SOCKET_NAME = "tracker.sock"
SYSTEM_RUNTIME_DIR = Path("/run/tracker-daemon")


def _user_runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "tracker-daemon"
    return Path(f"/tmp/tracker-daemon-{os.getuid()}")


def daemon_default_address() -> str:
    """The address a daemon binds when none is configured: system socket as root, else per-user."""
    base = SYSTEM_RUNTIME_DIR if os.getuid() == 0 else _user_runtime_dir()
    return f"ipc://{base / SOCKET_NAME}"


def client_default_address() -> str:
    env = os.environ.get(ENV_ADDRESS)
    if env:
        return env
    candidates = [
        _user_runtime_dir() / SOCKET_NAME,
        SYSTEM_RUNTIME_DIR / SOCKET_NAME,
        Path(f"/tmp/tracker-daemon-{os.getuid()}") / SOCKET_NAME,
    ]
    for path in candidates:
        if _present(path):
            return f"ipc://{path}"
    return daemon_default_address()


def _present(path: Path) -> bool:
    """True if the socket exists — or may exist but its directory is closed to us (then the
    connection error explains the permission problem instead of pointing elsewhere)."""
    try:
        return path.exists()
    except PermissionError:
        return True


def access_problem(path: Path) -> str | None:
    """Why this process cannot use the socket at ``path``, if it cannot."""
    try:
        path.stat()
    except PermissionError:
        return (
            f"permission denied on {path}: the daemon's socket is open to members of its group "
            "(tracker by default); ask an administrator to add your user to it"
        )
    except FileNotFoundError:
        return None
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            f"permission denied on {path}: the daemon's socket is open to members of its group "
            "(tracker by default); ask an administrator to add your user to it"
        )
    return None


def ipc_path(address: str) -> Path | None:
    """The filesystem path of an ``ipc://`` address, or None for other transports."""
    if address.startswith("ipc://"):
        return Path(address[len("ipc://") :])
    return None


def no_answer(address: str, timeout: float) -> str:
    """Why no daemon answered at ``address`` within ``timeout``, with the likely cause when one is
    known (a socket this user may not open, or no socket at all)."""
    msg = f"no answer from tracker-daemon at {address} within {timeout:g} s"
    path = ipc_path(address)
    problem = access_problem(path) if path is not None else None
    if problem is not None:
        msg += f"; {problem}"
    elif path is not None and not _exists(path):
        msg += (
            f"; the socket {path} does not exist — is the daemon running? "
            "Start it with `tracker-daemon run` or set TRACKER_DAEMON_ADDRESS"
        )
    return msg


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return True
