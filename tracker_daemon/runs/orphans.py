"""Runs whose client process died: which pids to watch (liveness.py watches them), and, when one
exits, ending its clients' open runs — after the records they sent are committed — with
``orphan_status`` and a ``tracker.end_reason`` tag.

Orphan detection never overrides a status a client asked for: the dead client's spool (if it
left one) is imported first, so the ENDs it spooled reach the daemon; a run with an END the
daemon holds (received, spooled or replayed: endings.py) is left to that END.

Exits are queued (an unbounded stream: one entry per exited client) and handled by
:meth:`Orphans.run`, each as its own contained task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tracker_client import protocol as p

from ..errors import SinkError
from ..intake.clients import ClientInfo, ClientTable
from ..ops.status import Counters
from ..ops.supervise import Supervisor, each_contained
from .run_service import RunService, Write

__all__ = ["ORPHAN_BARRIER_S", "Orphans"]

log = logging.getLogger("tracker_daemon")

ORPHAN_BARRIER_S = 60.0  # how long an exited client's records are waited for


class Watches(Protocol):
    """liveness.PidWatcher: ``watch(pid)`` is False when the pid is already gone."""

    def watch(self, pid: int) -> bool: ...


class HeldEnds(Protocol):
    """endings.Endings, as orphans use it."""

    def holds(self, run_id: str) -> bool: ...
    def client_gone(self, client_id: str) -> None: ...


class TagSink(Protocol):
    def log_batch(
        self, run_id: str, metrics: list[Any], params: list[Any], tags: list[p.Tag]
    ) -> None: ...


class Orphans:
    def __init__(
        self,
        table: ClientTable,
        runs: RunService,
        counters: Counters,
        supervisor: Supervisor,
        *,
        hostname: str,
        orphan_status: str,
        sink: TagSink,
        write: Write,
        barrier: Callable[[str, int, float | None], Awaitable[bool]],
        received_upto: Callable[[str], int],
        note_error: Callable[[SinkError], None],
        endings: HeldEnds,
        import_spool: Callable[[str], Awaitable[None]],
    ) -> None:
        self.table = table
        self.runs = runs
        self.counters = counters  # orphaned_runs
        self.supervisor = supervisor
        self.hostname = hostname
        self.orphan_status = orphan_status
        self.sink = sink
        self._write = write
        self._barrier = barrier
        self._received_upto = received_upto
        self._note_error = note_error
        self.endings = endings
        self._import_spool = import_spool  # a client's spool, if it left one (spool_imports)
        self.judging = 0  # exited clients queued or being judged
        self.liveness: Watches | None = None  # set by the daemon (it calls pid_exited)
        self._in: MemoryObjectSendStream[ClientInfo]
        self._out: MemoryObjectReceiveStream[ClientInfo]
        self._in, self._out = anyio.create_memory_object_stream[ClientInfo](math.inf)

    def watch_restored_owners(self) -> None:
        """After a restart: watch the processes that own open runs (from runs.log); those that
        died while the daemon was down get their runs ended once their records are committed."""
        runbook = self.runs.runbook
        for cid, (pid, host) in runbook.owners.items():
            if host != self.hostname or pid <= 0:
                continue
            if not any(cid in run.owners for run in runbook.open.values()):
                continue
            info = self.table.touch(cid, time.monotonic())
            info.pid, info.host = pid, host
            self.watch(info)

    def watch_bound(self) -> None:
        """Clients the table just bound to a peer whose pid the kernel told: watch that pid."""
        bound, self.table.to_watch = self.table.to_watch, []
        for info in bound:
            info.host = self.hostname
            self.watch(info)

    def watch(self, info: ClientInfo) -> None:
        """Watch ``info.pid`` (shared with its other clients); already gone: act at once."""
        assert self.liveness is not None
        if info.pid > 0 and not self.liveness.watch(info.pid):
            self.pid_exited(info.pid)

    def pid_exited(self, pid: int) -> None:
        for info in self.table.exited(pid):  # no longer counted nor listed in the status
            log.info("event=client_exited client=%s pid=%d", info.client_id, pid)
            self.client_exited(info)

    def client_exited(self, info: ClientInfo) -> None:
        """Queue the end of ``info``'s open runs."""
        self.judging += 1
        self._in.send_nowait(info)

    def close(self) -> None:
        self._in.close()
        self._out.close()

    async def run(self) -> None:
        await each_contained(self._out.receive, self._client_exited, self.supervisor)

    async def _client_exited(self, info: ClientInfo) -> None:
        try:
            await self._judge(info)
        finally:
            self.judging -= 1

    async def _judge(self, info: ClientInfo) -> None:
        """A local client process is gone: import its spool, commit what it sent, apply the
        ENDs it sent, and end its other runs."""
        await self._import_spool(info.client_id)
        upto = self._received_upto(info.client_id)
        await self._barrier(info.client_id, upto, ORPHAN_BARRIER_S)
        self.endings.client_gone(info.client_id)
        reason = (
            f"tracker-daemon: client process {info.pid} on {info.host} exited without "
            f"ending this run"
        )
        for run_id in self.runs.runbook.orphaned_by(info.client_id):
            if self.endings.holds(run_id):
                log.info(
                    "event=orphan_not_ended run=%s client=%s note=its_end_run_is_held",
                    run_id,
                    info.client_id,
                )
                continue
            try:
                await self._write(
                    self.sink.log_batch,
                    run_id,
                    [],
                    [],
                    [p.Tag(run_id, "tracker.end_reason", reason)],
                    retry_for=30.0,
                )
                if self.endings.holds(run_id):  # an END arrived meanwhile: it decides
                    continue
                await self.runs.end(run_id, self.orphan_status, time.time_ns() // 1_000_000)
                self.counters.orphaned_runs += 1
                log.warning(
                    "event=orphaned_run run=%s client=%s pid=%d status=%s",
                    run_id,
                    info.client_id,
                    info.pid,
                    self.orphan_status,
                )
            except SinkError as exc:
                self._note_error(exc)
