"""Disk full as a state, not a crash: which errors mean "no room (or no device) for the daemon's
own files", how much room a filesystem has, and the set of the daemon's files it cannot write
right now (each logged once per episode, reported by ``status`` until a write succeeds again).

The daemon's own files are the journal (segments, ``mark.json``), ``runs.log``, the dead letter
file and the pid in ``daemon.lock``. A write that fails with one of :data:`DISK_ERRNOS` is never
fatal: the journal refuses new data (``journal_full``), the mark and ``runs.log`` are kept in memory
and written again later, a dead letter stays in the log only.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

__all__ = ["DISK_ERRNOS", "DiskProblems", "fs_room", "is_disk_error"]

log = logging.getLogger("tracker_daemon.disk")

# no space, quota exceeded, I/O error, file too large (RLIMIT_FSIZE, or the filesystem's limit)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def fs_room(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding ``path`` (0 when it
    cannot be told)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class DiskProblems:
    """The daemon's own files that cannot be written right now: ``what`` -> reason."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}
        self.episodes = 0  # how many times a file started failing

    def failed(self, what: str, exc: OSError, note: str) -> None:
        """A write of ``what`` failed; ``note`` says what the daemon does instead."""
        if what not in self.active:
            self.episodes += 1
            log.error(
                "event=disk_write_failed file=%s errno=%s reason=%r note=%s",
                what,
                errno.errorcode.get(exc.errno or 0, exc.errno),
                str(exc),
                note,
            )
        self.active[what] = f"cannot write {what}: {exc.strerror or exc}"

    def ok(self, what: str) -> None:
        """A write of ``what`` succeeded: end its episode (logged if one was open)."""
        if self.active.pop(what, None) is not None:
            log.info("event=disk_write_recovered file=%s", what)

    def __bool__(self) -> bool:
        return bool(self.active)
