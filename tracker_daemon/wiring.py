"""The daemon's components and how they are connected (the daemon's lifecycle, daemon.py,
runs them). One builder per part of the graph, in dependency order: the data path (journal sync,
settlement, backend, barriers, run service, committer, artifact lane, feeder), the control side
(spool imports, endings, orphans, control requests, intake), the system-metrics sampler and the
status reporter; each component gets the bound methods it needs of the others, and the seams
between components (small callbacks) are here too. docs/architecture.md draws the graph.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from tracker_client import protocol as p

from . import __version__
from .artifacts.artifact_roots import ArtifactRoots
from .artifacts.artifact_writer import ArtifactWriter
from .artifacts.lane import ArtifactLane
from .artifacts.staging import StagingArea
from .commit.backend import ThreadBackend
from .commit.barriers import Barriers
from .commit.batcher import Origin
from .commit.committer import Committer
from .commit.lanes import Lanes
from .commit.ledger import Ledger
from .commit.pacing import CommitPacer
from .config import (
    MIN_RECORDS_PER_FRAME,
    Config,
    load_server_curve,
    redact_uri,
)
from .intake.clients import ClientTable, Peer
from .intake.curve_auth import CurveSetup
from .intake.intake import DataPath, Intake, Welcome
from .intake.limits import Limits
from .intake.liveness import PidWatcher
from .intake.request_slots import RequestSlots
from .intake.server import Server
from .journal.diskspace import DiskProblems
from .journal.feeder import Feeder
from .journal.journal import Journal, Position
from .journal.journal_sync import JournalSync
from .journal.settlement import Settlement
from .journal.statelock import StateLock
from .ops.notify import Notifier
from .ops.status import Counters, StatusReporter
from .ops.supervise import Supervisor, Tasks
from .runs.control import Control
from .runs.endings import Endings
from .runs.orphans import Orphans
from .runs.run_service import RunService
from .runs.runs import RunBook
from .runs.spool_imports import SpoolImports, acting_uid
from .runs.system_metrics import ProcessReader, SystemMetrics, targets_of
from .store.calls import StoreCalls
from .store.experiments import Experiments
from .store.sink import Sink

__all__ = ["Wiring"]

log = logging.getLogger("tracker_daemon")


class Wiring:
    def __init__(self, cfg: Config, *, until_idle: bool = False) -> None:
        self.cfg = cfg
        self.until_idle = until_idle  # replay, commit everything, exit (no socket)
        state = cfg.state_path
        self.staging_dir, self.spool_dir = state / "staging", state / "spool"
        self.hostname = os.uname().nodename
        # a frame must fit the journal with room to spare, or it could never be accepted
        self.max_frame = min(cfg.max_frame_bytes, cfg.journal_max_bytes // 4)
        self.curve: CurveSetup | None = None
        if cfg.curve_enabled:
            public, secret = load_server_curve(cfg)
            self.curve = CurveSetup(public, secret, Path(cfg.curve_allowed_clients_dir))
        self.sink = Sink(
            cfg.backend_uri,
            cfg.artifact_root,
            mode=cfg.sink,
            sqlite_wal=cfg.sqlite_wal,
            make_parents=not cfg.backend_store_uri,  # only the default store's tree is made
        )
        self.calls: StoreCalls | None = None  # created once MLflow is loaded
        self.address = _import_address(state) if until_idle else cfg.bind_address
        self.server = Server(
            self.address, self.max_frame, self.curve, max_records=cfg.max_records_per_frame
        )
        self.metrics: Any = None  # a metrics.MetricsServer while serving metrics_address
        self.counters = Counters()
        self.notifier = Notifier()
        self.supervisor = Supervisor()
        self.disk = DiskProblems()  # the daemon's own files it cannot write right now
        self.lock = StateLock(state, self.disk)
        self.journal = Journal(
            state / "journal",
            segment_bytes=cfg.journal_segment_bytes,
            max_bytes=cfg.journal_max_bytes,
        )
        self.runbook = RunBook(state / "runs.log", self.disk)
        self.ledger = Ledger()
        self.batcher = Lanes(cfg.writers, max_age=cfg.batch_max_age_ms / 1000)
        self.table = ClientTable(
            cfg.max_clients,
            activity=self._activity,
            remembered=lambda cid: self.ledger.received_upto(cid) > 0,
            connected=self._connected,
            privileged=self._privileged,
            acting=lambda peer: acting_uid(peer.routing_id) if self._privileged(peer) else None,
        )
        self.liveness = PidWatcher(lambda pid: self.orphans.pid_exited(pid))
        self._tg: Tasks | None = None
        self._stopping = False
        self._build_data_path()
        self._build_control()
        self._build_system_metrics()
        self.reporter = self._build_status()

    def _build_data_path(self) -> None:
        """backend ─► committer ◄─ feeder; settlement + barriers; journal sync; artifact lane."""
        cfg = self.cfg
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
            clients=self.table.clients,
            send=self.server.send,
            after_mark=self._after_mark,
        )
        self.settlement = Settlement(
            self.ledger,
            self.journal,
            self.barriers,
            self.counters,
            deadletter=cfg.state_path / "deadletter.jsonl",
            on_settled=self.journal_sync.mark_wake.set,
        )
        self.artifact_roots = ArtifactRoots.of(cfg.local_artifact_roots)
        self.runs = RunService(
            self.runbook,
            self.sink,
            experiments=Experiments(lambda: self.sink.store),
            write=self.backend.write,
            owner_of=self.table.clients.get,
            owner_gone=lambda info: self.orphans.client_exited(info),
            seed_params=self.batcher.seed_params,
            release_run=self.batcher.release_run,
            check_location=self.artifact_roots.check,
            on_offline=lambda offline_id: self.committer.offline_handled(offline_id),
        )
        self.committer = Committer(
            self.batcher,
            self.backend,
            self.settlement,
            self.counters,
            log_batch=self.sink.log_batch,
            lookup=self.runs.lookup,
            replayed=lambda origin: self.feeder.replayed(origin),
            runs_of=lambda cid: info.runs if (info := self.table.clients.get(cid)) else (),
            after_commit=lambda: self.feeder.poke(),
            pacer=CommitPacer(
                floor=cfg.batch_max_age_ms / 1000,
                ceiling=max(cfg.batch_max_age_ms, cfg.commit_interval_ms) / 1000,
            ),
        )
        self.artifacts = ArtifactLane(
            StagingArea(self.staging_dir, cfg.state_path / "uploads"),
            artifact_root=cfg.artifact_root,
            extra_roots=cfg.local_artifact_roots,
            uri_of=self.runs.artifact_uri,
            upload=ArtifactWriter(self.artifact_roots, self.sink.upload_artifact).upload,
            done=self._artifact_done,
            on_retry=self.backend.note_error,
            on_ok=self.backend.note_ok,
        )
        self._art_pending = 0
        self.feeder = Feeder(
            self.journal,
            self.settlement,
            self.committer,
            self.counters,
            budget=cfg.max_buffered_records,
            client=lambda cid: self.table.touch(cid, time.monotonic()),
            submit_artifact=self._submit_artifact,
        )

    def _build_control(self) -> None:
        """intake (synchronous) ─► limits, control (requests) ─► run service; orphans; imports."""
        cfg = self.cfg
        self.imports = SpoolImports(
            self.spool_dir,
            self.address,
            self.curve,
            self.counters,
            max_record=max(self.max_frame, p.DEFAULT_MAX_FRAME_BYTES),
        )
        self.endings = Endings(
            self.runs,
            self.supervisor,
            barrier=self.barriers.wait,
            received_upto=self.ledger.received_upto,
            synced=self.journal_sync.synced,
            note_error=self.backend.note_error,
        )
        self.orphans = Orphans(
            self.table,
            self.runs,
            self.counters,
            self.supervisor,
            hostname=self.hostname,
            orphan_status=cfg.orphan_status,
            sink=self.sink,
            write=self.backend.write,
            barrier=self.barriers.wait,
            received_upto=self.ledger.received_upto,
            note_error=self.backend.note_error,
            endings=self.endings,
            import_spool=self.imports.import_client,
        )
        self.orphans.liveness = self.liveness
        self.control = Control(
            self.runs,
            self.ledger,
            self.supervisor,
            self.endings,
            send=self.server.send,
            barrier=self.barriers.wait,
            write=self.backend.write,
            read=self.backend.read,
            calls=lambda: self.calls,
            barrier_timeout_s=cfg.barrier_timeout_s,
            last_sink_error=lambda: self.counters.last_sink_error,
            slots=RequestSlots(cfg.max_requests_per_client, cfg.max_requests),
            started=self._run_started,
            announced=self.table.announced,
        )
        welcome = Welcome(
            __version__, str(self.staging_dir), self.max_frame, str(self.spool_dir), self.hostname
        )
        self.intake = Intake(
            self.journal,
            self.ledger,
            self.table,
            Limits(cfg.max_records_per_frame, cfg.max_open_runs_per_client, self.counters),
            self.runs,
            self.counters,
            welcome,
            data=DataPath(
                journaled=self._journaled,
                deliver=self.feeder.offer,
                release=self.barriers.release,
                ack_now=lambda: cfg.durability == "os" or self._stopping,
                ack_later=self.journal_sync.ack_later,
                reclaim=self.journal_sync.mark_wake.set,
            ),
            control=self.control,
            watcher=self.orphans,
            status=self.status,
        )

    def _build_status(self) -> StatusReporter:
        cfg = self.cfg
        static = {
            "health_stall_s": cfg.health_stall_s,
            "backend": redact_uri(cfg.backend_uri),
            "artifact_root": cfg.artifact_root,
            "address": cfg.bind_address,
            "durability": cfg.durability,
            "journal_max_bytes": cfg.journal_max_bytes,
        }
        limits = {
            "max_frame_bytes": self.max_frame,
            "max_records_per_frame": cfg.max_records_per_frame,
            "max_open_runs_per_client": cfg.max_open_runs_per_client,
            "max_clients": cfg.max_clients,
            "max_requests_per_client": cfg.max_requests_per_client,
            "max_requests": cfg.max_requests,
        }
        sections = (
            self.sink,
            self.server,
            self.liveness,
            self.runs,
            self.endings,
            self.artifacts,
            self.journal,
            self.system_metrics,
        )
        return StatusReporter(
            static,
            self.counters,
            clients=self.table.status,
            sections=(*sections, self.control.stats, self.control.slots, self.supervisor),
            pipeline=self._pipeline_status,
            limits=limits,
            rejections=self.server.limit_rejections,
            disk_problems=lambda: list(self.disk.active.values()),
            disk_full=lambda: self.journal.disk_full or bool(self.disk),
            head=lambda: {
                "version": __version__,
                "pid": os.getpid(),
                "metrics_address": self.metrics.address if self.metrics is not None else "",
            },
        )

    # ------------------------------------------------------------------ seams between components

    def _journaled(self, client_id: str, seq: int, count: int, pos: Position) -> None:
        """A sequenced frame was appended at ``pos``: record it and accept it (settlement)."""
        self.settlement.journaled(client_id, seq, count, pos, time.monotonic())
        self.journal_sync.sync_wake.set()

    def _submit_artifact(self, origin: Origin, msg: p.LogArtifact, replayed: bool) -> None:
        self._art_pending += 1
        self.artifacts.submit(origin, msg, replayed=replayed)

    def _artifact_done(self, origin: Origin, run_id: str, failure: p.Failure | None) -> None:
        self._art_pending -= 1
        if failure is None:
            self.counters.artifacts += 1
        self.settlement.settle(origin, run_id, None, failure)

    async def _after_mark(self) -> None:
        """After each mark: the daemon's other files that wait to be written."""
        if self.runbook.unsaved:
            await anyio.to_thread.run_sync(self.runbook.save_pending)
        if self.lock.pid_pending:
            await anyio.to_thread.run_sync(self.lock.write_pid)

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
        """The daemon itself (its spool imports, which act for their file's owner: clients.py;
        with CURVE, whoever holds its key pair)."""
        if peer.pid is not None:
            return peer.pid == os.getpid()
        return self.curve is not None and peer.key == self.curve.public.decode()

    # ------------------------------------------------------------------ system metrics

    def _build_system_metrics(self) -> None:
        """The sampler (system_metrics.py): its records enter the data path as a DATA frame of
        a client id of the daemon's own (new at each start), sent by the daemon itself."""
        cfg = self.cfg
        self.own_client_id = f"tracker-daemon.system-metrics.{os.urandom(8).hex()}"
        self._own_peer = Peer(b"tracker-daemon/system-metrics", os.getuid(), os.getpid())
        self.system_metrics = SystemMetrics(
            cfg.system_metrics_interval_s,
            self.hostname,
            targets=lambda wanted: targets_of(
                wanted, self.runbook.open, self.table.clients, self.hostname
            ),
            emit=self._emit_own,
            reader=lambda: ProcessReader(gpu=cfg.system_metrics_gpu == "auto"),
        )

    def _run_started(self, msg: p.StartRun, run_id: str) -> None:
        if msg.system_metrics:
            self.system_metrics.want(run_id)

    def _emit_own(self, records: list[p.Metric | p.Tag]) -> None:
        """Hand the daemon's own records to intake as DATA frames (journaled, then committed)."""
        cid, step = self.own_client_id, MIN_RECORDS_PER_FRAME
        for first in range(0, len(records), step):
            msg = p.Data(
                cid, self.ledger.received_upto(cid) + 1, tuple(records[first : first + step])
            )
            reply = self.intake.handle(self._own_peer, msg, p.encode(msg), time.monotonic())
            if isinstance(reply, p.ErrorReply):  # journal full: this sample is lost (said)
                log.warning(
                    "event=system_metrics_dropped code=%s records=%d", reply.code, len(msg.records)
                )

    # ------------------------------------------------------------------ status

    def _status_line(self) -> str:
        c = self.counters
        return (
            f"clients={len(self.table.clients)} open_runs={len(self.runbook.open)} "
            f"received={c.received} committed={c.committed} failed={c.failed} "
            f"queue={self.batcher.pending} journal_bytes={self.journal.bytes_used}"
        )

    def _pipeline_status(self, now: float) -> dict[str, Any]:
        """The data path's part of the status document."""
        return {
            "queue_depth": self.batcher.pending,
            "spilled": self.feeder.spilling,
            "artifacts_pending": self._art_pending,
            "oldest_uncommitted_age_s": self.settlement.oldest_uncommitted_age(now),
        }

    def status(self) -> dict[str, Any]:
        """The status document (``tracker-daemon status``, Prometheus); see status.py."""
        return self.reporter.document(time.monotonic(), time.time())


def _import_address(state: Path) -> str:
    """--until-idle serves only its own spool imports, on a private socket: in the state dir,
    or in a private temporary dir when that path is too long for AF_UNIX (107 bytes)."""
    sock = state / "import.sock"
    if len(str(sock)) > 100:
        sock = Path(tempfile.mkdtemp(prefix="tracker-daemon-")) / "import.sock"
    return f"ipc://{sock}"
