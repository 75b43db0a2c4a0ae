"""Run bookkeeping: which runs are open and who owns them, the persisted record of run creations
(so a retried or replayed ``start_run`` never creates a second run), each run's owners with
their pids (liveness itself is in liveness.py), and the ``end_run`` requests the daemon holds
(journaled on receipt, applied once the run's records are committed: endings.py).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker_client.wire.framing import encode_frame, scan

from ..journal.diskspace import DiskProblems
from ..store.sink import RunHandle

__all__ = ["EndIntent", "OpenRun", "RunBook"]

log = logging.getLogger("tracker_daemon.runs")


@dataclass(frozen=True, slots=True)
class EndIntent:
    """An ``end_run`` the daemon holds: set ``run_id`` (as the client named it: an MLflow id or
    an offline id) to ``status`` once every message of ``client_id`` up to ``seq`` is done.
    ``key`` (``<client_id>:<req>``) names the request: a resent or replayed copy has the same."""

    key: str
    client_id: str
    seq: int
    run_id: str
    status: str
    end_time: int

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "client_id": self.client_id,
            "seq": self.seq,
            "run_id": self.run_id,
            "status": self.status,
            "end_time": self.end_time,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> EndIntent:
        return cls(
            str(entry["key"]),
            str(entry["client_id"]),
            int(entry["seq"]),
            str(entry["run_id"]),
            str(entry["status"]),
            int(entry["end_time"]),
        )


@dataclass(slots=True)
class OpenRun:
    handle: RunHandle
    owners: set[str] = field(default_factory=set)  # client ids that started or resumed it


class RunBook:
    """Open runs with their owners, and the persisted log ``runs.log`` of run creations (keyed by
    request, so a retried start_run returns the same run) and of runs opened and closed (with the
    owning client's pid, so a restarted daemon still ends the runs of clients that died), and of
    ``end_run`` requests held (``ending``) and applied (``ended``: a replayed copy is not applied
    again).

    ``runs.log`` holds JSON entries in the framing of :mod:`tracker_client.wire.framing`; it is
    compacted at load (closed runs dropped; creations kept for ``CREATION_MEMORY_S``).

    A write that fails (a full disk) never fails the caller: the bookkeeping is kept in memory,
    ``unsaved`` is set, the failure is reported once (``disk``), and ``save_pending`` (called
    periodically by the daemon) rewrites the whole file from memory once there is room. Until
    then a daemon crash would forget the runs recorded since (logged)."""

    CREATION_MEMORY_S = 30 * 24 * 3600  # an offline spool may be imported weeks later

    def __init__(self, path: Path, disk: DiskProblems | None = None) -> None:
        self.path = path
        self.disk = disk if disk is not None else DiskProblems()
        self.unsaved = False  # memory holds entries runs.log does not
        self._lock = threading.Lock()  # writers run in worker threads
        self.created: dict[str, RunHandle] = {}  # request key -> run
        self.open: dict[str, OpenRun] = {}  # run id -> open run
        self.handles: dict[str, RunHandle] = {}  # run id -> handle (open or not)
        self.owners: dict[str, tuple[int, str]] = {}  # client id -> (pid, host) of owners
        self.ending: dict[str, EndIntent] = {}  # request key -> end_run held, not applied yet
        self.ended: dict[str, float] = {}  # request key -> when that end_run was applied
        self._created_at: dict[str, float] = {}
        self._fd = -1

    def load(self) -> None:
        if self.path.exists():
            result = scan(self.path.read_bytes())
            for _, payload in result.frames:
                self._apply(json.loads(payload))
            if result.problem is not None:
                log.warning("event=runs_log_truncated reason=%r", result.problem)
        try:
            self._compact()
        except OSError as exc:  # the file as it is stays valid: only not compacted
            log.warning("event=runs_log_not_compacted reason=%r", str(exc))
        try:
            self._fd = self._open()
        except OSError as exc:
            self._unsaved(exc)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def _apply(self, entry: dict[str, Any]) -> None:
        kind = entry.get("type", "created")
        if kind == "closed":
            self.open.pop(entry["run_id"], None)
            return
        if kind == "ending":
            intent = EndIntent.from_json(entry)
            self.ending[intent.key] = intent
            return
        if kind == "ended":
            self.ending.pop(entry["key"], None)
            self.ended[entry["key"]] = float(entry.get("t", time.time()))
            if entry.get("run_id"):
                self.open.pop(entry["run_id"], None)
            return
        handle = RunHandle(
            entry["run_id"], entry["experiment_id"], entry["artifact_uri"], entry["run_name"], {}
        )
        self.handles[handle.run_id] = handle
        if kind == "created":
            self.created[entry["key"]] = handle
            self._created_at[entry["key"]] = float(entry.get("t", time.time()))
        elif kind == "open":
            self.opened(handle, entry["client_id"])
            self.owners[entry["client_id"]] = (int(entry.get("pid", 0)), str(entry.get("host", "")))

    def _compact(self) -> None:
        horizon = time.time() - self.CREATION_MEMORY_S
        entries: list[dict[str, Any]] = [
            {"type": "created", "key": k, "t": self._created_at[k], **_fields(h)}
            for k, h in self.created.items()
            if self._created_at[k] >= horizon
        ]
        entries += [{"type": "ending", **i.to_json()} for i in self.ending.values()]
        entries += [
            {"type": "ended", "key": k, "t": t} for k, t in self.ended.items() if t >= horizon
        ]
        for run in self.open.values():
            for owner in run.owners:
                pid, host = self.owners.get(owner, (0, ""))
                entries.append(
                    {
                        "type": "open",
                        "client_id": owner,
                        "pid": pid,
                        "host": host,
                        **_fields(run.handle),
                    }
                )
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"".join(encode_frame(json.dumps(e).encode()) for e in entries))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)

    def _append(self, entry: dict[str, Any]) -> None:
        """Write one entry (fsync); on failure keep going from memory (see the class doc)."""
        if self.unsaved:
            return  # save_pending writes it with the rest
        data = encode_frame(json.dumps(entry).encode())
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
            os.fsync(self._fd)
        except OSError as exc:
            self._unsaved(exc)

    def _unsaved(self, exc: OSError) -> None:
        self.unsaved = True
        self.disk.failed(
            "runs.log",
            exc,
            "kept_in_memory_and_saved_when_there_is_room;a_crash_before_then_forgets_it",
        )

    def save_pending(self) -> bool:
        """Rewrite runs.log from memory after a failed write (blocking). True when runs.log is
        up to date."""
        with self._lock:
            if not self.unsaved:
                return True
            try:
                self._compact()
                fd = self._open()
            except OSError as exc:
                self._unsaved(exc)
                return False
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = fd
            self.unsaved = False
            self.disk.ok("runs.log")
            return True

    def record_creation(self, key: str, handle: RunHandle) -> None:
        """Persist (and fsync) that request ``key`` created ``handle`` — before replying."""
        with self._lock:
            self._append({"type": "created", "key": key, "t": time.time(), **_fields(handle)})
            self.created[key] = handle
            self._created_at[key] = time.time()
            self.handles[handle.run_id] = handle

    def record_open(self, handle: RunHandle, owner: str, pid: int, host: str) -> None:
        """Persist that ``owner`` (a client process) has ``handle`` open (blocking: fsync)."""
        with self._lock:
            self._append(
                {"type": "open", "client_id": owner, "pid": pid, "host": host, **_fields(handle)}
            )
            self.owners[owner] = (pid, host)
            self.opened(handle, owner)

    def record_closed(self, run_id: str) -> None:
        with self._lock:
            if run_id in self.open:
                self._append({"type": "closed", "run_id": run_id})
            self.closed(run_id)

    def record_ending(self, intent: EndIntent) -> None:
        """Persist (and fsync) an ``end_run`` held — before acknowledging it."""
        with self._lock:
            if intent.key in self.ending:
                return
            self._append({"type": "ending", **intent.to_json()})
            self.ending[intent.key] = intent

    def record_ended(self, key: str, run_id: str) -> None:
        """The ``end_run`` ``key`` was applied: ``run_id`` (its MLflow id) is closed."""
        with self._lock:
            self._append({"type": "ended", "key": key, "t": time.time(), "run_id": run_id})
            self.ending.pop(key, None)
            self.ended[key] = time.time()
            self.closed(run_id)

    def opened(self, handle: RunHandle, owner: str) -> None:
        self.handles[handle.run_id] = handle
        run = self.open.get(handle.run_id)
        if run is None:
            run = self.open[handle.run_id] = OpenRun(handle)
        run.owners.add(owner)

    def closed(self, run_id: str) -> None:
        self.open.pop(run_id, None)

    def orphaned_by(self, client_id: str) -> list[str]:
        """Drop ``client_id`` as an owner; return the open runs that now have no live owner."""
        out = []
        for run_id, run in self.open.items():
            if client_id in run.owners:
                run.owners.discard(client_id)
                if not run.owners:
                    out.append(run_id)
        return out

    def close(self) -> None:
        self.save_pending()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fields(handle: RunHandle) -> dict[str, str]:
    return {
        "run_id": handle.run_id,
        "experiment_id": handle.experiment_id,
        "artifact_uri": handle.artifact_uri,
        "run_name": handle.run_name,
    }
