"""Wires the daemon together in one anyio task group.

    server.serve ─► intake.handle ─► journal.append ─► ledger.accept ─► batcher.add
                      │            │                               (or, over the memory budget,
                      │            └─ ack after the group fsync     left in the journal and read
                      │                                             back by the feeder)
                      └─ limits (refusals); start/end/flush/call ─► control (one task each)
    sink loop:  batcher.pop_ready ─► sink.log_batch (worker thread; one writer for SQLite)
                ─► ledger.settle ─► barriers released; journal entries settled ─► mark advanced
    artifact lane: staged files ─► artifact repository (own thread; never blocks metrics)
    control: start_run / end_run ─► run service ─► sink, under the same writer limiter
    clients: each client id bound to the peer that first used it (clients.py)
    liveness: one watch per distinct client pid (liveness.py); a dead client's open runs are
              ended FAILED once its records are committed (orphans.py)
    status: each component's own status(), assembled by status.StatusReporter

On start the journal is replayed from its mark. SIGTERM/SIGINT: stop receiving, commit what is
buffered (bounded by ``drain_timeout_s``), fsync, write the mark, exit 0; the rest stays in the
journal for the next start.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import json
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc

from tracker_client import protocol as p
from tracker_client.framing import HEADER
from tracker_client.validation import record_problem

from . import __version__
from .artifacts import ArtifactLane
from .batcher import Batch, Origin
from .calls import StoreCalls
from .clients import ClientInfo, ClientTable, Peer
from .config import Config, load_server_curve, metrics_host_port, redact_uri
from .control import Control
from .diskspace import DiskProblems, is_disk_error
from .errors import AlreadyRunning, PermanentSinkError, RetryableSinkError, SinkError
from .intake import KIND_SEQUENCED, DataPath, Intake, Welcome
from .journal import SEGMENT_SUFFIX, Journal, Position
from .lanes import Lanes
from .ledger import Ledger
from .limits import Limits
from .liveness import PidWatcher
from .notify import Notifier
from .orphans import Orphans
from .run_service import RunService
from .runs import RunBook
from .server import CurveSetup, Server
from .sink import Sink
from .spool_imports import SpoolImports
from .staging import StagingArea
from .status import Counters, StatusReporter
from .supervise import Supervisor, Tasks

__all__ = ["Daemon", "run_daemon"]

log = logging.getLogger("tracker_daemon")
T = TypeVar("T")

CLIENT_MEMORY_S = 7 * 24 * 3600  # how long the mark remembers an idle client's seq
RATE_SAMPLE_S = 1.0  # how often the committed count is sampled for commit_rate
DISK_RETRY_S = 1.0  # how often a write that failed for lack of space is tried again


class Wakeup:
    """A resettable event: ``set`` from anywhere in the loop, ``wait`` with a timeout."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, limit: float | None) -> None:
        """Return when set, or after ``limit`` seconds (None: no limit)."""
        with anyio.move_on_after(limit):
            await self._event.wait()
        self._event = anyio.Event()


class Daemon:
    def __init__(self, cfg: Config, *, until_idle: bool = False) -> None:
        self.cfg = cfg
        self.until_idle = until_idle  # replay, commit everything, exit (no socket)
        self.state_dir = cfg.state_path
        self.staging_dir = self.state_dir / "staging"
        self.spool_dir = self.state_dir / "spool"
        self.hostname = os.uname().nodename
        self.sink = Sink(cfg.backend_uri, cfg.artifact_root)
        # a frame must fit the journal with room to spare, or it could never be accepted
        self.max_frame = min(cfg.max_frame_bytes, cfg.journal_max_bytes // 4)
        self.curve: CurveSetup | None = None
        if cfg.curve_enabled:
            public, secret = load_server_curve(cfg)
            self.curve = CurveSetup(public, secret, Path(cfg.curve_allowed_clients_dir))
        self.server = Server(
            cfg.bind_address, self.max_frame, self.curve, max_records=cfg.max_records_per_frame
        )
        self.metrics: Any = None  # a metrics.MetricsServer while serving metrics_address
        self.batcher = Lanes(cfg.writers, max_age=cfg.batch_max_age_ms / 1000)
        self.ledger = Ledger(on_done=self._message_done)
        self.journal = Journal(
            self.state_dir / "journal",
            segment_bytes=cfg.journal_segment_bytes,
            max_bytes=cfg.journal_max_bytes,
        )
        self.disk = DiskProblems()  # the daemon's own files it cannot write right now
        self.supervisor = Supervisor()
        self.runbook = RunBook(self.state_dir / "runs.log", self.disk)
        self.counters = Counters()
        self.notifier = Notifier()
        self.table = ClientTable(
            cfg.max_clients,
            activity=self._activity,
            remembered=lambda cid: self.ledger.received_upto(cid) > 0,
            connected=self._connected,
            privileged=self._privileged,
        )
        self.clients: dict[str, ClientInfo] = self.table.clients
        self.liveness = PidWatcher(lambda pid: self.orphans.pid_exited(pid))
        self._positions: dict[tuple[str, int], Position] = {}
        self._written_at: dict[Position, float] = {}  # outstanding entry -> monotonic write time
        self._spill_from: Position | None = None  # journal entries from here are not delivered
        self._waiters: dict[str, list[tuple[int, anyio.Event]]] = {}
        self._pending_acks: dict[bytes, str] = {}
        self._sink_wakes = [Wakeup() for _ in range(len(self.batcher))]
        self._feed_wake = Wakeup()
        self._sync_wake = Wakeup()
        self._mark_wake = Wakeup()
        self._idle = Wakeup()
        self._committing = 0
        self._writer = anyio.CapacityLimiter(cfg.writers)
        self._readers = anyio.CapacityLimiter(4)
        self.calls: StoreCalls | None = None  # created once MLflow is loaded
        self.artifacts = ArtifactLane(
            StagingArea(self.staging_dir, self.state_dir / "uploads"),
            artifact_root=cfg.artifact_root,
            uri_of=lambda run_id: self.runs.artifact_uri(run_id),
            upload=self.sink.upload_artifact,
            done=self._artifact_done,
            on_retry=self._note_error,
        )
        self._art_pending = 0
        self._deadletter = self.state_dir / "deadletter.jsonl"
        self._lock_fd: int | None = None
        self._tg: Tasks | None = None
        self._stopping = False
        # --- control
        self.runs = RunService(
            self.runbook,
            self.sink,
            write=self._write,
            owner_of=self.clients.get,
            owner_gone=lambda info: self.orphans.client_exited(info),
            seed_params=self.batcher.seed_params,
            release_run=self.batcher.release_run,
        )
        self.orphans = Orphans(
            self.table,
            self.runs,
            self.counters,
            self.supervisor,
            hostname=self.hostname,
            orphan_status=cfg.orphan_status,
            sink=self.sink,
            write=self._write,
            barrier=self._barrier,
            received_upto=self.ledger.received_upto,
            note_error=self._note_error,
        )
        self.orphans.liveness = self.liveness
        self.control = Control(
            self.runs,
            self.ledger,
            self.supervisor,
            send=self.server.send,
            barrier=self._barrier,
            write=self._write,
            read=self._read,
            calls=lambda: self.calls,
            barrier_timeout_s=cfg.barrier_timeout_s,
            last_sink_error=lambda: self.counters.last_sink_error,
        )
        self.limits = Limits(cfg.max_records_per_frame, cfg.max_open_runs_per_client, self.counters)
        self.intake = Intake(
            self.journal,
            self.ledger,
            self.table,
            self.limits,
            self.runs,
            self.counters,
            Welcome(
                __version__,
                str(self.staging_dir),
                self.max_frame,
                str(self.spool_dir),
                self.hostname,
            ),
            data=DataPath(
                journaled=self._journaled,
                deliver=self._offer,
                release=self._release,
                ack_now=lambda: cfg.durability == "os" or self._stopping,
                ack_later=self._ack_later,
                reclaim=self._mark_wake.set,
            ),
            control=self.control,
            watcher=self.orphans,
            status=self.status,
        )
        self.imports = SpoolImports(self.spool_dir, cfg.bind_address, self.curve, self.counters)
        self.reporter = StatusReporter(
            {
                "health_stall_s": cfg.health_stall_s,
                "backend": redact_uri(cfg.backend_uri),
                "artifact_root": cfg.artifact_root,
                "address": cfg.bind_address,
                "durability": cfg.durability,
                "journal_max_bytes": cfg.journal_max_bytes,
            },
            self.counters,
            clients=self.table.status,
            sections=(
                self.server,
                self.liveness,
                self.runs,
                self.artifacts,
                self.journal,
                self.supervisor,
            ),
            pipeline=self._pipeline_status,
            limits={
                "max_frame_bytes": self.max_frame,
                "max_records_per_frame": cfg.max_records_per_frame,
                "max_open_runs_per_client": cfg.max_open_runs_per_client,
                "max_clients": cfg.max_clients,
            },
            rejections=self.server.limit_rejections,
            disk_problems=lambda: list(self.disk.active.values()),
            disk_full=lambda: self.journal.disk_full or bool(self.disk),
            head=lambda: {
                "version": __version__,
                "pid": os.getpid(),
                "metrics_address": self.metrics.address if self.metrics is not None else "",
            },
        )

    # ------------------------------------------------------------------ lifecycle

    def acquire_lock(self) -> None:
        """One daemon per state dir: an flock held for the process's lifetime."""
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
        self._lock_fd = fd
        self._write_pid()

    def _write_pid(self) -> None:
        """Record this daemon's pid in the lock file (for the "already running" message); on a
        full disk the lock holds all the same, and the mark loop tries again."""
        assert self._lock_fd is not None
        try:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            self.disk.failed("daemon.lock", exc, "lock_held_pid_written_later")
        else:
            self.disk.ok("daemon.lock")

    def prepare(self) -> None:
        """Everything before serving: lock, directories, journal replay, backend, socket."""
        self.acquire_lock()
        for shared in (self.staging_dir, self.spool_dir):
            # group members (clients) write here; setgid keeps the group on what they create
            try:
                shared.mkdir(exist_ok=True)
                os.chmod(shared, 0o2770)
            except OSError as exc:  # a full disk: serve what can be served
                log.error("event=dir_unavailable path=%s reason=%r", shared, str(exc))
        try:
            self.artifacts.staging.prepare()
        except OSError as exc:
            log.error(
                "event=dir_unavailable path=%s reason=%r", self.state_dir / "uploads", str(exc)
            )
        self.runbook.load()
        self._recover()
        self.sink.open()
        self.calls = StoreCalls(self.sink)
        if not self.until_idle:
            self.server.bind()

    def _recover(self) -> None:
        """Index the journal from its mark: register every entry with the ledger; the feeder
        delivers the records later, within the memory budget."""
        mark = self.journal.open()
        entries = 0
        records = 0
        pos: Position | None = mark.position
        first: Position | None = None
        seg_times: dict[int, float] = {}
        while pos is not None:
            chunk = self.journal.read(pos)
            if not chunk:
                break
            for entry_pos, payload in chunk:
                if payload[:1] != KIND_SEQUENCED:
                    continue
                cid, seq, count = p.peek_sequenced(payload[1:])
                if not self.ledger.is_new(cid, seq):
                    continue  # a duplicate written twice; keep the first
                self.journal.track(entry_pos)
                self._positions[(cid, seq)] = entry_pos
                self._written_at[entry_pos] = self._segment_written(entry_pos.segment, seg_times)
                self.ledger.accept(cid, seq, count)
                first = first or entry_pos
                entries += 1
                records += count
            last_pos, last_payload = chunk[-1]
            pos = Position(last_pos.segment, last_pos.offset + HEADER.size + len(last_payload))
        for cid, upto in mark.clients.items():
            self.ledger.floor(cid, upto)
            self.table.touch(cid, time.monotonic())  # unbound until its first message
        self._spill_from = first
        self.counters.replayed = records
        log.info(
            "event=journal_recovered mark=%s:%s entries=%d records=%d journal_bytes=%d",
            mark.position.segment,
            mark.position.offset,
            entries,
            records,
            self.journal.bytes_used,
        )

    def _segment_written(self, segment: int, cache: dict[int, float]) -> float:
        """For a replayed entry, when it was written at the latest: its segment's mtime, as a
        monotonic time (the journal keeps no per-entry times)."""
        if segment not in cache:
            try:
                mtime = (self.journal.dir / f"{segment:010d}{SEGMENT_SUFFIX}").stat().st_mtime
            except OSError:
                mtime = time.time()
            cache[segment] = time.monotonic() - max(0.0, time.time() - mtime)
        return cache[segment]

    async def run(self) -> None:
        await anyio.to_thread.run_sync(self.prepare)
        # MLflow and SQLAlchemy leave ~1M long-lived objects; move them out of the collector's
        # sight so full collections (which paused the loop ~340 ms) only scan what we allocate.
        gc.collect()
        gc.freeze()
        log.info(
            "event=ready version=%s backend=%s artifact_root=%s address=%s pid=%d durability=%s",
            __version__,
            redact_uri(self.cfg.backend_uri),
            self.cfg.artifact_root,
            self.cfg.bind_address,
            os.getpid(),
            self.cfg.durability,
        )
        log.info(
            "event=hint view_runs=%r",
            f"mlflow ui --backend-store-uri {redact_uri(self.cfg.backend_uri)}",
        )
        try:
            if self.cfg.metrics_address and not self.until_idle:
                self._start_metrics()
            self.notifier.ready(self._status_line())
            async with anyio.create_task_group() as tg:
                # every loop is supervised (a failure is logged and the loop restarts), every
                # request task contained: one failing task never ends the daemon
                tasks = self._tg = Tasks(tg, self.supervisor)
                if self.until_idle:
                    tasks.loop("drain", self._drain_then_exit, tg)
                else:
                    tg.start_soon(self._serve_until_signal, tg)
                    tasks.loop("spool_import", self.imports.run)
                    tasks.loop("control", self.control.run)
                for lane in range(len(self.batcher)):
                    tasks.loop(f"sink_lane_{lane}", self._sink_loop, lane)
                tasks.loop("artifacts", self.artifacts.run)
                tasks.loop("feeder", self._feed_loop)
                tasks.loop("group_fsync", self._sync_loop)
                tasks.loop("mark", self._mark_loop)
                tasks.loop("notify", self._notify_loop)
                tasks.loop("rate", self._rate_loop)
                tasks.loop("liveness", self.liveness.run)
                tasks.loop("orphans", self.orphans.run)
                self._feed_wake.set()
                self.orphans.watch_restored_owners()
        finally:
            self.control.close()
            self.orphans.close()
            with anyio.CancelScope(shield=True):
                if self.metrics is not None:
                    await anyio.to_thread.run_sync(self.metrics.close)
                    self.metrics = None
                await anyio.to_thread.run_sync(self._shutdown_files)
            self.server.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            log.info(
                "event=stopped received=%d committed=%d failed=%d left_in_journal=%d",
                self.counters.received,
                self.counters.committed,
                self.counters.failed,
                self.journal.outstanding,
            )

    def _start_metrics(self) -> None:
        """Serve Prometheus metrics; each scrape builds the status document on this loop."""
        from .metrics import MetricsServer

        token = anyio.lowlevel.current_token()

        def get_status() -> dict[str, Any]:
            return anyio.from_thread.run_sync(self.status, token=token)

        host, port = metrics_host_port(self.cfg)
        self.metrics = MetricsServer(host, port, get_status)
        log.info("event=metrics_listening address=%s path=/metrics", self.metrics.address)

    async def _rate_loop(self) -> None:
        while True:
            self.counters.sample_rate(time.monotonic())
            await anyio.sleep(RATE_SAMPLE_S)

    def _shutdown_files(self) -> None:
        """fsync, write the mark, close; a failure (a full disk) is logged, not raised: the
        journal replays from the last mark that was written."""
        try:
            self.journal.sync()
            self.journal.write_mark(self.journal.low_water(), self._client_floors())
        except OSError as exc:
            log.error("event=mark_not_written reason=%r note=replay_from_the_last_mark", str(exc))
        try:
            self.journal.close()
        except OSError as exc:
            log.error("event=journal_close_failed reason=%r", str(exc))
        self.runbook.close()

    async def _serve_until_signal(self, tg: anyio.abc.TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as serving:
                serving.start_soon(
                    self.supervisor.supervised, "server", self.server.serve, self.intake.handle
                )
                async for signum in signals:
                    log.info("event=stopping signal=%s", signal.Signals(signum).name)
                    serving.cancel_scope.cancel()
                    break
        self._stopping = True
        self.notifier.stopping(f"draining {self.batcher.pending} record(s)")
        self.imports.stop.set()
        await self._flush_acks()
        await self._drain(self.cfg.drain_timeout_s)
        tg.cancel_scope.cancel()

    async def _drain_then_exit(self, tg: anyio.abc.TaskGroup) -> None:
        """--until-idle: commit what the journal holds, then stop (SIGTERM stops it early)."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as draining:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        draining.cancel_scope.cancel()

                draining.start_soon(stop_on_signal)
                await self._drain(float("inf"))
                draining.cancel_scope.cancel()
        log.info("event=idle note=journal_drained")
        tg.cancel_scope.cancel()

    async def _drain(self, within: float) -> None:
        """Commit everything buffered; give up after ``within`` s (the rest stays journaled)."""
        self.batcher.expedite(None)
        self._wake_sinks()
        self._feed_wake.set()
        deadline = time.monotonic() + within
        with anyio.move_on_after(within):
            while self._busy():
                self.batcher.expedite(None)
                # tell systemd the drain is alive, so TimeoutStopSec does not cut it short
                self.notifier.extend_timeout(min(3600.0, max(5.0, deadline - time.monotonic() + 5)))
                await self._idle.wait(0.2)
        if self._busy():
            log.warning(
                "event=drain_incomplete pending_records=%d pending_artifacts=%d "
                "journal_entries=%d note=kept_in_journal_for_next_start",
                self.batcher.pending,
                self._art_pending,
                self.journal.outstanding,
            )

    def _busy(self) -> bool:
        return bool(
            self.batcher.pending
            or self._committing
            or self._art_pending
            or self._spill_from is not None
        )

    # ------------------------------------------------------------------ intake's data path

    def _journaled(self, client_id: str, seq: int, pos: Position) -> None:
        """A sequenced frame was appended at ``pos`` (before the ledger accepts it)."""
        self._positions[(client_id, seq)] = pos
        self._written_at[pos] = time.monotonic()
        self._sync_wake.set()

    def _offer(self, msg: p.Data | p.LogArtifact, pos: Position) -> None:
        """Deliver an accepted frame now, or (over the memory budget) leave it in the journal."""
        if self._spill_from is None:
            if self.batcher.pending < self.cfg.max_buffered_records:
                self._deliver(msg)
            else:
                self._spill_from = pos
                self.counters.spills += 1
                log.info("event=spill note=backlog_over_memory_budget_stays_in_journal")

    def _ack_later(self, identity: bytes, client_id: str) -> None:
        self._pending_acks[identity] = client_id  # acked after the next group fsync
        self._sync_wake.set()

    def _deliver(self, msg: p.Data | p.LogArtifact, *, replayed: bool = False) -> None:
        """Hand a journaled message's records to the batcher (or the artifact lane)."""
        origin = Origin(msg.client_id, msg.seq)
        if type(msg) is p.LogArtifact:  # checked by the lane, whichever way it came
            self._art_pending += 1
            self.artifacts.submit(origin, msg, replayed=replayed)
            return
        assert type(msg) is p.Data
        good: list[p.Record] = []
        for rec in msg.records:
            problem = record_problem(rec)
            if problem is None:
                good.append(rec)
            else:
                failure = p.Failure(rec, "INVALID_PARAMETER_VALUE", problem)
                self._settle(origin, rec.run_id, rec, failure)
        if good:
            self.clients[msg.client_id].runs.add(good[0].run_id)
            for settled in self.batcher.add(origin, good, time.monotonic()):
                rec = settled.record
                self._settle(settled.origin, rec.run_id, rec, settled.failure)
            self._wake_sinks()

    # ------------------------------------------------------------------ journal tasks

    async def _sync_loop(self) -> None:
        """Group fsync: after the first append, wait one interval, fsync once, ack everyone."""
        interval = self.cfg.fsync_interval_ms / 1000
        while True:
            await self._sync_wake.wait(None)
            await anyio.sleep(interval)
            if self.cfg.durability == "fsync":
                started = time.monotonic()
                try:
                    await anyio.to_thread.run_sync(self.journal.sync)
                except OSError as exc:
                    if not is_disk_error(exc):
                        raise
                    # not durable: hold the acks back (clients keep the frames) and try again
                    self.disk.failed("journal (fsync)", exc, "acks_held_back_until_fsync_works")
                    await anyio.sleep(DISK_RETRY_S)
                    self._sync_wake.set()
                    continue
                self.disk.ok("journal (fsync)")
                self.counters.fsyncs += 1
                self.counters.fsync_seconds += time.monotonic() - started
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        acks, self._pending_acks = self._pending_acks, {}
        for identity, cid in acks.items():
            await self.server.send(identity, p.Ack(self.ledger.received_upto(cid)))

    async def _mark_loop(self) -> None:
        """Persist the low-water mark a little after entries settle; delete committed segments.
        On a full disk: roll a settled current segment so its space can be reclaimed, and try
        the mark and runs.log again every DISK_RETRY_S until they are written."""
        last = None
        while True:
            retry = bool(self.journal.full_reason or self.disk)
            await self._mark_wake.wait(DISK_RETRY_S if retry else None)
            await anyio.sleep(0.2)
            if self.journal.full_reason:
                self.journal.roll_if_settled()
            low = self.journal.low_water()
            floors = self._client_floors()
            if (low, floors) != last:
                try:
                    if self.cfg.durability == "fsync":
                        await anyio.to_thread.run_sync(self.journal.sync)
                    await anyio.to_thread.run_sync(self.journal.write_mark, low, floors)
                except OSError as exc:
                    if not is_disk_error(exc):
                        raise
                    self.disk.failed("journal mark.json", exc, "mark_kept_in_memory_retried")
                else:
                    self.disk.ok("journal mark.json")
                    last = (low, floors)
            if self.runbook.unsaved:
                await anyio.to_thread.run_sync(self.runbook.save_pending)
            if "daemon.lock" in self.disk.active:
                await anyio.to_thread.run_sync(self._write_pid)

    def _client_floors(self) -> dict[str, int]:
        """Per client, the highest contiguous seq accepted — persisted with the mark so a
        restarted daemon still recognises resends of messages it already committed."""
        now = time.monotonic()
        return {
            cid: self.ledger.received_upto(cid)
            for cid, info in self.clients.items()
            if now - info.last_seen < CLIENT_MEMORY_S and self.ledger.received_upto(cid)
        }

    async def _feed_loop(self) -> None:
        """Deliver journaled-but-undelivered entries (replay, or a backlog over the memory
        budget) to the batcher as room frees up; then hand back to direct delivery."""
        budget = self.cfg.max_buffered_records
        while True:
            if self._spill_from is None or self.batcher.pending >= budget // 2:
                await self._feed_wake.wait(None if self._spill_from is None else 1.0)
                continue
            start = self._spill_from
            chunk = await anyio.to_thread.run_sync(self.journal.read, start, 4 * 1024 * 1024)
            for pos, payload in chunk:
                if payload[:1] != KIND_SEQUENCED:
                    continue
                msg = p.decode(payload[1:], max_frame=2**31)
                assert isinstance(msg, p.Data | p.LogArtifact)
                if self._positions.get((msg.client_id, msg.seq)) == pos:
                    self._client(msg.client_id)
                    self._deliver(msg, replayed=True)
            if chunk:
                last_pos, last_payload = chunk[-1]
                nxt = Position(last_pos.segment, last_pos.offset + HEADER.size + len(last_payload))
            else:
                nxt = self.journal.head
            self._spill_from = None if nxt >= self.journal.head else nxt
            self._wake_sinks()

    # ------------------------------------------------------------------ settling and barriers

    def _message_done(self, client_id: str, seq: int) -> None:
        pos = self._positions.pop((client_id, seq), None)
        if pos is not None:
            self._written_at.pop(pos, None)
            self.journal.settle(pos)
            self._mark_wake.set()

    def _settle(
        self, origin: Origin, run_id: str | None, record: p.Record | None, failure: p.Failure | None
    ) -> None:
        if failure is not None:
            self.counters.failed += 1
            self.ledger.fail(origin.client_id, run_id, failure)
            self._dead_letter(origin, run_id, failure)
        else:
            self.counters.committed += 1
        if self.ledger.settle(origin.client_id, origin.seq):
            self._release(origin.client_id)

    def _dead_letter(self, origin: Origin, run_id: str | None, failure: p.Failure) -> None:
        log.warning(
            "event=record_failed client=%s run=%s code=%s reason=%r",
            origin.client_id,
            run_id,
            failure.code,
            failure.message[:300],
        )
        entry = {
            "time": time.time(),
            "client_id": origin.client_id,
            "seq": origin.seq,
            "run_id": run_id,
            "record": None if failure.record is None else p.record_to_wire(failure.record),
            "code": failure.code,
            "reason": failure.message,
        }
        try:
            with open(self._deadletter, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, allow_nan=True) + "\n")
            self.counters.dead_lettered += 1
        except OSError as exc:
            log.error("event=deadletter_write_failed reason=%r", str(exc))

    def _settle_batch(self, batch: Batch, error: SinkError | None) -> None:
        if error is None:
            self.counters.committed += len(batch.items)
            per_origin = Counter(origin for _, origin in batch.items)
            moved = {
                o.client_id
                for o, n in per_origin.items()
                if self.ledger.settle(o.client_id, o.seq, n)
            }
            for cid in moved:
                self._release(cid)
            return
        for record, origin in batch.items:
            if isinstance(record, p.Param):
                self.batcher.param_failed(record.run_id, record.key)
            self._settle(
                origin, record.run_id, record, p.Failure(record, error.code, error.message)
            )

    def _release(self, client_id: str) -> None:
        waiters = self._waiters.get(client_id)
        if not waiters:
            return
        upto = self.ledger.committed_upto(client_id)
        keep = []
        for seq, event in waiters:
            if seq <= upto:
                event.set()
            else:
                keep.append((seq, event))
        self._waiters[client_id] = keep

    async def _barrier(self, client_id: str, seq: int, within: float | None = None) -> bool:
        """Wait until every sequenced message of the client up to ``seq`` is done."""
        if self.ledger.committed_upto(client_id) >= seq:
            return True
        self.batcher.expedite(None)
        self._wake_sinks()
        event = anyio.Event()
        self._waiters.setdefault(client_id, []).append((seq, event))
        with anyio.move_on_after(self.cfg.barrier_timeout_s if within is None else within):
            await event.wait()
            return True
        self._waiters[client_id] = [w for w in self._waiters[client_id] if w[1] is not event]
        return False

    # ------------------------------------------------------------------ MLflow calls

    async def _write(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None) -> T:
        """Run a blocking sink call in a worker thread under the writer limiter; retry transient
        errors with capped exponential backoff and jitter (forever, or for ``retry_for`` s)."""
        backoff = 0.05
        give_up = None if retry_for is None else time.monotonic() + retry_for
        while True:
            try:
                result = await anyio.to_thread.run_sync(
                    functools.partial(fn, *args), limiter=self._writer
                )
                self.counters.last_sink_ok_at = time.time()
                return result
            except RetryableSinkError as exc:
                self._note_error(exc)
                if give_up is not None and time.monotonic() + backoff > give_up:
                    raise
                self.counters.sink_retries += 1
                await anyio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, self.cfg.retry_max_backoff_s)

    def _note_error(self, exc: SinkError) -> None:
        self.counters.last_sink_error = str(exc)[:500]
        self.counters.last_sink_error_at = time.time()
        log.warning(
            "event=sink_error code=%s retryable=%s reason=%r",
            exc.code,
            isinstance(exc, RetryableSinkError),
            exc.message[:300],
        )

    def _wake_sinks(self) -> None:
        for wake in self._sink_wakes:
            wake.set()

    async def _sink_loop(self, lane: int) -> None:
        """One lane: commits the batches of its runs, one at a time, in order."""
        wake = self._sink_wakes[lane]
        while True:
            batch = self.batcher.pop_ready(lane, time.monotonic())
            if batch is None:
                if not self._committing:
                    self._idle.set()
                deadline = self.batcher.next_deadline(lane)
                await wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                continue
            self._committing += 1
            try:
                await self._commit(batch)
            finally:
                self._committing -= 1
            if self._spill_from is not None:
                self._feed_wake.set()

    async def _commit(self, batch: Batch) -> None:
        started = time.monotonic()
        try:
            run_id = await self._resolve(batch.run_id)
            await self._write(self.sink.log_batch, run_id, batch.metrics, batch.params, batch.tags)
        except PermanentSinkError as exc:
            self._note_error(exc)
            if len(batch) > 1 and not exc.whole_run:
                first, second = batch.split()  # isolate the bad record(s) by bisection
                await self._commit(first)
                await self._commit(second)
            else:
                self._settle_batch(batch, exc)
            return
        self.counters.batches += 1
        self.counters.sink_latencies.append(time.monotonic() - started)
        self._settle_batch(batch, None)

    # ------------------------------------------------------------------ control requests

    def _client(self, client_id: str) -> ClientInfo:
        return self.table.touch(client_id, time.monotonic())

    async def _resolve(self, run_id: str) -> str:
        return await self.runs.resolve(run_id)

    async def _end_run(self, run_id: str, status: str, end_time: int) -> None:
        await self.runs.end(run_id, status, end_time)

    async def _read(self, fn: Callable[[], T]) -> T:
        backoff = 0.05
        give_up = time.monotonic() + 30.0
        while True:
            try:
                return await anyio.to_thread.run_sync(fn, limiter=self._readers)
            except RetryableSinkError:
                if time.monotonic() + backoff > give_up:
                    raise
                await anyio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 2.0)

    # ------------------------------------------------------------------ client liveness

    def _activity(self) -> Callable[[str], bool]:
        """For the client table: has a client an open run or unsettled frames?"""
        owners = self.runs.owners()
        ledger = self.ledger
        return lambda cid: cid in owners or ledger.committed_upto(cid) < ledger.received_upto(cid)

    def _connected(self, identity: bytes) -> bool:
        notice = p.ErrorReply(
            None, "client_id_in_use", "another connection named this client's id: refused"
        )
        return self.server.connected(identity, notice)

    def _privileged(self, peer: Peer) -> bool:
        """The daemon itself (its spool imports; with CURVE, whoever holds its key pair)."""
        if peer.pid is not None:
            return peer.pid == os.getpid()
        return self.curve is not None and peer.key == self.curve.public.decode()

    # ------------------------------------------------------------------ artifacts

    def _artifact_done(self, origin: Origin, run_id: str, failure: p.Failure | None) -> None:
        self._art_pending -= 1
        if failure is None:
            self.counters.artifacts += 1
        self._settle(origin, run_id, None, failure)

    # ------------------------------------------------------------------ status

    def _status_line(self) -> str:
        c = self.counters
        return (
            f"clients={len(self.clients)} open_runs={len(self.runbook.open)} "
            f"received={c.received} committed={c.committed} failed={c.failed} "
            f"queue={self.batcher.pending} journal_bytes={self.journal.bytes_used}"
        )

    async def _notify_loop(self) -> None:
        """WATCHDOG=1 at half of WatchdogSec, from the event loop itself (a wedged loop stops
        pinging and systemd restarts it), and a STATUS= line with the counters."""
        interval = self.notifier.watchdog_interval
        if not self.notifier.enabled:
            return
        period = min(interval, 5.0) if interval else 5.0
        last_status = 0.0
        while True:
            if interval:
                self.notifier.watchdog()
            if time.monotonic() - last_status >= 5.0:
                self.notifier.status(self._status_line())
                last_status = time.monotonic()
            await anyio.sleep(period)

    def _oldest_uncommitted_age(self, now: float) -> float:
        """Seconds since the oldest journal entry that is not yet committed was written."""
        if not self.journal.outstanding:
            return 0.0
        written = self._written_at.get(self.journal.low_water())
        return 0.0 if written is None else max(0.0, now - written)

    def _pipeline_status(self, now: float) -> dict[str, Any]:
        """The data path's part of the status document."""
        return {
            "queue_depth": self.batcher.pending,
            "spilled": self._spill_from is not None,
            "artifacts_pending": self._art_pending,
            "oldest_uncommitted_age_s": self._oldest_uncommitted_age(now),
        }

    def status(self) -> dict[str, Any]:
        """The status document (``tracker-daemon status``, Prometheus); see status.py."""
        return self.reporter.document(time.monotonic(), time.time())


def run_daemon(cfg: Config, *, until_idle: bool = False) -> None:
    """Run until SIGTERM/SIGINT (or, with ``until_idle``, until the journal is committed).
    Raises AlreadyRunning / SinkError before serving."""
    anyio.run(Daemon(cfg, until_idle=until_idle).run, backend="asyncio")
