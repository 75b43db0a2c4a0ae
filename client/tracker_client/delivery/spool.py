"""The client's offline spool: outbound frames kept on disk while no daemon takes them.

A spool file ``<spool_dir>/<client_id>.spool`` holds protocol frames (hello, start_run, data,
artifact, flush, end_run — exactly as they would have gone on the wire) in the framing of
:mod:`..wire.framing`. The client process that owns it holds an exclusive ``flock`` on it;
while it lives it sends the spool itself once a daemon answers. A spool left by a process that
died is sent by ``tracker-daemon import PATH`` or by the daemon itself (it scans its spool dir):
:func:`~tracker_client.delivery.spool_import.import_spool` replays the frames over an ordinary
connection, so the daemon's usual (client id, seq) de-duplication makes a second import harmless.

Spool dir: ``$TRACKER_SPOOL_DIR``; else the one the daemon announced; else the daemon's default
state dir's ``spool/`` (``/var/lib/tracker-daemon/spool`` when writable, otherwise
``$XDG_STATE_HOME/tracker-daemon/spool``).
"""

from __future__ import annotations

import fcntl
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import protocol as p
from ..wire.bounds import DEFAULT_MAX_RECORDS, value_budget
from ..wire.framing import HEADER, MAX_PAYLOAD, encode_frame

__all__ = [
    "ImportRefused",
    "ImportResult",
    "Oversized",
    "Spool",
    "SpoolBusy",
    "default_spool_dir",
    "record_value_budget",
]

SUFFIX = ".spool"


def record_value_budget(max_record: int) -> int:
    """The most msgpack values an importer builds for one spool record of at most
    ``max_record`` bytes: the wire's budget for a daemon's default ``max_records_per_frame``, or
    one value per 4 bytes of the record when that is more (a metric record takes about 7 bytes per
    value, so an older client's frame of many records still decodes; a hostile record of nested
    empty arrays, 1 byte each, is stopped after a quarter of its bytes)."""
    return max(value_budget(DEFAULT_MAX_RECORDS), max_record // 4)


@dataclass(frozen=True, slots=True)
class Oversized:
    """A spool record longer than the reader's limit: skipped unread (see :meth:`Spool.records`)."""

    offset: int
    length: int
    limit: int

    def __str__(self) -> str:
        return (
            f"spool record at offset {self.offset} is {self.length} bytes; the limit is "
            f"{self.limit} bytes (the wire's max_frame): not read"
        )


class SpoolBusy(Exception):
    """The spool's writer is still alive (it holds the lock); it will send the data itself."""


def default_spool_dir() -> Path:
    env = os.environ.get("TRACKER_SPOOL_DIR")
    if env:
        return Path(env)
    system = Path("/var/lib/tracker-daemon/spool")
    if os.getuid() == 0 or os.access(system, os.W_OK):  # access() never raises
        return system
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "tracker-daemon" / "spool"


class Spool:
    """Append frames; read them back in order; owned (flocked) by one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._read_at = 0
        self._size = 0
        self.owner_uid = -1  # the file's owner (fstat of the open file), once open

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o2770)
        # O_NOFOLLOW: a link planted in a shared spool dir must not make us truncate its target
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"{self.path} is locked by another process") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO, device, ... planted in a shared spool dir
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file")
        if st.st_uid == os.getuid():
            os.fchmod(fd, 0o660)  # the daemon (same group) imports it; the umask must not stop it
        self._fd = fd
        self._size = st.st_size
        self._read_at = 0
        self.owner_uid = st.st_uid

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def unread(self) -> int:
        return self._size - self._read_at

    @property
    def size(self) -> int:
        return self._size

    def append(self, frames: list[bytes]) -> None:
        """Add ``frames`` at the end, all or nothing: on an error (ENOSPC, EIO, ...) the file is cut
        back to where it was and the ``OSError`` is raised."""
        self._write(b"".join(encode_frame(f) for f in frames), self._size)

    def _write(self, data: bytes, at: int) -> None:
        try:
            done = 0
            while done < len(data):  # a full disk may take part of it before it raises ENOSPC
                done += os.pwrite(self._fd, memoryview(data)[done:], at + done)
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, at)  # frees the torn part; needs no space
            except OSError:
                pass
            self._size = min(self._size, at)
            raise
        self._size = at + len(data)

    def read(self, max_frames: int) -> list[bytes]:
        """Up to ``max_frames`` frames not yet read (a torn or corrupt tail is skipped)."""
        frames: list[bytes] = []
        while len(frames) < max_frames and self.unread >= HEADER.size:
            length, crc = HEADER.unpack(os.pread(self._fd, HEADER.size, self._read_at))
            if length > MAX_PAYLOAD or HEADER.size + length > self.unread:
                break
            payload = os.pread(self._fd, length, self._read_at + HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            frames.append(payload)
            self._read_at += HEADER.size + length
        if len(frames) < max_frames and self.unread > 0:
            self._read_at = self._size  # a torn tail cannot be sent; skip it
        return frames

    def read_all(self) -> list[bytes]:
        return self.read(1 << 62)

    def records(self, max_bytes: int) -> Iterator[bytes | Oversized]:
        """Every record from the start, read one at a time (memory: one record of at most
        ``max_bytes``). A record longer than ``max_bytes`` that the file holds whole is yielded
        as :class:`Oversized`, unread, and reading goes on after it; a torn or corrupt tail ends
        the iteration (as :meth:`read`). Independent of :meth:`read`'s position."""
        at, size = 0, self._size
        while size - at >= HEADER.size:
            length, crc = HEADER.unpack(os.pread(self._fd, HEADER.size, at))
            if length > MAX_PAYLOAD or HEADER.size + length > size - at:
                return  # a torn tail
            if length > max_bytes:
                yield Oversized(at, length, max_bytes)
            else:
                payload = os.pread(self._fd, length, at + HEADER.size)
                if len(payload) != length or zlib.crc32(payload) != crc:
                    return
                yield payload
            at += HEADER.size + length

    def rewrite(self, frames: list[bytes]) -> None:
        """Replace the whole content (used at close to put everything unsent in order). On an
        error the file is left empty and the ``OSError`` is raised."""
        os.ftruncate(self._fd, 0)
        self._size = self._read_at = 0
        self._write(b"".join(encode_frame(f) for f in frames), 0)

    def reset_if_done(self) -> None:
        if self._fd >= 0 and self._read_at >= self._size and self._size:
            os.ftruncate(self._fd, 0)
            self._size = self._read_at = 0

    def close(self, *, remove_if_empty: bool = True) -> None:
        if self._fd < 0:
            return
        if remove_if_empty and self._size == 0:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock
        self._fd = -1


class ImportRefused(Exception):
    """The daemon refused a frame of the spool for good: importing the same file again cannot
    succeed (the frames before it were imported; the file is left in place)."""


@dataclass
class ImportResult:
    path: Path
    frames: int = 0
    records: int = 0
    runs: dict[str, str] = field(default_factory=dict)  # offline id (or req) -> MLflow run id
    failures: list[p.Failure] = field(default_factory=list)
    ended_failed: list[str] = field(default_factory=list)
    reframed: int = 0  # oversized data frames (older clients) sent as several smaller ones
    skipped: list[str] = field(default_factory=list)  # frames or seqs that could not be sent
