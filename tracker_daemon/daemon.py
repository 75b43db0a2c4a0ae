"""Runs the daemon in one anyio task group. Each concern is a component of its own module;
wiring.py builds and connects them, this class starts their loops and stops them
(docs/architecture.md).

    server.serve ─► intake.handle ─► journal.append ─► settlement (ledger) ─► feeder ─► lanes
                      │             └─ ack after the group fsync (journal_sync)   (or, over the
                      │                                                            memory budget,
                      └─ limits; start/end/flush/call ─► control ─► run service    read back later)
    committer: per lane, lanes.pop_ready ─► backend (sink.log_batch in a worker thread, one
               backoff policy) ─► settlement ─► barriers released; journal settled ─► mark
    artifact lane: staged slot checked and copied ─► artifact repository (never blocks metrics)
    clients: each client id bound to the peer that first used it; liveness: one watch per pid;
             orphans: a dead client's spool imported, then its open runs ended once its records
             are committed — except runs whose end_run the daemon holds (endings: journaled on
             receipt, applied once the run's records are committed, restored after a restart)
    status: each component's own status(), assembled by status.StatusReporter

On start the journal is replayed from its mark. SIGTERM/SIGINT: stop receiving, commit what is
buffered (bounded by ``drain_timeout_s``), fsync, write the mark, exit 0; the rest stays in the
journal for the next start. ``--until-idle`` replays, imports the spools it finds (through a
private socket in the state dir: it serves no client), commits, applies every END, and exits.
Every loop is supervised: one failing task never ends the daemon.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from . import __version__
from .config import Config, metrics_host_port, redact_uri
from .intake.endpoints import check_tcp_free
from .ops.hints import mlflow_ui_command
from .ops.progress import Progress, to_log
from .ops.supervise import Tasks
from .store.calls import StoreCalls
from .wiring import Wiring

__all__ = ["Daemon", "run_daemon"]

log = logging.getLogger("tracker_daemon")


class Daemon(Wiring):
    """The wired components (wiring.py), run: prepare, serve, drain, stop."""

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Everything before serving: lock, directories, journal replay, backend, socket."""
        self._refuse_early()
        self.lock.acquire()
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
                "event=dir_unavailable path=%s reason=%r", self.artifacts.staging.private, str(exc)
            )
        self.runbook.load()
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
        self.sink.open()
        if self.sink.writer is not None:
            self.committer.write_entries = self.sink.write_entries
        self.calls = StoreCalls(
            self.sink,
            check_location=self.artifact_roots.check,
            max_records=self.cfg.max_records_per_frame,
            max_frame=self.max_frame,
        )
        self.server.bind()

    def _refuse_early(self) -> None:
        """What would refuse the start later, found before the journal or the store is made: a
        busy address or metrics port (AlreadyRunning), a store that can never open
        (ConfigError). A daemon on this state dir is named by the lock instead."""
        if self.cfg.state_path.is_dir():
            self.lock.acquire()
        self.server.check_free()
        if self.cfg.metrics_address and not self.until_idle:
            host, port = metrics_host_port(self.cfg)
            shown = f"[{host}]" if ":" in host else host
            check_tcp_free(
                host, port, f"metrics_address {shown}:{port}", "stop it or choose another port"
            )
        self.sink.check()

    async def run(self) -> None:
        await anyio.to_thread.run_sync(self.prepare)
        # MLflow and SQLAlchemy leave ~1M long-lived objects; move them out of the collector's
        # sight so full collections (which paused the loop ~340 ms) only scan what we allocate.
        gc.collect()
        gc.freeze()
        cfg = self.cfg
        if self.until_idle:  # it serves no client: say what it does instead
            log.info(
                "event=draining version=%s backend=%s journal_records=%d pid=%d "
                "note=committing_the_journal_and_spools_then_exiting",
                __version__,
                redact_uri(cfg.backend_uri),
                self.counters.replayed,
                os.getpid(),
            )
        else:
            log.info(
                "event=ready version=%s backend=%s artifact_root=%s address=%s pid=%d "
                "durability=%s",
                __version__,
                redact_uri(cfg.backend_uri),
                cfg.artifact_root,
                cfg.bind_address,
                os.getpid(),
                cfg.durability,
            )
            log.info(
                "event=hint view_runs=%r",
                mlflow_ui_command(redact_uri(cfg.backend_uri)),
            )
        try:
            if cfg.metrics_address and not self.until_idle:
                self._start_metrics()
            self.notifier.ready(self._status_line())
            async with anyio.create_task_group() as tg:
                self._start(tg)
        finally:
            self.control.close()
            self.orphans.close()
            self.endings.close()
            with anyio.CancelScope(shield=True):
                if self.metrics is not None:
                    await anyio.to_thread.run_sync(self.metrics.close)
                    self.metrics = None
                await anyio.to_thread.run_sync(self._shutdown_files)
            self.server.close()
            if self.until_idle and not self.address.startswith(f"ipc://{cfg.state_path}"):
                with contextlib.suppress(OSError):  # the private tempdir of its socket
                    Path(self.address[len("ipc://") :]).parent.rmdir()
            self.lock.release()
            log.info(  # replayed: from the journal at start; received: from clients since
                "event=stopped received=%d replayed=%d committed=%d failed=%d left_in_journal=%d",
                self.counters.received,
                self.counters.replayed,
                self.counters.committed,
                self.counters.failed,
                self.journal.outstanding,
            )

    def _start(self, tg: anyio.abc.TaskGroup) -> None:
        """Every loop supervised (a failure is logged and the loop restarts); every request
        task contained: one failing task never ends the daemon."""
        tasks = self._tg = Tasks(tg, self.supervisor)
        self.runs.serving()  # replayed records of unknown offline ids wait from now
        if self.until_idle:
            tasks.loop("drain", self._drain_then_exit, tg)
            tasks.loop("server", self.server.serve, self.intake.handle)
        else:
            tg.start_soon(self._serve_until_signal, tg)
            tasks.loop("spool_import", self.imports.run)
        tasks.loop("control", self.control.run)
        tasks.loop("endings", self.endings.run)
        for lane in range(len(self.batcher)):
            tasks.loop(f"sink_lane_{lane}", self.committer.run_lane, lane)
        tasks.loop("artifacts", self.artifacts.run)
        tasks.loop("feeder", self.feeder.run)
        tasks.loop("group_fsync", self.journal_sync.sync_loop)
        tasks.loop("mark", self.journal_sync.mark_loop)
        tasks.loop("notify", self.notifier.keepalive, self._status_line)
        tasks.loop("rate", self.counters.sample_rates)
        tasks.loop("liveness", self.liveness.run)
        tasks.loop("orphans", self.orphans.run)
        tasks.loop("system_metrics", self.system_metrics.run)
        self.feeder.wake.set()
        self.endings.restore()  # before orphans: a run with a held END is no orphan
        self.orphans.watch_restored_owners()

    def _start_metrics(self) -> None:
        """Serve Prometheus metrics; each scrape builds the status document on this loop."""
        from .ops.metrics import MetricsServer

        token = anyio.lowlevel.current_token()

        def get_status() -> dict[str, Any]:
            return anyio.from_thread.run_sync(self.status, token=token)

        host, port = metrics_host_port(self.cfg)
        self.metrics = MetricsServer(host, port, get_status)
        log.info("event=metrics_listening address=%s path=/metrics", self.metrics.address)

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
                    self.supervisor.supervised, "server", self.server.serve, self.intake.handle
                )
                async for signum in signals:
                    log.info("event=stopping signal=%s", signal.Signals(signum).name)
                    serving.cancel_scope.cancel()
                    break
        self._stopping = True
        self.notifier.stopping(f"draining {self.batcher.pending} record(s)")
        self.imports.stop.set()
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
                shown = to_log("drain", "records", self.counters.replayed, log)
                draining.start_soon(self._show_progress, shown)
                await self.imports.scan()  # the spools found: their records and their ENDs
                await self._drain(float("inf"))
                while self._ending():
                    self.endings.nothing_more()  # nothing else will arrive
                    await self.committer.idle.wait(0.2)
                await self._drain(float("inf"))
                c = self.counters
                shown.finish(c.committed + c.failed, c.replayed + c.received)
                draining.cancel_scope.cancel()
        log.info("event=idle note=journal_drained")
        tg.cancel_scope.cancel()

    async def _show_progress(self, shown: Progress) -> None:
        """--until-idle: records settled (committed or failed) of those the journal held and the
        spools brought."""
        c = self.counters
        while True:  # the total grows by what spool imports bring
            shown.update(c.committed + c.failed, c.replayed + c.received)
            await anyio.sleep(0.2)

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

    def _ending(self) -> bool:
        """--until-idle: ENDs still to apply, exited clients still being judged, imports."""
        return bool(self.endings.pending or self.orphans.judging or self.imports.active)


def run_daemon(cfg: Config, *, until_idle: bool = False) -> None:
    """Run until SIGTERM/SIGINT (or, with ``until_idle``, until the journal is committed).
    Raises AlreadyRunning / SinkError before serving."""
    anyio.run(Daemon(cfg, until_idle=until_idle).run, backend="asyncio")
