"""Run bookkeeping: which runs are open and who owns them, the persisted record of run creations
(so a retried or replayed ``start_run`` never creates a second run), and client liveness.

Liveness: for a client on this host the daemon opens a pidfd (``pidfd_open``, Linux ≥ 5.3) when the
client says hello and waits for it to become readable, which the kernel signals when the process
exits — no polling. Where pidfds are unavailable it checks ``/proc/<pid>`` once a second.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from tracker_client.framing import encode_frame, scan

from .sink import RunHandle

__all__ = ["OpenRun", "RunBook", "wait_process_exit"]

log = logging.getLogger("tracker_daemon.runs")


@dataclass(slots=True)
class OpenRun:
    handle: RunHandle
    owners: set[str] = field(default_factory=set)  # client ids that started or resumed it


class RunBook:
    """Open runs with their owners, and an append-only log of creations keyed by request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created: dict[str, RunHandle] = {}  # request key -> run
        self.open: dict[str, OpenRun] = {}  # run id -> open run
        self.handles: dict[str, RunHandle] = {}  # run id -> handle (open or not)
        self._fd = -1

    def load(self) -> None:
        if self.path.exists():
            data = self.path.read_bytes()
            result = scan(data)
            for _, payload in result.frames:
                entry = json.loads(payload)
                handle = RunHandle(
                    entry["run_id"], entry["experiment_id"], entry["artifact_uri"],
                    entry["run_name"], {},
                )
                self.created[entry["key"]] = handle
                self.handles[handle.run_id] = handle
            if result.problem is not None:
                log.warning("event=runs_log_truncated reason=%r", result.problem)
                with open(self.path, "r+b") as fh:
                    fh.truncate(result.good_end)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def record_creation(self, key: str, handle: RunHandle) -> None:
        """Persist (and fsync) that request ``key`` created ``handle`` — before replying."""
        payload = json.dumps(
            {
                "key": key,
                "run_id": handle.run_id,
                "experiment_id": handle.experiment_id,
                "artifact_uri": handle.artifact_uri,
                "run_name": handle.run_name,
            }
        ).encode()
        os.write(self._fd, encode_frame(payload))
        os.fsync(self._fd)
        self.created[key] = handle
        self.handles[handle.run_id] = handle

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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def wait_process_exit(pid: int) -> None:
    """Return once process ``pid`` has exited (immediately if it does not exist)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd support (old kernel, seccomp): check once a second
        while os.path.exists(f"/proc/{pid}"):
            await anyio.sleep(1.0)
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)
