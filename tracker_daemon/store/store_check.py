"""Faults of a SQLite backend store that no retry can fix, found before MLflow is asked to open it.

MLflow retries an SQLite file it cannot open for about two minutes and then calls the fault
``TEMPORARILY_UNAVAILABLE`` without saying why. A local file that cannot be opened now will not
open later: a missing directory, a permission the daemon's user lacks, a read-only file system,
or a file that is not an SQLite database. :func:`check_sqlite_store` names the path and the cause
at once (a :class:`~tracker_daemon.errors.ConfigError`: exit code 2). Faults that may pass (a
remote database not up yet, a locked file) are left to the sink's retries.

Directories: only the store file's own directory is created, and only when its parent exists, so
a typo in an explicit path is an error instead of a new directory tree with an empty store. The
default store (in the state dir) has its directories created (``make_parents``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..errors import ConfigError

__all__ = ["SQLITE_MAGIC", "check_sqlite_store", "sqlite_file"]

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (None: not SQLite, or in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def check_sqlite_store(uri: str, *, make_parents: bool) -> None:
    """Raise ConfigError naming the path and the cause if the SQLite store of ``uri`` can never
    be opened for writing; create its directory (see the module docstring). Creates no file."""
    path = sqlite_file(uri)
    if path is None:
        return
    parent = path.parent
    where = f"backend_store_uri {uri}"
    if make_parents:
        _mkdir(parent, where, parents=True)
    elif not parent.is_dir():
        if not parent.parent.is_dir():
            raise ConfigError(
                f"{where}: the directory {parent.parent} does not exist (only the store's own "
                f"directory, {parent.name}/, is created): check the path for a typo, or create "
                "the directory first"
            )
        _mkdir(parent, where, parents=False)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        _check_creatable(parent, path, where)
        return
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open {path} for writing: {_cause(exc, path)}") from None
    try:
        head = os.pread(fd, len(SQLITE_MAGIC), 0)
    finally:
        os.close(fd)
    if head and head != SQLITE_MAGIC:
        raise ConfigError(
            f"{where}: {path} is not an SQLite database (it does not start with "
            f"{SQLITE_MAGIC[:-1].decode()!r}); point backend_store_uri at an MLflow database "
            "or at a new file"
        )
    if not os.access(parent, os.W_OK | os.X_OK):  # SQLite writes its journal next to the file
        raise ConfigError(
            f"{where}: cannot create files in {parent} (SQLite keeps its journal next to the "
            f"database): {_cause(PermissionError(errno.EACCES, 'Permission denied'), parent)}"
        )


def _mkdir(directory: Path, where: str, *, parents: bool) -> None:
    try:
        directory.mkdir(parents=parents, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot create the directory {directory}: {_cause(exc, directory)}"
        ) from None


def _check_creatable(parent: Path, path: Path, where: str) -> None:
    """A new store: can this user create a file in ``parent``? (A probe file, removed at once.)"""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tracker-daemon-probe-", dir=parent)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create {path}: {_cause(exc, parent)}") from None
    os.close(fd)
    os.unlink(probe)


def _cause(exc: OSError, path: Path) -> str:
    """The cause of an OSError in words a user can act on."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied (the daemon runs as uid {os.geteuid()})"
    if code == errno.EROFS:
        return "read-only file system"
    if code == errno.ENOENT:
        if not path.parent.exists() and not path.exists():
            return f"the directory {path.parent} does not exist"
        return f"the file system does not allow new files there ({os.strerror(code)})"
    if code == errno.EISDIR:
        return f"{path} is a directory"
    if code == errno.ENOTDIR:
        return f"a part of {path} is not a directory"
    if code == errno.ELOOP:
        return f"{path} is a symbolic link loop"
    return os.strerror(code) if code else str(exc)
