"""The journal's files besides the segments' appends: ``mark.json`` (written atomically, or in
place on a full disk), the repair of a damaged segment, and ``quarantine/``.

``mark.json`` is written as a new file fsynced and renamed over the old one. When there is no
room for the new file (a full disk), the old one is rewritten in place: it is padded to whole
blocks (``MARK_BLOCK``), so the new mark fits in the blocks it already has and the rewrite needs
no space. A crash in the middle of an in-place rewrite leaves a mark that does not parse; the
journal then replays everything it holds, which is idempotent.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

from tracker_client.wire.framing import scan

from .diskspace import is_disk_error

__all__ = ["MARK_BLOCK", "fsync_dir", "quarantine_file", "repair_segment", "write_mark_file"]

log = logging.getLogger("tracker_daemon.journal")

MARK_BLOCK = 4096


def write_mark_file(directory: Path, segment: int, offset: int, clients: dict[str, int]) -> None:
    """Persist ``directory/mark.json`` (blocking); raises OSError when it cannot be written."""
    tmp = directory / "mark.json.tmp"
    data = json.dumps({"segment": segment, "offset": offset, "clients": clients}).encode()
    data += b" " * (-len(data) % MARK_BLOCK)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # give back what a failed write took
        if not is_disk_error(exc) or not _overwrite(directory / "mark.json", data):
            raise
        return
    os.replace(tmp, directory / "mark.json")
    fsync_dir(directory)


def _overwrite(path: Path, data: bytes) -> bool:
    """Rewrite ``path`` in place if ``data`` fits in its size; True when written and fsynced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size < len(data):
            return False
        data += b" " * (size - len(data))
        if os.pwrite(fd, data, 0) != len(data):
            return False
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def repair_segment(path: Path) -> int:
    """Scan a segment; cut a torn/corrupt tail into quarantine. Returns the good size."""
    data = path.read_bytes()
    result = scan(data)
    if result.problem is not None:
        bad = data[result.good_end :]
        qpath = _unused(path.parent / "quarantine" / f"{path.name}.{result.good_end}.bad")
        try:
            qpath.parent.mkdir(exist_ok=True)
            qpath.write_bytes(bad)
        except OSError as exc:  # a full disk: cut anyway, a torn tail must not stop a start
            qpath.unlink(missing_ok=True)
            log.error("event=journal_quarantine_failed reason=%r", str(exc))
            qpath = Path("(not saved)")
        with open(path, "r+b") as fh:
            fh.truncate(result.good_end)
            os.fsync(fh.fileno())
        log.warning(
            "event=journal_quarantine segment=%s reason=%r bytes=%d kept_frames=%d saved_to=%s",
            path.name,
            result.problem,
            len(bad),
            len(result.frames),
            qpath,
        )
    return result.good_end


def quarantine_file(path: Path) -> None:
    """Move ``path`` into ``quarantine/`` next to it (best effort)."""
    try:
        (path.parent / "quarantine").mkdir(exist_ok=True)
        path.rename(_unused(path.parent / "quarantine" / f"{path.name}.bad"))
    except OSError:
        pass


def _unused(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... if taken: never overwrite earlier quarantine."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
