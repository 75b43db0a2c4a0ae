"""The write-ahead journal: every accepted message is appended here before it is acked.

Layout (``<state_dir>/journal/``)::

    0000000001.seg ...   segments: frames of ``wire.framing`` (u32 len, u32 crc, payload)
    mark.json            low-water mark {segment, offset, clients}: everything before it is
                         committed to MLflow; replay starts there
    quarantine/          bytes cut from torn or corrupt segment tails, for inspection

Entries are settled out of order (batches are per run); the low-water mark is the position of the
oldest entry not yet settled. Entries after the mark that were already committed are replayed
after a crash; MLflow's stores are idempotent for them (metric rows are keyed on key, timestamp,
step and value; an unchanged param is accepted; tags are overwritten in order).

Whole segments are deleted only when the mark has moved past them, and only after the mark file
itself has been written and fsynced — except on a full disk, where the mark cannot be written
until space is freed: then segments wholly before the low-water mark (every entry in them is
committed) are deleted first. That is safe: replay from the older mark skips segments that are
gone, and what it replays again is idempotent (see above). A torn tail or a bad CRC is never a
reason to refuse to start: the bad bytes are moved to ``quarantine/`` with a log line and the
segment is truncated.

Space: a segment is rolled at ``segment_bytes``, or earlier on a small filesystem (at an eighth
of the room the journal has: free space plus its own segments, at least ``MIN_SEGMENT_BYTES``),
so committed segments can be deleted while the journal still has room. When an append finds no
room (``JournalFull``) and everything written is committed, ``roll_if_settled`` starts a new
segment so the next mark drops the old one: a journal on a disk smaller than one segment keeps
flowing. Disk errors (:data:`.diskspace.DISK_ERRNOS`) of an append are reported
as ``JournalFull`` with nothing written; the entry is refused, never half-written.

``mark.json`` and ``quarantine/`` are written by :mod:`.journal_files`.

Blocking file I/O: the daemon calls ``append`` from its event loop (a buffered write, no fsync)
and ``sync``/``write_mark``/``read`` from worker threads.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker_client.wire.framing import HEADER, encode_frame, scan

from ..errors import JournalFull
from .diskspace import DISK_ERRNOS, fs_room, is_disk_error
from .journal_files import fsync_dir, quarantine_file, repair_segment, write_mark_file

__all__ = ["MIN_SEGMENT_BYTES", "Journal", "JournalFull", "Mark", "Position"]

log = logging.getLogger("tracker_daemon.journal")

SEGMENT_SUFFIX = ".seg"
MIN_SEGMENT_BYTES = 256 * 1024  # the smallest segment rolled early on a small filesystem


@dataclass(frozen=True, slots=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(slots=True)
class Mark:
    position: Position
    clients: dict[str, int]


class Journal:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        max_bytes: int = 8 * 1024 * 1024 * 1024,
        room: Callable[[Path], int] = fs_room,
    ) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.seg_limit = segment_bytes  # where the current segment is rolled (see _adapt)
        self._room = room
        self._roll_next = False  # the current segment's tail is unknown: write a new one
        self.appended_bytes = 0  # written since open
        self._fd = -1
        self._segment = 0
        self._offset = 0
        self._sizes: dict[int, int] = {}  # segment -> bytes on disk
        self._outstanding: OrderedDict[Position, bool] = OrderedDict()  # pos -> settled
        self._dirty = False
        self._lock = threading.Lock()  # guards fd rotation against a concurrent sync
        self.mark = Mark(Position(1, 0), {})
        self.full_reason = ""
        self.disk_full = False  # full_reason is a disk error (not journal_max_bytes)
        self._refused_bytes = 0  # the frame journal_max_bytes last refused: full until it fits

    # ------------------------------------------------------------------ opening and recovery

    def open(self) -> Mark:
        """Create or recover the journal. Returns the mark replay starts from."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            (self.dir / "quarantine").mkdir(exist_ok=True)
        except OSError as exc:  # a full disk: made when first needed
            log.error("event=journal_quarantine_dir_failed reason=%r", str(exc))
        self.mark = self._read_mark()
        segments = self._segments()
        for seg in segments:
            if seg < self.mark.position.segment:  # fully committed but not yet deleted
                (self.dir / _name(seg)).unlink(missing_ok=True)
                continue
            self._sizes[seg] = repair_segment(self.dir / _name(seg))
        if not self._sizes:
            self._segment = max(self.mark.position.segment, 1)
            self._open_segment(self._segment)
        else:
            self._segment = max(self._sizes)
            self._open_segment(self._segment)
        self._adapt()
        mark = self.mark.position
        cut = self._sizes.get(mark.segment)
        if cut is not None and cut < mark.offset:
            # damage below the mark cut its segment short: new entries will be written from
            # the cut, so replay must start there too, or they would be skipped after a crash
            try:
                self.write_mark(Position(mark.segment, cut), self.mark.clients)
            except OSError as exc:
                if not is_disk_error(exc):
                    raise
                log.error("event=journal_mark_not_written reason=%r note=replay_from_cut", str(exc))
                self.mark = Mark(Position(mark.segment, cut), self.mark.clients)
        return self.mark

    def _adapt(self) -> None:
        """Roll segments early on a filesystem with little room for the journal."""
        room = self._room(self.dir) + self.bytes_used
        self.seg_limit = min(self.segment_bytes, max(MIN_SEGMENT_BYTES, room // 8))

    def _read_mark(self) -> Mark:
        path = self.dir / "mark.json"
        try:
            data = json.loads(path.read_text())
            pos = Position(int(data["segment"]), int(data["offset"]))
            clients = {str(k): int(v) for k, v in data.get("clients", {}).items()}
            return Mark(pos, clients)
        except FileNotFoundError:
            first = min(self._segments(), default=1)
            return Mark(Position(first, 0), {})
        except (ValueError, KeyError, TypeError) as exc:
            # A mark is written atomically (rename), so this means outside damage, or a crash
            # during an in-place rewrite on a full disk (write_mark_file): replay all.
            log.error("event=journal_mark_unreadable path=%s reason=%r", path, str(exc))
            quarantine_file(path)
            return Mark(Position(min(self._segments(), default=1), 0), {})

    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.glob(f"*{SEGMENT_SUFFIX}"):
            try:
                out.append(int(p.stem))
            except ValueError:
                continue
        return sorted(out)

    def _open_segment(self, seg: int) -> None:
        path = self.dir / _name(seg)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._segment = seg
        self._offset = os.fstat(fd).st_size
        self._sizes[seg] = self._offset
        fsync_dir(self.dir)

    # ------------------------------------------------------------------ reading

    def read(
        self, start: Position, max_bytes: int = 8 * 1024 * 1024
    ) -> list[tuple[Position, bytes]]:
        """Entries from ``start`` on (up to about ``max_bytes``), crossing segment ends."""
        out: list[tuple[Position, bytes]] = []
        seg, offset = start.segment, start.offset
        budget = max_bytes
        while budget > 0:
            size = self._sizes.get(seg)
            if size is None:
                later = [s for s in self._sizes if s > seg]
                if not later:
                    break
                seg, offset = min(later), 0
                continue
            if offset >= size:
                if seg >= self._segment:
                    break
                seg, offset = seg + 1, 0
                continue
            length = min(size - offset, max(budget, 1))
            with open(self.dir / _name(seg), "rb") as fh:
                fh.seek(offset)
                data = fh.read(length)
            result = scan(data)
            if not result.frames:
                # the first frame is larger than the budget: read exactly that frame
                n, _ = HEADER.unpack_from(data, 0) if len(data) >= HEADER.size else (0, 0)
                with open(self.dir / _name(seg), "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(HEADER.size + n)
                result = scan(data)
                if not result.frames:
                    break
            for rel, payload in result.frames:
                out.append((Position(seg, offset + rel), payload))
            consumed = result.good_end
            budget -= consumed
            offset += consumed
        return out

    @property
    def head(self) -> Position:
        """Where the next entry will be written."""
        return Position(self._segment, self._offset)

    # ------------------------------------------------------------------ writing

    @property
    def bytes_used(self) -> int:
        return sum(self._sizes.values())

    def append(self, payload: bytes, *, settled: bool = False) -> Position:
        """Write one entry (no fsync). Raises JournalFull instead of writing past the limit."""
        frame = encode_frame(payload)
        if (
            self.bytes_used + len(frame) > self.max_bytes
            and self._offset > 0
            and self.mark.position >= self.head
        ):
            # Everything written is committed and the durable mark says so, but write_mark never
            # deletes the segment being written: start a new one and drop this one, or a current
            # segment that alone nears the limit (one large frame) would refuse entries forever.
            old = self._segment
            try:
                self._roll()
            except OSError as exc:
                if not is_disk_error(exc):
                    raise
            else:
                self._sizes.pop(old, None)
                (self.dir / _name(old)).unlink(missing_ok=True)
        if self.bytes_used + len(frame) > self.max_bytes:
            self.full_reason = (
                f"journal holds {self.bytes_used} bytes; the limit (journal_max_bytes) is "
                f"{self.max_bytes}; waiting for the MLflow backend to catch up"
            )
            self.disk_full = False
            self._refused_bytes = max(self._refused_bytes, len(frame))
            raise JournalFull(self.full_reason)
        pos = Position(self._segment, self._offset)
        try:
            if self._offset >= self.seg_limit or self._roll_next:
                self._roll()
                pos = Position(self._segment, self._offset)
            written = os.write(self._fd, frame)
            if written != len(frame):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError as exc:
            if pos.segment == self._segment:
                self._cut_back(pos.offset)  # never leave half a frame behind
            if exc.errno not in DISK_ERRNOS:
                raise
            if exc.errno == errno.EFBIG:
                self._roll_next = True  # this file can grow no more
            self.full_reason = f"disk full writing the journal in {self.dir}: {exc.strerror}"
            self.disk_full = True
            raise JournalFull(self.full_reason) from exc
        self.appended_bytes += len(frame)
        self._offset += len(frame)
        self._sizes[self._segment] = self._offset
        if self.disk_full:  # the write went through: the disk has room again
            self._clear_full()
        self._clear_full_if_room()
        self._dirty = True
        self._outstanding[pos] = settled
        return pos

    def _clear_full_if_room(self) -> None:
        """A smaller frame that slips in under the limit does not mean there is room again: the
        journal stays full (and the daemon unhealthy) until the largest refused frame would fit."""
        if not self.disk_full and self.bytes_used + self._refused_bytes <= self.max_bytes:
            self._clear_full()

    def _clear_full(self) -> None:
        self.full_reason = ""
        self.disk_full = False
        self._refused_bytes = 0

    def _cut_back(self, offset: int) -> None:
        try:
            os.ftruncate(self._fd, offset)
        except OSError as exc:  # the tail is unknown: write on in a new segment
            log.error("event=journal_truncate_failed reason=%r note=rolling", str(exc))
            self._roll_next = True

    def _roll(self) -> None:
        """Start the next segment (raises OSError when it cannot be created)."""
        with self._lock:
            self._open_segment(self._segment + 1)
        self._roll_next = False
        self._adapt()

    def roll_if_settled(self) -> bool:
        """Start a new segment when every entry in the current one is committed, so that the
        next mark can delete it (used when the journal is full: without it, committed data in
        the current segment would hold its space forever). Event loop, like ``append``."""
        if self._offset == 0 or self.low_water() != self.head:
            return False
        try:
            self._roll()
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            return False
        log.info("event=journal_rolled_early segment=%d reason=reclaim", self._segment)
        return True

    def sync(self) -> Position:
        """fsync what was appended so far (blocking). Returns the position now durable.
        Raises OSError when the fsync fails; the next call tries again."""
        with self._lock:
            target = self.head
            if self._dirty:
                self._dirty = False
                try:
                    os.fsync(self._fd)
                except OSError:
                    self._dirty = True
                    raise
        return target

    # ------------------------------------------------------------------ settling and the mark

    def track(self, pos: Position) -> None:
        """Track an entry found at replay as outstanding."""
        self._outstanding[pos] = False
        self._outstanding.move_to_end(pos)

    def settle(self, pos: Position) -> None:
        if pos in self._outstanding:
            self._outstanding[pos] = True

    def low_water(self) -> Position:
        out = self._outstanding
        while out:
            pos, done = next(iter(out.items()))
            if not done:
                return pos
            out.popitem(last=False)
        return self.head

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def write_mark(self, position: Position, clients: dict[str, int]) -> None:
        """Persist the mark atomically, then delete segments wholly before it (blocking).
        On a full disk, segments before ``position`` are deleted first to make room (see the
        module docstring); raises OSError when the mark still cannot be written."""
        try:
            write_mark_file(self.dir, position.segment, position.offset, clients)
        except OSError as exc:
            if not is_disk_error(exc) or not self._drop_before(position):
                raise
            log.warning(
                "event=journal_reclaimed_before_mark reason=%r note=committed_segments_deleted",
                str(exc),
            )
            write_mark_file(self.dir, position.segment, position.offset, clients)
        self.mark = Mark(position, dict(clients))
        self._drop_before(position)
        self._clear_full_if_room()

    def _drop_before(self, position: Position) -> bool:
        """Delete the segments wholly before ``position`` (never the current one)."""
        dropped = False
        for seg in sorted(self._sizes):
            if seg >= position.segment or seg == self._segment:
                break
            (self.dir / _name(seg)).unlink(missing_ok=True)
            del self._sizes[seg]
            dropped = True
        return dropped

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1

    def status(self) -> dict[str, Any]:
        return {
            "journal_bytes": self.bytes_used,
            "journal_segments": len(self._sizes),
            "journal_outstanding_entries": self.outstanding,
            "journal_full": self.full_reason,
            "journal_mark": f"{self.mark.position.segment}:{self.mark.position.offset}",
            "journal_head": f"{self._segment}:{self._offset}",
            "journal_segment_limit_bytes": self.seg_limit,
            "journal_appended_bytes": self.appended_bytes,
        }


def _name(seg: int) -> str:
    return f"{seg:010d}{SEGMENT_SUFFIX}"
