"""The client's offline spool: outbound frames kept on disk while no daemon takes them.

A spool file ``<spool_dir>/<client_id>.spool`` holds protocol frames (hello, start_run, data,
artifact, flush, end_run — exactly as they would have gone on the wire) in the framing of
:mod:`tracker_client.framing`. The client process that owns it holds an exclusive ``flock`` on it;
while it lives it sends the spool itself once a daemon answers. A spool left by a process that
died is sent by ``tracker-daemon import PATH`` or by the daemon itself (it scans its spool dir):
:func:`import_spool` replays the frames over an ordinary connection, so the daemon's usual
(client id, seq) de-duplication makes a second import harmless.

Spool dir: ``$TRACKER_SPOOL_DIR``; else the one the daemon announced; else the daemon's default
state dir's ``spool/`` (``/var/lib/tracker-daemon/spool`` when writable, otherwise
``$XDG_STATE_HOME/tracker-daemon/spool``).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zmq

from . import protocol as p
from .curve import CurveKeys, apply_curve
from .framing import encode_frame, scan

__all__ = ["ImportResult", "Spool", "SpoolBusy", "default_spool_dir", "import_spool"]

SUFFIX = ".spool"


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

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o2770)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"{self.path} is locked by another process") from None
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o660)  # the daemon (same group) imports it; the umask must not stop it
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._read_at = 0

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def unread(self) -> int:
        return self._size - self._read_at

    def append(self, frames: list[bytes]) -> None:
        data = b"".join(encode_frame(f) for f in frames)
        os.pwrite(self._fd, data, self._size)
        os.fsync(self._fd)
        self._size += len(data)

    def read(self, max_frames: int) -> list[bytes]:
        """Up to ``max_frames`` frames not yet read."""
        if self.unread <= 0:
            return []
        data = os.pread(self._fd, min(self.unread, 16 * 1024 * 1024), self._read_at)
        result = scan(data)
        frames = [payload for _, payload in result.frames[:max_frames]]
        if result.frames:
            last_off, last = result.frames[: len(frames)][-1]
            self._read_at += last_off + 8 + len(last)
        elif result.problem is not None:
            self._read_at = self._size  # a torn tail cannot be sent; skip it
        return frames

    def rewrite(self, frames: list[bytes]) -> None:
        """Replace the whole content (used at close to put everything unsent in order)."""
        data = b"".join(encode_frame(f) for f in frames)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)
        self._size = len(data)
        self._read_at = 0

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


@dataclass
class ImportResult:
    path: Path
    frames: int = 0
    records: int = 0
    runs: dict[str, str] = field(default_factory=dict)  # offline id (or req) -> MLflow run id
    failures: list[p.Failure] = field(default_factory=list)
    ended_failed: list[str] = field(default_factory=list)


def import_spool(
    path: Path,
    address: str,
    *,
    timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    curve: CurveKeys | None | Literal["env"] = "env",
) -> ImportResult:
    """Send a dead client's spool to the daemon at ``address``; empty it once committed.

    Runs started offline and never ended in the spool (the process died) are ended FAILED.
    ``stop`` (set from another thread) abandons the import; nothing is removed then. ``curve``:
    the CURVE keys to connect with (default: ``TRACKER_CURVE_*`` from the environment)."""
    spool = Spool(path)
    spool.open()  # raises SpoolBusy while the writer lives
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        apply_curve(sock, curve)
        sock.connect(address)
        importer = _Importer(sock, ImportResult(path), time.monotonic() + timeout, timeout, stop)
        importer.send(spool.read(1 << 30))
        importer.collect()
        importer.end_unended_runs()
        importer.barrier()
        spool.rewrite([])
        if log:
            log(f"imported {path}: {importer.result.records} records, runs {importer.result.runs}")
        return importer.result
    finally:
        spool.close()
        sock.close(0)
        ctx.term()


class _Importer:
    """One import: replays a spool's frames over a connection and tracks the replies."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        result: ImportResult,
        deadline: float,
        timeout: float,
        stop: threading.Event | None,
    ) -> None:
        self.sock, self.result, self.deadline = sock, result, deadline
        self.timeout, self.stop = timeout, stop
        self.client_id = ""
        self.last_seq = 0
        self.acked = 0
        self.waiting: dict[int, p.ClientMessage] = {}
        self.started: dict[str, str] = {}  # run id the client used -> real run id
        self.ended: set[str] = set()
        self._req = 1 << 40  # request ids of our own, far above the client's

    def send(self, frames: list[bytes]) -> None:
        for frame in frames:
            msg = p.decode(frame, max_frame=2**31)
            self.result.frames += 1
            if isinstance(msg, p.Hello):
                self.client_id = msg.client_id
            elif isinstance(msg, p.Data | p.LogArtifact):
                self.client_id = msg.client_id
                self.last_seq = max(self.last_seq, msg.seq)
                self.result.records += len(msg.records) if isinstance(msg, p.Data) else 1
            if isinstance(msg, p.StartRun | p.EndRun | p.Flush | p.StatusRequest):
                self.waiting[msg.req] = msg
            if isinstance(msg, p.EndRun):
                self.ended.add(msg.run_id)
            self.sock.send(frame)

    def collect(self) -> None:
        """Until every sequenced frame is acked and every request answered."""
        while self.waiting or self.acked < self.last_seq:
            self._on_reply(p.decode(self._wait_reply(), max_frame=2**31))

    def end_unended_runs(self) -> None:
        for used, run_id in self.started.items():
            if used in self.ended or run_id in self.ended:
                continue
            self._request(
                p.EndRun(self._next(), self.client_id, self.last_seq, used, "FAILED", _now_ms())
            )
            self.result.ended_failed.append(run_id)

    def barrier(self) -> None:
        self._request(p.Flush(self._next(), self.client_id, self.last_seq, None))
        self.collect()

    def _next(self) -> int:
        self._req += 1
        return self._req

    def _request(self, msg: p.EndRun | p.Flush) -> None:
        self.sock.send(p.encode(msg))
        self.waiting[msg.req] = msg

    def _on_reply(self, reply: p.Message) -> None:
        if isinstance(reply, p.Ack):
            self.acked = max(self.acked, reply.seq)
        elif isinstance(reply, p.Welcome):
            self.acked = max(self.acked, reply.acked_seq)
        elif isinstance(reply, p.RunStarted):
            req_msg = self.waiting.pop(reply.req, None)
            if isinstance(req_msg, p.StartRun):
                used = req_msg.offline_id or req_msg.run_id or f"req-{req_msg.req}"
                self.started[used] = reply.run_id
                self.result.runs[used] = reply.run_id
        elif isinstance(reply, p.Done):
            self.waiting.pop(reply.req, None)
            self.result.failures.extend(reply.failures)
        elif isinstance(reply, p.ErrorReply):
            if reply.req is None:
                if reply.code == "journal_full":
                    raise TimeoutError(f"import of {self.result.path}: {reply.message}")
                return
            self.waiting.pop(reply.req, None)
            self.result.failures.append(p.Failure(None, reply.code, reply.message))

    def _wait_reply(self) -> bytes:
        while True:
            if self.stop is not None and self.stop.is_set():
                raise TimeoutError(f"import of {self.result.path} stopped")
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"import of {self.result.path}: the daemon did not answer within "
                    f"{self.timeout} s"
                )
            if self.sock.poll(int(min(left, 0.2) * 1000) + 1):
                return self.sock.recv()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
