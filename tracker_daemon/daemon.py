"""Wires the daemon together in one anyio task group.

    server.serve ─► dispatch ─► journal.append ─► ledger.accept ─► batcher.add
                                     │                               (or, over the memory budget,
                                     └─ ack after the group fsync     left in the journal and read
                                                                      back by the feeder)
    sink loop:  batcher.pop_ready ─► sink.log_batch (worker thread; one writer for SQLite)
                ─► ledger.settle ─► barriers released; journal entries settled ─► mark advanced
    artifact lane: staged files ─► artifact repository (own thread; never blocks metrics)
    control: start_run / end_run ─► sink, under the same writer limiter
    clients: each client id bound to the peer that first used it (clients.py)
    liveness: one watch per distinct client pid (liveness.py); a dead client's open runs are
              ended FAILED once its records are committed

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
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc

from tracker_client import protocol as p
from tracker_client.curve import CurveKeys
from tracker_client.entities import encode_value
from tracker_client.spool import SUFFIX as SPOOL_SUFFIX
from tracker_client.spool import ImportRefused, SpoolBusy, import_spool

from . import __version__
from .artifacts import ArtifactLane
from .backend import ThreadBackend
from .barriers import Barriers
from .batcher import Origin
from .calls import StoreCalls
from .clients import ClientInfo, ClientTable, Peer, Refusal
from .committer import Committer
from .config import Config, load_server_curve, metrics_host_port, redact_uri
from .diskspace import DiskProblems
from .errors import AlreadyRunning, PermanentSinkError, SinkError
from .feeder import KIND_SEQUENCED, Feeder
from .journal import Journal, JournalFull, Position
from .journal_sync import JournalSync
from .lanes import Lanes
from .ledger import Ledger
from .liveness import PidWatcher
from .notify import Notifier
from .runs import RunBook
from .server import CurveSetup, Server, peer_name
from .settlement import Settlement
from .sink import RunHandle, Sink
from .spool_backoff import SpoolBackoff
from .staging import StagingArea
from .status import Counters, health
from .supervise import Supervisor, Tasks
from .throttle import LogThrottle
from .wakeup import Wakeup

__all__ = ["Daemon", "Wakeup", "run_daemon"]


log = logging.getLogger("tracker_daemon")
T = TypeVar("T")

OFFLINE_PREFIX = "offline-"
SPOOL_SCAN_S = 30.0  # how often the spool dir is checked for spools of dead clients
RATE_SAMPLE_S = 1.0  # how often the committed count is sampled for commit_rate
LIMIT_LOG_INTERVAL_S = 10.0  # each peer's rejections by one limit are logged at most this often


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
        self.ledger = Ledger()
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
        self.liveness = PidWatcher(self._pid_exited)
        self._limit_log = LogThrottle(LIMIT_LOG_INTERVAL_S)
        self._experiments: dict[str, str] = {}
        self._creating: dict[str, anyio.Event] = {}  # offline id -> set once the run exists
        self._creation_failed: dict[str, SinkError] = {}
        self.calls: StoreCalls | None = None  # created once MLflow is loaded
        self.artifacts = ArtifactLane(
            StagingArea(self.staging_dir, self.state_dir / "uploads"),
            artifact_root=cfg.artifact_root,
            uri_of=self._artifact_uri,
            upload=self.sink.upload_artifact,
            done=self._artifact_done,
            on_retry=self._note_error,
            on_ok=lambda: self.backend.note_ok(),
        )
        self._art_pending = 0
        # --- data path: backend ─► committer ◄─ feeder; settlement + barriers; journal sync
        self.backend = ThreadBackend(
            self.counters, writers=cfg.writers, max_backoff=cfg.retry_max_backoff_s
        )
        self.barriers = Barriers(
            self.ledger.committed_upto,
            expedite=lambda cid: self.committer.expedite_client(cid),
            timeout=cfg.barrier_timeout_s,
        )
        self.journal_sync = JournalSync(
            self.journal,
            self.disk,
            self.counters,
            durability=cfg.durability,
            fsync_interval=cfg.fsync_interval_ms / 1000,
            received_upto=self.ledger.received_upto,
            clients=self.clients,
            send=self.server.send,
            after_mark=self._after_mark,
        )
        self.settlement = Settlement(
            self.ledger,
            self.journal,
            self.barriers,
            self.counters,
            deadletter=self.state_dir / "deadletter.jsonl",
            on_settled=self.journal_sync.mark_wake.set,
        )
        self.committer = Committer(
            self.batcher,
            self.backend,
            self.settlement,
            self.counters,
            log_batch=self.sink.log_batch,
            resolve=self._resolve,
            runs_of=lambda cid: info.runs if (info := self.clients.get(cid)) else (),
            after_commit=lambda: self.feeder.poke(),
        )
        self.feeder = Feeder(
            self.journal,
            self.settlement,
            self.committer,
            self.counters,
            budget=cfg.max_buffered_records,
            client=self._client,
            submit_artifact=self._submit_artifact,
        )
        # the names the control code uses (same objects)
        self._positions = self.settlement.positions
        self._written_at = self.settlement.written_at
        self._pending_acks = self.journal_sync.pending_acks
        self._sync_wake = self.journal_sync.sync_wake
        self._mark_wake = self.journal_sync.mark_wake
        self._lock_fd: int | None = None
        self._tg: Tasks | None = None
        self._stopping = False
        self._full_logged = False
        self._full_logged_at = -1e9
        self._import_stop = threading.Event()

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
        """Index the journal from its mark (feeder.py); the records are delivered later."""
        mark = self.journal.open()
        entries, records = self.feeder.recover(mark.position, mark.clients)
        log.info(
            "event=journal_recovered mark=%s:%s entries=%d records=%d journal_bytes=%d",
            mark.position.segment,
            mark.position.offset,
            entries,
            records,
            self.journal.bytes_used,
        )

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
                    tasks.loop("spool_import", self._import_loop)
                for lane in range(len(self.batcher)):
                    tasks.loop(f"sink_lane_{lane}", self.committer.run_lane, lane)
                tasks.loop("artifacts", self.artifacts.run)
                tasks.loop("feeder", self.feeder.run)
                tasks.loop("group_fsync", self.journal_sync.sync_loop)
                tasks.loop("mark", self.journal_sync.mark_loop)
                tasks.loop("notify", self._notify_loop)
                tasks.loop("rate", self._rate_loop)
                tasks.loop("liveness", self.liveness.run)
                self.feeder.wake.set()
                self._watch_restored_owners()
        finally:
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
            self.journal.write_mark(self.journal.low_water(), self.journal_sync.client_floors())
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
                    self.supervisor.supervised, "server", self.server.serve, self.dispatch
                )
                async for signum in signals:
                    log.info("event=stopping signal=%s", signal.Signals(signum).name)
                    serving.cancel_scope.cancel()
                    break
        self._stopping = True
        self.notifier.stopping(f"draining {self.batcher.pending} record(s)")
        self._import_stop.set()
        await self.journal_sync.flush_acks()
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
        self.committer.expedite_all()
        self.feeder.wake.set()
        deadline = time.monotonic() + within
        with anyio.move_on_after(within):
            while self._busy():
                self.committer.expedite_all()
                # tell systemd the drain is alive, so TimeoutStopSec does not cut it short
                self.notifier.extend_timeout(min(3600.0, max(5.0, deadline - time.monotonic() + 5)))
                await self.committer.idle.wait(0.2)
        if self._busy():
            log.warning(
                "event=drain_incomplete pending_records=%d pending_artifacts=%d "
                "journal_entries=%d note=kept_in_journal_for_next_start",
                self.batcher.pending,
                self._art_pending,
                self.journal.outstanding,
            )

    def _busy(self) -> bool:
        return self.committer.busy or bool(self._art_pending) or self.feeder.spilling

    @property
    def _spill_from(self) -> Position | None:
        return self.feeder.spill_from

    # ------------------------------------------------------------------ dispatch (event loop)

    def dispatch(self, peer: Peer, msg: p.ClientMessage, raw: bytes) -> Any:
        identity = peer.routing_id
        cid = getattr(msg, "client_id", "")
        if cid:
            refusal = self.table.claim(cid, peer, time.monotonic())
            if refusal is not None:
                return self._refuse(identity, msg, refusal)
            if self.table.to_watch:
                self._watch_bound()
        over = self._over_limit(msg)
        if over is not None:
            return self._refuse(identity, msg, Refusal("limit_exceeded", *over))
        if type(msg) is p.Data or type(msg) is p.LogArtifact:
            return self._on_sequenced(identity, msg, raw)
        if isinstance(msg, p.Hello):
            return self._on_hello(identity, msg)
        assert self._tg is not None
        if isinstance(msg, p.StartRun):
            if msg.offline_id and self._offline_run(msg.offline_id) is None:
                self._creating.setdefault(msg.offline_id, anyio.Event())
            self._tg.start_soon(self._on_start_run, identity, msg)
        elif isinstance(msg, p.EndRun):
            self._tg.start_soon(self._on_end_run, identity, msg)
        elif isinstance(msg, p.Flush):
            self._tg.start_soon(self._on_flush, identity, msg)
        elif isinstance(msg, p.Call):
            self._tg.start_soon(self._on_call, identity, msg)
        elif isinstance(msg, p.StatusRequest):
            return self.server.send(identity, p.StatusReply(msg.req, self.status()))
        return None

    # ------------------------------------------------------------------ limits (event loop)

    def _over_limit(self, msg: p.ClientMessage) -> tuple[str, int, str] | None:
        """(limit, its value, message) when ``msg`` must be refused, else None. A refused
        sequenced message is not acked: the client keeps it and may send it again."""
        cfg = self.cfg
        if type(msg) is p.Data and len(msg.records) > cfg.max_records_per_frame:
            return (
                "max_records_per_frame",
                cfg.max_records_per_frame,
                f"max_records_per_frame = {cfg.max_records_per_frame}: this data frame (seq "
                f"{msg.seq}) holds {len(msg.records)} records; it is not acknowledged, and sent "
                "again unchanged it is refused again: split it. (The reference client sends at "
                "most 1000 records per frame; a client that builds larger frames has a bug.)",
            )
        cid = getattr(msg, "client_id", "")
        if cid and self._starts_new_run(msg):
            n = self._open_runs_of(cid)
            if n >= cfg.max_open_runs_per_client:
                return (
                    "max_open_runs_per_client",
                    cfg.max_open_runs_per_client,
                    f"max_open_runs_per_client = {cfg.max_open_runs_per_client}: this client "
                    f"already has {n} open runs; end some before starting more",
                )
        return None

    def _starts_new_run(self, msg: p.ClientMessage) -> bool:
        """Would ``msg`` open a run this client does not have open yet? (A resent request
        answered from the run book, or resuming a run the client owns, would not.)"""
        if isinstance(msg, p.Call):
            return msg.method == "create_run" and (
                f"{msg.client_id}:{msg.req}" not in self.runbook.created
            )
        if not isinstance(msg, p.StartRun):
            return False
        if msg.offline_id:
            created = self._offline_run(msg.offline_id) is not None
            return not created and msg.offline_id not in self._creating
        if f"{msg.client_id}:{msg.req}" in self.runbook.created:
            return False
        if msg.run_id is not None:
            run = self.runbook.open.get(msg.run_id)
            return run is None or msg.client_id not in run.owners
        return True

    def _open_runs_of(self, client_id: str) -> int:
        return sum(1 for run in self.runbook.open.values() if client_id in run.owners)

    def _refuse(self, identity: bytes, msg: p.ClientMessage, refusal: Refusal) -> Any:
        """Refuse ``msg`` (a sequenced one is not acked); count it, log it at most every
        LIMIT_LOG_INTERVAL_S per limit."""
        limit = refusal.limit
        self.counters.limit_rejections[limit] += 1
        held = self._limit_log.check((identity, limit), time.monotonic())
        if held is not None:
            log.warning(
                "event=limit_exceeded limit=%s value=%d kind=%s client=%s rejections=%d "
                "peer=%s suppressed=%d",
                limit,
                refusal.value,
                type(msg).__name__,
                getattr(msg, "client_id", ""),
                self.counters.limit_rejections[limit],
                peer_name(identity),
                held,
            )
        req = getattr(msg, "req", None)
        return self.server.send(identity, p.ErrorReply(req, refusal.code, refusal.message))

    def _client(self, client_id: str) -> ClientInfo:
        return self.table.touch(client_id, time.monotonic())

    def _on_hello(self, identity: bytes, msg: p.Hello) -> Any:
        # dispatch admitted it: this peer is the one the id is bound to (or the daemon itself)
        info = self._client(msg.client_id)
        info.claimed_pid, info.version = msg.pid, msg.version
        if info.owner is not None and info.owner[0] != "pid":  # no kernel pid: the claim
            info.host = msg.host
            if msg.host == self.hostname and info.pid != msg.pid:
                info.pid = msg.pid
                self._watch(info)
        self.ledger.floor(msg.client_id, msg.acked_floor)
        self._release(msg.client_id)
        log.debug("event=hello client=%s pid=%d host=%s", msg.client_id, msg.pid, msg.host)
        welcome = p.Welcome(
            msg.req,
            __version__,
            self.ledger.received_upto(msg.client_id),
            str(self.staging_dir),
            self.max_frame,
            str(self.spool_dir),
        )
        return self.server.send(identity, welcome)

    def _on_sequenced(self, identity: bytes, msg: p.Data | p.LogArtifact, raw: bytes) -> Any:
        cid, seq = msg.client_id, msg.seq
        self._client(cid)
        self.counters.frames += 1
        if self.ledger.is_new(cid, seq):
            try:
                pos = self.journal.append(KIND_SEQUENCED + raw)
            except JournalFull as exc:
                self.counters.journal_full_rejections += 1
                now = time.monotonic()
                if not self._full_logged and now - self._full_logged_at >= LIMIT_LOG_INTERVAL_S:
                    # once per episode (episodes closer than the interval count as one)
                    log.error(
                        "event=journal_full reason=%r rejections=%d note=not_acked_clients_keep_it",
                        str(exc),
                        self.counters.journal_full_rejections,
                    )
                    self._full_logged, self._full_logged_at = True, now
                self._mark_wake.set()  # reclaim committed space (roll, mark, delete)
                return self.server.send(identity, p.ErrorReply(None, "journal_full", str(exc)))
            if self._full_logged:
                log.info("event=journal_accepting_again")
                self._full_logged = False
            count = len(msg.records) if type(msg) is p.Data else 1
            self.counters.received += count
            self._sync_wake.set()
            self.settlement.journaled(cid, seq, count, pos, time.monotonic())
            self.feeder.offer(msg)  # delivered now, or read back from the journal (spill)
        else:
            self.counters.duplicate_frames += 1
        if self.cfg.durability == "os" or self._stopping:
            return self.server.send(identity, p.Ack(self.ledger.received_upto(cid)))
        self._pending_acks[identity] = cid  # acked after the next group fsync
        self._sync_wake.set()
        return None

    # ------------------------------------------------------------------ data path (aliases)

    def _deliver(self, msg: p.Data | p.LogArtifact, *, replayed: bool = False) -> None:
        self.feeder.deliver(msg, replayed=replayed)

    def _submit_artifact(self, origin: Origin, msg: p.LogArtifact, replayed: bool) -> None:
        self._art_pending += 1
        self.artifacts.submit(origin, msg, replayed=replayed)

    async def _after_mark(self) -> None:
        """After each mark: the daemon's other files that wait to be written."""
        if self.runbook.unsaved:
            await anyio.to_thread.run_sync(self.runbook.save_pending)
        if "daemon.lock" in self.disk.active:
            await anyio.to_thread.run_sync(self._write_pid)

    def _settle(
        self, origin: Origin, run_id: str | None, record: p.Record | None, failure: p.Failure | None
    ) -> None:
        self.settlement.settle(origin, run_id, record, failure)

    def _release(self, client_id: str) -> None:
        self.barriers.release(client_id)

    async def _barrier(self, client_id: str, seq: int, within: float | None = None) -> bool:
        """Wait until every sequenced message of the client up to ``seq`` is done."""
        return await self.barriers.wait(client_id, seq, within)

    async def _write(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None) -> T:
        return await self.backend.write(fn, *args, retry_for=retry_for)

    async def _read(self, fn: Callable[[], T]) -> T:
        return await self.backend.read(fn)

    def _note_error(self, exc: SinkError) -> None:
        self.backend.note_error(exc)

    def _wake_sinks(self) -> None:
        self.committer.wake_all()

    # ------------------------------------------------------------------ control requests

    async def _experiment_id(self, msg: p.StartRun) -> str:
        if msg.experiment_id is not None:
            return msg.experiment_id
        if msg.experiment_name is None:
            return "0"  # MLflow's Default experiment
        cached = self._experiments.get(msg.experiment_name)
        if cached is None:
            cached = await self._write(
                self.sink.get_or_create_experiment, msg.experiment_name, retry_for=5.0
            )
            self._experiments[msg.experiment_name] = cached
        return cached

    async def _on_start_run(self, identity: bytes, msg: p.StartRun) -> None:
        if msg.offline_id:  # the same offline run may arrive live, replayed and imported
            key = f"offline:{msg.offline_id}"
        else:
            key = f"{msg.client_id}:{msg.req}" if msg.client_id else ""
        try:
            handle = self.runbook.created.get(key) if key else None
            if handle is not None:
                pass  # a retried request: answer with the run it already created
            elif msg.run_id is not None:
                handle = await self._write(self.sink.resume_run, msg.run_id, retry_for=5.0)
            else:
                exp_id = await self._experiment_id(msg)
                start = msg.start_time or time.time_ns() // 1_000_000
                tags = dict(msg.tags)
                if msg.offline_id:
                    tags["tracker.offline_id"] = msg.offline_id
                parent = await self._resolve(msg.parent_run_id) if msg.parent_run_id else None
                handle = await self._write(
                    self.sink.create_run,
                    exp_id,
                    start,
                    tags,
                    msg.run_name,
                    parent,
                    retry_for=5.0,
                )
                if key:
                    await anyio.to_thread.run_sync(self.runbook.record_creation, key, handle)
        except SinkError as exc:
            if msg.offline_id:
                self._creation_failed[msg.offline_id] = exc
            await self.server.send(identity, p.ErrorReply(msg.req, exc.code, exc.message))
            return
        finally:
            if msg.offline_id and msg.offline_id in self._creating:
                self._creating.pop(msg.offline_id).set()
        await self._record_owner(handle, msg.client_id)
        if handle.params:
            self.batcher.seed_params(handle.run_id, handle.params)
        log.info("event=run_started run=%s experiment=%s", handle.run_id, handle.experiment_id)
        await self.server.send(
            identity,
            p.RunStarted(
                msg.req, handle.run_id, handle.experiment_id, handle.artifact_uri, handle.run_name
            ),
        )

    async def _record_owner(self, handle: RunHandle, client_id: str) -> ClientInfo | None:
        """Persist that ``client_id`` (with its pid, for liveness) has ``handle`` open; if its
        process is already gone, end the run once its records are committed."""
        owner = self.clients.get(client_id)
        await anyio.to_thread.run_sync(
            self.runbook.record_open,
            handle,
            client_id,
            owner.pid if owner else 0,
            owner.host if owner else "",
        )
        if owner is not None and owner.gone and self._tg is not None:
            self._tg.start_soon(self._client_exited, owner)
        return owner

    async def _on_flush(self, identity: bytes, msg: p.Flush) -> None:
        if not await self._barrier(msg.client_id, msg.seq):
            await self.server.send(identity, p.ErrorReply(msg.req, "timeout", self._late(msg.seq)))
            return
        failures = self.ledger.take_failures(msg.client_id, msg.run_id)
        await self.server.send(identity, p.Done(msg.req, tuple(failures)))

    async def _on_end_run(self, identity: bytes, msg: p.EndRun) -> None:
        if not await self._barrier(msg.client_id, msg.seq):
            await self.server.send(identity, p.ErrorReply(msg.req, "timeout", self._late(msg.seq)))
            return
        failures = self.ledger.take_failures(msg.client_id, msg.run_id)
        try:
            await self._end_run(msg.run_id, msg.status, msg.end_time)
        except SinkError as exc:
            failures.append(p.Failure(None, exc.code, f"ending run {msg.run_id}: {exc.message}"))
        await self.server.send(identity, p.Done(msg.req, tuple(failures)))

    async def _end_run(self, run_id: str, status: str, end_time: int) -> None:
        run_id = await self._resolve(run_id)
        await self._write(self.sink.end_run, run_id, status, end_time, retry_for=30.0)
        await anyio.to_thread.run_sync(self.runbook.record_closed, run_id)
        self.batcher.release_run(run_id)  # bounded memory over thousands of runs
        log.info("event=run_ended run=%s status=%s", run_id, status)

    def _offline_run(self, offline_id: str) -> RunHandle | None:
        return self.runbook.created.get(f"offline:{offline_id}")

    async def _resolve(self, run_id: str) -> str:
        """The MLflow run id for an id a client used: itself, or the run an offline id became."""
        if not run_id.startswith(OFFLINE_PREFIX):
            return run_id
        handle = self._offline_run(run_id)
        if handle is None and run_id not in self._creation_failed:
            # its start_run is being handled, or has not arrived yet (a resend in flight)
            event = self._creating.setdefault(run_id, anyio.Event())
            with anyio.move_on_after(30.0):
                await event.wait()
            handle = self._offline_run(run_id)
        if handle is not None:
            return handle.run_id
        cause = self._creation_failed.get(run_id)
        raise PermanentSinkError(
            "RESOURCE_DOES_NOT_EXIST",
            f"offline run {run_id} was never created"
            + (f": {cause.message}" if cause else " (its start_run did not reach the daemon)"),
            whole_run=True,
        )

    async def _on_call(self, identity: bytes, msg: p.Call) -> None:
        """An MLflow store method for the tracker:// plugin, after this client's earlier
        records are committed (read-your-writes)."""
        assert self.calls is not None
        if not await self._barrier(msg.client_id, msg.seq):
            await self.server.send(identity, p.ErrorReply(msg.req, "timeout", self._late(msg.seq)))
            return
        failures = self.ledger.take_failures(msg.client_id)
        key = f"{msg.client_id}:{msg.req}"
        invoke = functools.partial(self.calls.invoke, msg.target, msg.method, msg.args, msg.kwargs)
        try:
            self.calls.check(msg.target, msg.method)
            if msg.method == "create_run" and key in self.runbook.created:
                # a request resent after a reconnect: answer with the run it created
                rid = self.runbook.created[key].run_id
                invoke = functools.partial(
                    self.calls.invoke,
                    "tracking",
                    "get_run",
                    encode_value([rid]),
                    encode_value({}),
                )
            if self.calls.is_read(msg.method):
                result, value = await self._read(invoke)
            else:
                result, value = await self._write(invoke, retry_for=30.0)
        except SinkError as exc:
            for f in failures:  # not delivered: keep them for the next barrier
                self.ledger.fail(msg.client_id, f.record.run_id if f.record else None, f)
            await self.server.send(identity, p.ErrorReply(msg.req, exc.code, exc.message))
            return
        await self._after_call(msg, key, result)
        await self.server.send(identity, p.Result(msg.req, value, tuple(failures)))

    async def _after_call(self, msg: p.Call, key: str, result: Any) -> None:
        """Keep run bookkeeping (ownership for liveness, idempotent create) for plugin calls.
        The runbook fsyncs: that runs in a worker thread, not on the event loop."""
        if msg.target != "tracking" or msg.method not in ("create_run", "update_run_info"):
            return
        info = getattr(result, "info", result)  # create_run: a Run; update_run_info: a RunInfo
        if not hasattr(info, "run_id") or not hasattr(info, "status"):
            return
        handle = RunHandle(
            info.run_id, str(info.experiment_id), info.artifact_uri, info.run_name, {}
        )
        if msg.method == "create_run" and key not in self.runbook.created:
            await anyio.to_thread.run_sync(self.runbook.record_creation, key, handle)
        if info.status == "RUNNING":  # created, or resumed (mlflow.start_run(run_id=...))
            owner = await self._record_owner(handle, msg.client_id)
            if owner is not None:
                owner.runs.add(info.run_id)
        else:
            await anyio.to_thread.run_sync(self.runbook.record_closed, info.run_id)

    def _late(self, seq: int) -> str:
        return (
            f"records up to seq {seq} were not committed within {self.cfg.barrier_timeout_s:g} s; "
            f"last sink error: {self.counters.last_sink_error or 'none'}"
        )

    # ------------------------------------------------------------------ client liveness

    def _watch_restored_owners(self) -> None:
        """After a restart: watch the processes that own open runs (from runs.log); those that
        died while the daemon was down get their runs ended once their records are committed."""
        for cid, (pid, host) in self.runbook.owners.items():
            if host != self.hostname or pid <= 0:
                continue
            if not any(cid in run.owners for run in self.runbook.open.values()):
                continue
            info = self._client(cid)
            info.pid, info.host = pid, host
            self._watch(info)

    def _watch_bound(self) -> None:
        """Clients the table just bound to a peer whose pid the kernel told: watch that pid."""
        bound, self.table.to_watch = self.table.to_watch, []
        for info in bound:
            info.host = self.hostname
            self._watch(info)

    def _watch(self, info: ClientInfo) -> None:
        """Watch ``info.pid`` (shared with its other clients); already gone: act at once."""
        if info.pid > 0 and not self.liveness.watch(info.pid):
            self._pid_exited(info.pid)

    def _pid_exited(self, pid: int) -> None:
        for info in self.table.exited(pid):  # no longer counted nor listed in the status
            log.info("event=client_exited client=%s pid=%d", info.client_id, pid)
            if self._tg is not None:
                self._tg.start_soon(self._client_exited, info)

    def _activity(self) -> Callable[[str], bool]:
        """For the client table: has a client an open run or unsettled frames?"""
        owners = {o for run in self.runbook.open.values() for o in run.owners}
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

    async def _client_exited(self, info: ClientInfo) -> None:
        """A local client process is gone: commit what it sent, then end its runs."""
        upto = self.ledger.received_upto(info.client_id)
        await self._barrier(info.client_id, upto, within=60.0)
        reason = (
            f"tracker-daemon: client process {info.pid} on {info.host} exited without "
            f"ending this run"
        )
        for run_id in self.runbook.orphaned_by(info.client_id):
            try:
                await self._write(
                    self.sink.log_batch,
                    run_id,
                    [],
                    [],
                    [p.Tag(run_id, "tracker.end_reason", reason)],
                    retry_for=30.0,
                )
                await self._end_run(run_id, self.cfg.orphan_status, time.time_ns() // 1_000_000)
                self.counters.orphaned_runs += 1
                log.warning(
                    "event=orphaned_run run=%s client=%s pid=%d status=%s",
                    run_id,
                    info.client_id,
                    info.pid,
                    self.cfg.orphan_status,
                )
            except SinkError as exc:
                self._note_error(exc)

    # ------------------------------------------------------------------ spools of dead clients

    def _own_curve_keys(self) -> CurveKeys | None:
        """With CURVE, the daemon connects to itself (spool imports) with its own key pair,
        which it always accepts."""
        if self.curve is None:
            return None
        return CurveKeys(self.curve.public, self.curve.public, self.curve.secret)

    async def _import_loop(self) -> None:
        """Import spools left in the spool dir by clients that died while no daemon answered
        (a live client holds its spool's lock and sends it itself). A spool that fails is tried
        again with a growing delay; one the daemon refuses for good is not retried until it
        changes (both logged)."""
        backoff = SpoolBackoff()
        while True:
            for path in sorted(self.spool_dir.glob(f"*{SPOOL_SUFFIX}")):
                if not backoff.due(path, time.monotonic()):
                    continue
                try:
                    result = await anyio.to_thread.run_sync(
                        functools.partial(
                            import_spool,
                            path,
                            self.cfg.bind_address,
                            timeout=600,
                            stop=self._import_stop,
                            curve=self._own_curve_keys(),
                        ),
                        abandon_on_cancel=True,
                    )
                except SpoolBusy:
                    continue
                except (OSError, TimeoutError, p.ProtocolError, ImportRefused) as exc:
                    permanent = isinstance(exc, ImportRefused)
                    delay = backoff.failed(path, time.monotonic(), permanent=permanent)
                    log.error(
                        "event=spool_import_failed path=%s reason=%r attempts=%d retry=%s",
                        path,
                        str(exc),
                        backoff.attempts(path),
                        "when the file changes" if permanent else f"in {delay:g} s",
                    )
                    continue
                backoff.forget(path)
                path.unlink(missing_ok=True)
                self.counters.spools_imported += 1
                log.info(
                    "event=spool_imported path=%s records=%d runs=%s failures=%d reframed=%d",
                    path,
                    result.records,
                    json.dumps(result.runs),
                    len(result.failures),
                    result.reframed,
                )
            await anyio.sleep(SPOOL_SCAN_S)

    # ------------------------------------------------------------------ artifacts

    def _artifact_done(self, origin: Origin, run_id: str, failure: p.Failure | None) -> None:
        self._art_pending -= 1
        if failure is None:
            self.counters.artifacts += 1
        self._settle(origin, run_id, None, failure)

    async def _artifact_uri(self, run_id: str) -> str:
        run_id = await self._resolve(run_id)
        handle = self.runbook.handles.get(run_id)
        if handle is None:  # a run started elsewhere: read it (reads need no writer slot)
            handle = await anyio.to_thread.run_sync(self.sink.run_info, run_id)
            self.runbook.handles[run_id] = handle
        return handle.artifact_uri

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

    def status(self) -> dict[str, Any]:
        """The status document (``tracker-daemon status``, Prometheus); see status.py."""
        c = self.counters
        cfg = self.cfg
        now = time.monotonic()
        now_wall = time.time()
        oldest_age = self._oldest_uncommitted_age(now)
        error_age = c.sink_error_age(now_wall)
        reasons = health(
            journal_full=self.journal.full_reason,
            disk_problems=list(self.disk.active.values()),
            sink_error_age_s=error_age,
            sink_failing_now=c.sink_failing_now,
            last_sink_error=c.last_sink_error,
            oldest_uncommitted_age_s=oldest_age,
            stall_s=cfg.health_stall_s,
        )
        limits = {
            "max_frame_bytes": self.max_frame,
            "max_records_per_frame": cfg.max_records_per_frame,
            "max_open_runs_per_client": cfg.max_open_runs_per_client,
            "max_clients": cfg.max_clients,
        }
        rejections = dict(c.limit_rejections)
        rejections["max_frame_bytes"] = self.server.rejected_by_code["frame_too_large"]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(now_wall - c.started_at, 3),
            "healthy": not reasons,
            "unhealthy_reasons": reasons,
            "health_stall_s": cfg.health_stall_s,
            "backend": redact_uri(cfg.backend_uri),
            "artifact_root": cfg.artifact_root,
            "address": cfg.bind_address,
            "auth": self.server.auth,
            "auth_denied": self.server.auth_denied,
            "metrics_address": self.metrics.address if self.metrics is not None else "",
            "durability": cfg.durability,
            "limits": limits,
            "limit_rejections": rejections,
            "clients": self.table.status_rows(now),
            "client_id_in_use": self.table.in_use_refusals,
            "pid_watches": self.liveness.watched,
            "pidfds": self.liveness.fds,
            "open_runs": len(self.runbook.open),
            "frames": c.frames,
            "duplicate_frames": c.duplicate_frames,
            "rejected_frames": self.server.rejected,
            "rejected_unanswered": self.server.rejected_unanswered,
            "last_rejection": self.server.last_rejection,
            "received": c.received,
            "replayed": c.replayed,
            "committed": c.committed,
            "failed": c.failed,
            "dead_lettered": c.dead_lettered,
            "orphaned_runs": c.orphaned_runs,
            "spools_imported": c.spools_imported,
            "queue_depth": self.batcher.pending,
            "spilled": self._spill_from is not None,
            "artifacts_pending": self._art_pending,
            "artifacts_retrying": self.artifacts.retrying,
            "artifacts": c.artifacts,
            "batches": c.batches,
            "sink_retries": c.sink_retries,
            "sink_latency_ms": c.sink_latency_ms(),
            "fsyncs": c.fsyncs,
            "fsync_ms_avg": round(c.fsync_seconds / c.fsyncs * 1000, 3) if c.fsyncs else 0.0,
            "commit_rate": c.commit_rate(now),
            "last_sink_error": c.last_sink_error,
            "last_sink_error_at": round(c.last_sink_error_at, 3),
            "last_sink_error_age_s": None if error_age is None else round(error_age, 3),
            "oldest_uncommitted_age_s": round(oldest_age, 3),
            "journal_max_bytes": cfg.journal_max_bytes,
            "journal_full_rejections": c.journal_full_rejections,
            **self.journal.status(),
            "disk_full": self.journal.disk_full or bool(self.disk),
            "disk_problems": sorted(self.disk.active.values()),
            **self.supervisor.status(),
        }


def run_daemon(cfg: Config, *, until_idle: bool = False) -> None:
    """Run until SIGTERM/SIGINT (or, with ``until_idle``, until the journal is committed).
    Raises AlreadyRunning / SinkError before serving."""
    anyio.run(Daemon(cfg, until_idle=until_idle).run, backend="asyncio")
