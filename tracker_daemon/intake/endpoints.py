"""Where the daemon binds, checked before it binds: an ipc socket path that another daemon still
answers on is refused (ZeroMQ's bind would silently replace the live socket file), and a busy
tcp port is found before the store and journal are opened (daemon.py calls check_tcp_free
first). The socket directory the daemon creates is 0770, whatever the umask."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from ..errors import AlreadyRunning

__all__ = ["check_tcp_free", "prepare_ipc_path", "refuse_live_socket"]


def prepare_ipc_path(path: Path) -> None:
    """Create the socket's directory (0770 when this creates it, whatever the umask); refuse to
    replace a socket another daemon still answers on."""
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.parent.mkdir(mode=0o770)
    except FileExistsError:
        pass  # an existing directory (e.g. systemd's RuntimeDirectory=, /tmp) keeps its mode
    else:
        os.chmod(path.parent, 0o770)
    if not refuse_live_socket(path):
        path.unlink(missing_ok=True)  # stale socket of a daemon that is gone


def refuse_live_socket(path: Path) -> bool:
    """Raise AlreadyRunning if another daemon answers on ``path`` (or it is no socket); returns
    whether a (stale) socket file is there."""
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        pass
    finally:
        probe.close()
    raise AlreadyRunning(
        f"another tracker-daemon is listening on {path}; stop it first "
        "(or give this one another --address and --state-dir)"
    )


def check_tcp_free(host: str, port: int, what: str, fix: str) -> None:
    """Raise AlreadyRunning naming ``what`` (the setting and its value) and ``fix`` if another
    process holds ``host:port``. A test bind with SO_REUSEADDR, as ZeroMQ and http.server bind;
    an address this cannot resolve (an interface name) or an ephemeral port is left to the bind."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            "0.0.0.0" if host in ("*", "") else host,  # ZeroMQ binds "*" on IPv4
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except (OSError, UnicodeError):
        return
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyRunning(
                    f"{what} is already in use by another process; {fix}"
                ) from None
