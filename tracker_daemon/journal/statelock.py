"""One daemon per state dir: an ``flock`` on ``<state dir>/daemon.lock`` held for the process's
lifetime, holding the daemon's pid (for the "already running" message)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import AlreadyRunning
from .diskspace import DiskProblems

__all__ = ["StateLock"]


class StateLock:
    def __init__(self, state_dir: Path, disk: DiskProblems) -> None:
        self.state_dir = state_dir
        self.disk = disk
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder's pid (held: a no-op)."""
        if self._fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(
                f"state dir {self.state_dir} is in use by tracker-daemon pid {holder}; "
                "stop it first or choose another --state-dir"
            ) from None
        self._fd = fd
        self.write_pid()

    @property
    def pid_pending(self) -> bool:
        """The pid could not be written yet (a full disk); try again later."""
        return "daemon.lock" in self.disk.active

    def write_pid(self) -> None:
        """Record this daemon's pid in the lock file; on a full disk the lock holds all the
        same, and the caller tries again later (``pid_pending``)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            self.disk.failed("daemon.lock", exc, "lock_held_pid_written_later")
        else:
            self.disk.ok("daemon.lock")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
