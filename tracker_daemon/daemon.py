"""Wires the daemon together in one anyio task group.

    server.serve ──► dispatch ──► ledger.accept ─► batcher.add ─► ack
                                       │
    sink loop: batcher.pop_ready ─► sink.log_batch (worker thread, one writer for SQLite)
               ─► ledger.settle ─► barriers (flush / end_run) released
    artifact lane: staged files ─► artifact repository (own thread; never blocks metrics)
    control: start_run / end_run ─► sink (same writer limiter, so SQLite sees one writer)

SIGTERM/SIGINT: stop receiving, commit what is buffered (bounded by ``drain_timeout_s``), exit 0.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tracker_client import protocol as p
from tracker_client.validation import check_artifact_path, record_problem

from . import __version__
from .batcher import Batch, Batcher, Origin
from .config import Config
from .errors import AlreadyRunning, PermanentSinkError, RetryableSinkError, SinkError
from .ledger import Ledger
from .server import Server
from .sink import RunHandle, Sink
from .status import Counters

__all__ = ["Daemon", "run_daemon"]

log = logging.getLogger("tracker_daemon")
T = TypeVar("T")

DRAIN_TIMEOUT_S = 30.0


@dataclass(slots=True)
class ClientInfo:
    client_id: str
    pid: int = 0
    host: str = ""
    version: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    runs: set[str] = field(default_factory=set)


class Wakeup:
    """A resettable event: ``set`` from anywhere in the loop, ``wait`` with a timeout."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event = anyio.Event()


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.state_dir = cfg.state_path
        self.staging_dir = self.state_dir / "staging"
        self.sink = Sink(cfg.backend_uri, cfg.artifact_root)
        self.server = Server(cfg.bind_address, cfg.max_frame_bytes)
        self.batcher = Batcher(max_age=cfg.batch_max_age_ms / 1000)
        self.ledger = Ledger()
        self.counters = Counters()
        self.clients: dict[str, ClientInfo] = {}
        self.runs: dict[str, RunHandle] = {}
        self.open_runs: set[str] = set()
        self._experiments: dict[str, str] = {}
        self._waiters: dict[str, list[tuple[int, anyio.Event]]] = {}
        self._sink_wake = Wakeup()
        self._idle = Wakeup()
        self._committing = 0
        self._writer = anyio.CapacityLimiter(cfg.writers)
        art_send, art_recv = anyio.create_memory_object_stream[tuple[Origin, p.LogArtifact]](
            max_buffer_size=10_000
        )
        self._art_send: MemoryObjectSendStream[tuple[Origin, p.LogArtifact]] = art_send
        self._art_recv: MemoryObjectReceiveStream[tuple[Origin, p.LogArtifact]] = art_recv
        self._art_pending = 0
        self._lock_fd: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None

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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def prepare(self) -> None:
        """Everything before serving: lock, directories, backend store, socket."""
        self.acquire_lock()
        self.staging_dir.mkdir(mode=0o2770, exist_ok=True)
        self.sink.open()
        self.server.bind()

    async def run(self) -> None:
        await anyio.to_thread.run_sync(self.prepare)
        log.info(
            "event=ready version=%s backend=%s artifact_root=%s address=%s pid=%d",
            __version__, self.cfg.backend_uri, self.cfg.artifact_root, self.cfg.bind_address,
            os.getpid(),
        )
        log.info("view the runs with: mlflow ui --backend-store-uri %s", self.cfg.backend_uri)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._serve_until_signal, tg)
                tg.start_soon(self._sink_loop)
                tg.start_soon(self._artifact_loop)
        finally:
            self.server.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            log.info(
                "event=stopped received=%d committed=%d failed=%d",
                self.counters.received, self.counters.committed, self.counters.failed,
            )

    async def _serve_until_signal(self, tg: anyio.abc.TaskGroup) -> None:
        import signal

        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as serving:
                serving.start_soon(self.server.serve, self.dispatch)
                async for signum in signals:
                    log.info("event=stopping signal=%s", signal.Signals(signum).name)
                    serving.cancel_scope.cancel()
                    break
        await self._drain(DRAIN_TIMEOUT_S)
        tg.cancel_scope.cancel()

    async def _drain(self, timeout: float) -> None:
        """Commit everything buffered; give up after ``timeout`` (what is left is logged)."""
        self.batcher.expedite(None)
        self._sink_wake.set()
        with anyio.move_on_after(timeout):
            while self.batcher.pending or self._committing or self._art_pending:
                await self._idle.wait(0.5)
        if self.batcher.pending or self._art_pending:
            log.error(
                "event=drain_incomplete pending_records=%d pending_artifacts=%d",
                self.batcher.pending, self._art_pending,
            )

    # ------------------------------------------------------------------ dispatch (event loop)

    def dispatch(self, identity: bytes, msg: p.ClientMessage) -> Any:
        if type(msg) is p.Data:
            return self._on_data(identity, msg)
        if isinstance(msg, p.Hello):
            return self._on_hello(identity, msg)
        if isinstance(msg, p.LogArtifact):
            return self._on_artifact(identity, msg)
        assert self._tg is not None
        if isinstance(msg, p.StartRun):
            self._tg.start_soon(self._on_start_run, identity, msg)
        elif isinstance(msg, p.EndRun):
            self._tg.start_soon(self._on_end_run, identity, msg)
        elif isinstance(msg, p.Flush):
            self._tg.start_soon(self._on_flush, identity, msg)
        elif isinstance(msg, p.StatusRequest):
            return self.server.send(identity, p.StatusReply(msg.req, self.status()))
        return None

    def _client(self, client_id: str) -> ClientInfo:
        info = self.clients.get(client_id)
        if info is None:
            info = self.clients[client_id] = ClientInfo(client_id)
        info.last_seen = time.monotonic()
        return info

    def _on_hello(self, identity: bytes, msg: p.Hello) -> Any:
        info = self._client(msg.client_id)
        info.pid, info.host, info.version = msg.pid, msg.host, msg.version
        self.ledger.floor(msg.client_id, msg.acked_floor)
        self._release(msg.client_id)
        log.debug("event=hello client=%s pid=%d host=%s", msg.client_id, msg.pid, msg.host)
        welcome = p.Welcome(
            msg.req,
            __version__,
            self.ledger.received_upto(msg.client_id),
            str(self.staging_dir),
            self.cfg.max_frame_bytes,
        )
        return self.server.send(identity, welcome)

    def _on_data(self, identity: bytes, msg: p.Data) -> Any:
        cid = msg.client_id
        info = self._client(cid)
        self.counters.frames += 1
        if self.ledger.accept(cid, msg.seq, len(msg.records)):
            origin = Origin(cid, msg.seq)
            self.counters.received += len(msg.records)
            good: list[p.Record] = []
            for rec in msg.records:
                problem = record_problem(rec)
                if problem is None:
                    good.append(rec)
                else:
                    self._settle(origin, rec, p.Failure(rec, "INVALID_PARAMETER_VALUE", problem))
            if good:
                info.runs.add(good[0].run_id)
                for settled in self.batcher.add(origin, good, time.monotonic()):
                    self._settle(settled.origin, settled.record, settled.failure)
                self._sink_wake.set()
        else:
            self.counters.duplicate_frames += 1
        return self.server.send(identity, p.Ack(self.ledger.received_upto(cid)))

    def _on_artifact(self, identity: bytes, msg: p.LogArtifact) -> Any:
        cid = msg.client_id
        self._client(cid)
        if self.ledger.accept(cid, msg.seq, 1):
            origin = Origin(cid, msg.seq)
            self.counters.received += 1
            problem = self._staged_problem(msg)
            if problem is not None:
                self._settle(origin, None, p.Failure(None, "INVALID_PARAMETER_VALUE", problem))
            else:
                self._art_pending += 1
                self._art_send.send_nowait((origin, msg))
        return self.server.send(identity, p.Ack(self.ledger.received_upto(cid)))

    def _staged_problem(self, msg: p.LogArtifact) -> str | None:
        try:
            check_artifact_path(msg.artifact_path)
        except (TypeError, ValueError) as exc:
            return str(exc)
        staged = Path(msg.staged_path)
        root = self.staging_dir.resolve()
        try:
            real = staged.resolve(strict=True)
        except OSError:
            return f"artifact: staged file {msg.staged_path} does not exist"
        if staged.is_symlink() or root not in real.parents:
            return f"artifact: staged path {msg.staged_path} is not inside the staging dir {root}"
        return None

    # ------------------------------------------------------------------ settling and barriers

    def _settle(self, origin: Origin, record: p.Record | None, failure: p.Failure | None) -> None:
        if failure is not None:
            self.counters.failed += 1
            run_id = record.run_id if record is not None else None
            self.ledger.fail(origin.client_id, run_id, failure)
            log.warning(
                "event=record_failed client=%s run=%s code=%s reason=%r",
                origin.client_id, run_id, failure.code, failure.message[:300],
            )
        else:
            self.counters.committed += 1
        if self.ledger.settle(origin.client_id, origin.seq):
            self._release(origin.client_id)

    def _settle_batch(self, batch: Batch, error: SinkError | None) -> None:
        if error is None:
            self.counters.committed += len(batch.items)
            per_origin = Counter(origin for _, origin in batch.items)
            moved = {o.client_id for o, n in per_origin.items() if self.ledger.settle(o.client_id, o.seq, n)}
            for cid in moved:
                self._release(cid)
            return
        for record, origin in batch.items:
            if isinstance(record, p.Param):
                self.batcher.param_failed(record.run_id, record.key)
            self._settle(origin, record, p.Failure(record, error.code, error.message))

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

    async def _barrier(self, client_id: str, seq: int) -> bool:
        """Wait until every sequenced message of the client up to ``seq`` is done."""
        if self.ledger.committed_upto(client_id) >= seq:
            return True
        self.batcher.expedite(None)
        self._sink_wake.set()
        event = anyio.Event()
        self._waiters.setdefault(client_id, []).append((seq, event))
        with anyio.move_on_after(self.cfg.barrier_timeout_s):
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
                return await anyio.to_thread.run_sync(
                    functools.partial(fn, *args), limiter=self._writer
                )
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
        log.warning("event=sink_error code=%s retryable=%s reason=%r", exc.code,
                    isinstance(exc, RetryableSinkError), exc.message[:300])

    async def _sink_loop(self) -> None:
        while True:
            batch = self.batcher.pop_ready(time.monotonic())
            if batch is None:
                if not self._committing:
                    self._idle.set()
                deadline = self.batcher.next_deadline()
                await self._sink_wake.wait(
                    None if deadline is None else max(0.0, deadline - time.monotonic())
                )
                continue
            self._committing += 1
            try:
                await self._commit(batch)
            finally:
                self._committing -= 1

    async def _commit(self, batch: Batch) -> None:
        started = time.monotonic()
        try:
            await self._write(
                self.sink.log_batch, batch.run_id, batch.metrics, batch.params, batch.tags
            )
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

    async def _reply_error(self, identity: bytes, req: int, exc: SinkError) -> None:
        await self.server.send(identity, p.ErrorReply(req, exc.code, exc.message))

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
        try:
            if msg.run_id is not None:
                handle = await self._write(self.sink.resume_run, msg.run_id, retry_for=5.0)
            else:
                exp_id = await self._experiment_id(msg)
                start = msg.start_time or time.time_ns() // 1_000_000
                handle = await self._write(
                    self.sink.create_run, exp_id, start, msg.tags, msg.run_name,
                    msg.parent_run_id, retry_for=5.0,
                )
        except SinkError as exc:
            await self._reply_error(identity, msg.req, exc)
            return
        self.runs[handle.run_id] = handle
        self.open_runs.add(handle.run_id)
        if handle.params:
            self.batcher.seed_params(handle.run_id, handle.params)
        log.info("event=run_started run=%s experiment=%s", handle.run_id, handle.experiment_id)
        await self.server.send(
            identity,
            p.RunStarted(msg.req, handle.run_id, handle.experiment_id, handle.artifact_uri,
                         handle.run_name),
        )

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
            await self._write(self.sink.end_run, msg.run_id, msg.status, msg.end_time, retry_for=30.0)
        except SinkError as exc:
            failures.append(p.Failure(None, exc.code, f"ending run {msg.run_id}: {exc.message}"))
        self.open_runs.discard(msg.run_id)
        log.info("event=run_ended run=%s status=%s", msg.run_id, msg.status)
        await self.server.send(identity, p.Done(msg.req, tuple(failures)))

    def _late(self, seq: int) -> str:
        return (
            f"records up to seq {seq} were not committed within {self.cfg.barrier_timeout_s:g} s; "
            f"last sink error: {self.counters.last_sink_error or 'none'}"
        )

    # ------------------------------------------------------------------ artifacts

    async def _artifact_loop(self) -> None:
        async with self._art_recv:
            async for origin, msg in self._art_recv:
                failure = None
                try:
                    uri = await self._artifact_uri(msg.run_id)
                    await self._upload(uri, msg)
                    self.counters.artifacts += 1
                except SinkError as exc:
                    failure = p.Failure(None, exc.code, f"artifact {msg.staged_path}: {exc.message}")
                finally:
                    Sink.discard_staged(msg.staged_path)
                    self._art_pending -= 1
                self._settle(origin, None, failure)

    async def _artifact_uri(self, run_id: str) -> str:
        handle = self.runs.get(run_id)
        if handle is None:  # a run started elsewhere: read it (reads need no writer slot)
            handle = await anyio.to_thread.run_sync(self.sink.run_info, run_id)
            self.runs[run_id] = handle
        return handle.artifact_uri

    async def _upload(self, uri: str, msg: p.LogArtifact) -> None:
        backoff = 0.1
        while True:
            try:
                await anyio.to_thread.run_sync(
                    self.sink.upload_artifact, uri, msg.staged_path, msg.artifact_path
                )
                return
            except RetryableSinkError as exc:
                self._note_error(exc)
                await anyio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, self.cfg.retry_max_backoff_s)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        c = self.counters
        now = time.monotonic()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - c.started_at, 3),
            "backend": self.cfg.backend_uri,
            "artifact_root": self.cfg.artifact_root,
            "address": self.cfg.bind_address,
            "clients": [
                {
                    "client_id": i.client_id,
                    "pid": i.pid,
                    "host": i.host,
                    "runs": len(i.runs),
                    "last_seen_s": round(now - i.last_seen, 3),
                }
                for i in self.clients.values()
            ],
            "open_runs": len(self.open_runs),
            "frames": c.frames,
            "duplicate_frames": c.duplicate_frames,
            "rejected_frames": self.server.rejected,
            "last_rejection": self.server.last_rejection,
            "received": c.received,
            "committed": c.committed,
            "failed": c.failed,
            "queue_depth": self.batcher.pending,
            "artifacts_pending": self._art_pending,
            "artifacts": c.artifacts,
            "batches": c.batches,
            "sink_retries": c.sink_retries,
            "sink_latency_ms": c.sink_latency_ms(),
            "last_sink_error": c.last_sink_error,
        }


def run_daemon(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT. Raises AlreadyRunning / SinkError before serving."""
    anyio.run(Daemon(cfg).run, backend="asyncio")
