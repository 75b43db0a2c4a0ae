"""The client's I/O thread: frames records, sends them on one DEALER socket, tracks acks, resends.

Threads: log calls (any thread) only append to a deque; one background thread owns the ZeroMQ socket
(zmq sockets are not thread-safe). The thread drains the deque into DATA frames of at most
``frame_records`` records, every ``flush_interval`` while records keep coming, and sleeps without a
timeout when there is nothing to do. A log call wakes it (one eventfd write) only when it is asleep.

Control requests (start_run, flush, end_run, artifacts, status) ride the same deque, so they reach
the daemon after every record logged before them. Each sequenced message (DATA, artifact) is kept
until the daemon acks its seq; requests are kept until answered. After a reconnect (the daemon
restarted) both are resent; the daemon drops seqs it already holds and answers a repeated
start_run with the run it already created.

Bounded memory: at most ``max_inflight`` frames are unacked; beyond that records wait in the deque,
which holds at most ``max_buffer`` records. When it is full the ``policy`` decides: ``block`` (the
log call waits), ``drop-oldest`` (the oldest record is dropped, counted, warned once) or ``spool``
(default: the oldest part of the queue is written to the on-disk spool, see :mod:`.spool`). At
close, whatever the daemon has not acked or answered is written to the spool too.

Nothing leaves the queue before it is safely elsewhere: every frame comes from one
:class:`~.outbox.FrameMaker`, and an item is gone from the queue only once its frame is sent (and
kept until acked) or written to the spool; a frame that could not be written goes back to the
queue and uses no seq. When the spool cannot be written (a full disk) the records stay in memory
and the write is retried every second; if the queue then reaches twice ``max_buffer`` the oldest
records are dropped, counted, warned about once, and the next ``flush``/``end`` raises
:class:`~.errors.RecordsDropped` with the count. The I/O thread does not die on an error: I/O
errors are logged and retried, anything unexpected is logged and raised by the next barrier.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import zmq

from . import protocol as p
from .address import access_problem, ipc_path
from .curve import apply_curve, curve_from_env, curve_hint
from .errors import DaemonError, DaemonUnavailable
from .outbox import RECORDS_PER_FRAME, FrameMaker, Unit, records_in
from .spool import SUFFIX, Spool, SpoolBusy, default_spool_dir

__all__ = ["POLICIES", "Transport"]

_log = logging.getLogger("tracker_client")

MakeMessage = Callable[[int, int], p.ClientMessage]  # (req, seq) -> message
POLICIES = ("spool", "block", "drop-oldest")
JOURNAL_FULL_RETRY_S = 1.0
SPOOL_RETRY_S = 1.0  # after a failed spool write (a full disk), try again this much later
FAILURE_LIMIT = 100  # unexpected errors in a row after which the I/O thread gives up


class _Call:
    """A control item in the send queue. ``future`` is None for sequenced, unanswered messages."""

    __slots__ = ("future", "make", "sequenced")

    def __init__(self, make: MakeMessage, future: Future[Any] | None, sequenced: bool) -> None:
        self.make = make
        self.future = future
        self.sequenced = sequenced


_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()


class Transport:
    """One connection to the daemon, owned by a background thread started on first use."""

    def __init__(
        self,
        address: str,
        *,
        max_buffer: int = 1_000_000,
        policy: str = "spool",
        frame_records: int = RECORDS_PER_FRAME,
        flush_interval: float = 0.005,
        max_inflight: int = 64,
        max_frame: int = p.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if max_buffer < 1 or frame_records < 1 or max_inflight < 1:
            raise ValueError("max_buffer, frame_records and max_inflight must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.address = address
        self.max_buffer = max_buffer
        self.policy = policy
        self.frame_records = frame_records
        self.flush_ms = max(1, int(flush_interval * 1000))
        self.max_inflight = max_inflight
        self.max_frame = max_frame
        self._curve = curve_from_env()  # TRACKER_CURVE_*: checked here, so connect() fails fast
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent's thread is gone)."""
        self.client_id = uuid.uuid4().hex
        self._queue: deque[Any] = deque()
        self._idle = True
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake_fd = -1
        self._seq = 0
        self._acked_upto = 0  # every seq <= this was acknowledged by a daemon
        self._next_req = 0
        # req -> (future or None, frame, seq sent before it): kept until answered, resent after
        # a reconnect; a barrier's reply also acks everything up to its seq.
        self._pending: dict[int, tuple[Future[Any] | None, bytes, int]] = {}
        self._unacked: OrderedDict[int, bytes] = OrderedDict()
        self._space = threading.Condition()
        self._space_waiters = 0
        self._resend_req = -1
        self._resend_at = 0.0
        self._closing = False
        self._stopped = threading.Event()
        self._spool: Spool | None = None
        self.welcomed = threading.Event()
        self.connected = False  # welcomed on the current connection
        self.staging_dir: str | None = None
        self.spool_dir: Path | None = None
        self.frames_sent = 0
        self.dropped = 0
        self.spooled_frames = 0
        self._maker = FrameMaker(
            self._queue,
            lambda: self.client_id,
            max_records=min(self.frame_records, RECORDS_PER_FRAME),
            max_bytes=self.max_frame,
        )
        self._drop_lock = threading.Lock()
        self._lost = 0  # records dropped because neither daemon nor spool took them; unreported
        self.lost_total = 0
        self.lost_reason = ""
        self.spool_error: str | None = None  # the last spool write error, None once one works
        self._spool_retry_at = 0.0
        self.unspooled = 0  # records not written to the spool at close (lost if the process exits)
        self._failure: BaseException | None = None  # unexpected I/O-thread error, unreported
        self._warned: set[str] = set()

    # ---------------------------------------------------------------- producer side (any thread)

    def put(self, record: list[Any]) -> None:
        """Queue one record in wire form. Waits only with policy ``block`` on a full buffer."""
        q = self._queue
        if len(q) >= self.max_buffer:
            self._overflow()
        q.append(record)
        if self._idle:
            self._wake()

    def _overflow(self) -> None:
        full = len(self._queue) >= 2 * self.max_buffer
        if self.policy == "drop-oldest":
            self._drop_oldest(self.max_buffer)
        elif self.policy == "spool" and full and self.spool_error is not None:
            self._drop_oldest(2 * self.max_buffer)  # no daemon, no spool: memory is the bound
        elif self.policy == "block" or full:
            self._wait_for_space()  # spool: only if the I/O thread cannot keep up at all
        elif self.spool_error is None:  # (else the I/O thread retries the spool on a timer)
            self._wake()  # the I/O thread moves the oldest part of the queue to the spool

    def _drop_oldest(self, bound: int) -> None:
        q = self._queue
        with self._drop_lock:
            n = 0
            while len(q) >= bound:
                try:
                    item = q.popleft()
                except IndexError:
                    break
                if type(item) is not list:  # never drop a control request
                    q.appendleft(item)
                    break
                n += 1
            if not n:
                return
            first = self.dropped == 0
            self.dropped += n
            if self.policy != "drop-oldest":
                first = self.lost_total == 0
                self._lost += n
                self.lost_total += n
                self.lost_reason = self.spool_error or "unknown"
        if not first:
            return
        if self.policy == "drop-oldest":
            _log.warning(
                "tracker-client: buffer full (%d records); dropping the oldest records "
                "(policy drop-oldest); further drops are counted, not logged",
                self.max_buffer,
            )
        else:
            _log.warning(
                "tracker-client: no daemon takes the data and the spool cannot be written (%s); "
                "%d records are held in memory and the oldest beyond that are DROPPED; the next "
                "flush() or end() raises RecordsDropped with the count",
                self.spool_error,
                2 * self.max_buffer,
            )

    def take_problems(self) -> tuple[int, BaseException | None]:
        """(records dropped since the last call because no daemon and no spool took them, an
        unexpected error of the I/O thread since the last call); both are reported once."""
        with self._drop_lock:
            lost, self._lost = self._lost, 0
        failure, self._failure = self._failure, None
        return lost, failure

    def request(self, make: MakeMessage, timeout: float) -> p.DaemonMessage:
        """Send a control request after everything queued so far; wait for its reply."""
        fut = self.request_async(make)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            self.abandon(fut)  # the caller got an error: never send or spool it later
            raise DaemonUnavailable(self._no_answer(timeout)) from None

    def abandon(self, fut: Future[Any]) -> None:
        """Forget a request the caller gave up on (not resent, not spooled)."""
        fut.cancel()  # if still queued, the frame maker skips it
        for req, entry in list(self._pending.items()):
            if entry[0] is fut:
                self._pending.pop(req, None)

    def request_async(self, make: MakeMessage) -> Future[p.DaemonMessage]:
        fut: Future[p.DaemonMessage] = Future()
        self._queue.append(_Call(make, fut, sequenced=False))
        self._wake()
        return fut

    def send_sequenced(self, make: MakeMessage) -> None:
        """Queue a sequenced message (kept until acked, like DATA) without waiting."""
        self._queue.append(_Call(make, None, sequenced=True))
        self._wake()

    def wait_welcome(self, timeout: float) -> None:
        self._ensure_started()
        if not self.welcomed.wait(timeout):
            raise DaemonUnavailable(self._no_answer(timeout))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread; what the daemon has not taken is written to the spool."""
        thread = self._thread
        if thread is None or self._stopped.is_set():
            return
        self._closing = True
        self._wake()
        thread.join(timeout)

    @property
    def buffered(self) -> int:
        return len(self._queue)

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def _no_answer(self, timeout: float) -> str:
        msg = f"no answer from tracker-daemon at {self.address} within {timeout:g} s"
        path = ipc_path(self.address)
        problem = access_problem(path) if path is not None else None
        if problem is not None:
            msg += f"; {problem}"
        elif path is not None and not _exists(path):
            msg += (
                f"; the socket {path} does not exist — is the daemon running? "
                "Start it with `tracker-daemon run` or set TRACKER_DAEMON_ADDRESS"
            )
        return msg + curve_hint(self._curve)

    def _wait_for_space(self) -> None:
        self._ensure_started()
        with self._space:
            self._space_waiters += 1
            try:
                while len(self._queue) >= self.max_buffer and not self._stopped.is_set():
                    self._wake()
                    self._space.wait(0.1)
            finally:
                self._space_waiters -= 1

    def _ensure_started(self) -> None:
        """Start the I/O thread; after ``close`` this reconnects (unacked data is resent)."""
        if self._thread is None or self._stopped.is_set():
            with self._start_lock:
                if self._thread is not None and self._stopped.is_set():
                    self._thread.join()
                    self._thread = None
                    self._stopped.clear()
                    self._closing = False
                if self._thread is None:
                    self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    t = threading.Thread(target=self._run, name="tracker-client-io", daemon=True)
                    t.start()
                    self._thread = t

    def _wake(self) -> None:
        if self._thread is None or self._stopped.is_set():
            self._ensure_started()
        try:
            os.eventfd_write(self._wake_fd, 1)
        except (OSError, ValueError):  # the thread is closing its fd right now
            pass

    # ---------------------------------------------------------------- the I/O thread

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        apply_curve(sock, self._curve)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_fd, zmq.POLLIN)
        try:
            self._reopen_spool()
            sock.connect(self.address)
            self._send_hello(sock, resend=bool(self._unacked or self._pending))
            state = {"connections": 0, "failures": 0}
            while not self._closing:
                try:
                    self._step(sock, monitor, poller, state)
                    state["failures"] = 0
                except Exception as exc:  # a bug: report it at the next barrier, keep going
                    state["failures"] += 1
                    self._failure = exc
                    if state["failures"] == 1:
                        _log.exception("tracker-client: unexpected error in the I/O thread")
                    if state["failures"] >= FAILURE_LIMIT:
                        raise
                    time.sleep(0.05)
        except Exception as exc:  # pragma: no cover - a bug; make it visible instead of hanging
            self._failure = exc
            _log.exception("tracker-client I/O thread failed")
        finally:
            try:
                self._spool_everything()
            except Exception:  # pragma: no cover
                _log.exception("tracker-client: could not write the spool")
            self._stopped.set()
            for fut, _, _ in list(self._pending.values()):
                if fut is not None and not fut.done():
                    fut.set_exception(DaemonUnavailable("the client's connection was closed"))
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()
            fd, self._wake_fd = self._wake_fd, -1
            os.close(fd)
            with self._space:
                self._space.notify_all()

    def _step(
        self,
        sock: zmq.Socket[bytes],
        monitor: zmq.Socket[bytes],
        poller: zmq.Poller,
        state: dict[str, int],
    ) -> None:
        """One turn of the I/O loop: spill, send, wait for an event, handle it."""
        if self.policy == "spool" and len(self._queue) > self.max_buffer:
            self._spill()
        sent = self._drain(sock)
        timeout: int | None
        if sent:
            timeout = self.flush_ms
        else:
            self._idle = True
            if self._closing or (self._queue and self._window_open()):
                self._idle = False
                return
            timeout = None
        for at in (self._resend_at, self._spill_retry_at()):
            if at:
                wait_ms = max(1, int((at - time.monotonic()) * 1000))
                timeout = wait_ms if timeout is None else min(timeout, wait_ms)
        events = dict(poller.poll(timeout))
        self._idle = False
        if self._wake_fd in events:
            try:
                os.eventfd_read(self._wake_fd)
            except BlockingIOError:
                pass
        if monitor in events:
            state["connections"] = self._on_monitor(sock, monitor, state["connections"])
        if sock in events:
            self._receive(sock)
        if self._resend_at and time.monotonic() >= self._resend_at:
            self._resend_at = 0.0
            self._resend(sock, requests=False)  # journal_full: the daemon has them

    def _spill_retry_at(self) -> float:
        """When a failed spill should be tried again (0: no retry pending)."""
        if self.spool_error is None or len(self._queue) <= self.max_buffer:
            return 0.0
        return self._spool_retry_at

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(msg, *args)

    def _on_monitor(
        self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes], connections: int
    ) -> int:
        """Connection events: after a reconnect (the daemon may have restarted) say hello again
        and resend; returns the number of connections so far."""
        from zmq.utils.monitor import recv_monitor_message  # ~20 ms import: keep it off import

        event = recv_monitor_message(monitor)
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self.connected = False
        elif event["event"] == zmq.EVENT_CONNECTED:
            connections += 1
            if connections > 1:
                self._send_hello(sock, resend=True)
        return connections

    def _window_open(self) -> bool:
        return len(self._unacked) < self.max_inflight

    def _send_hello(self, sock: zmq.Socket[bytes], *, resend: bool) -> None:
        req = self._new_req()
        if resend:
            self._resend_req = req
        floor = self._acked_upto  # not our last seq: spooled frames may not be sent yet
        hello = p.Hello(req, self.client_id, os.getpid(), os.uname().nodename, _version(), floor)
        sock.send(p.encode(hello))

    def _new_req(self) -> int:
        self._next_req += 1
        return self._next_req

    def _in_send_order(self, requests: bool = True) -> list[bytes]:
        """Unacked sequenced frames and (optionally) unanswered requests, in the order they were
        first sent: a request framed after seq S went between frames S and S+1. (An offline
        run's start_run must reach the daemon before the records that use its id.)"""
        keyed = [((seq, 0, 0), frame) for seq, frame in self._unacked.items()]
        if requests:
            keyed += [((seq, 1, req), f) for req, (_, f, seq) in list(self._pending.items())]
        return [frame for _, frame in sorted(keyed, key=lambda kv: kv[0])]

    def _resend(self, sock: zmq.Socket[bytes], *, requests: bool = True) -> None:
        """Send again every unacked sequenced message and (after a reconnect, when the daemon
        may have lost them) every unanswered request, in their original order."""
        for frame in self._in_send_order(requests):
            sock.send(frame, copy=False)

    def _drain(self, sock: zmq.Socket[bytes]) -> int:
        """Send what the window allows: the spool first (older), then the queue."""
        sent = 0
        spool = self._spool
        if spool is not None and spool.unread > 0:
            try:
                while self._window_open() and spool.unread > 0:
                    for frame in spool.read(self.max_inflight - len(self._unacked)):
                        sent += self._send_spooled(sock, frame)
                if spool.unread > 0:
                    return sent
                spool.reset_if_done()
            except OSError as exc:
                self._warn_once("spool-read", "tracker-client: reading %s: %s", spool.path, exc)
                return sent
        while self._window_open():
            unit = self._maker.take(self._seq + 1, self._new_req)
            if unit is None:
                break
            try:
                sock.send(unit.frame, copy=False)
            except zmq.ZMQError as exc:  # not expected with SNDHWM 0; keep the frame queued
                self._maker.give_back(unit)
                self._warn_once("send", "tracker-client: sending to the daemon: %s", exc)
                break
            self._keep(unit, in_flight=True)
            self.frames_sent += 1
            sent += 1
        if self._space_waiters:
            with self._space:
                self._space.notify_all()
        return sent

    def _keep(self, unit: Unit, *, in_flight: bool) -> None:
        """A unit is placed (sent, or written to the spool): its seq is used; a sent sequenced
        frame is kept until acked; a request waits for its reply (and is resent after a
        reconnect) wherever it went."""
        if unit.sequenced:
            self._seq = unit.seq
            if in_flight:
                self._unacked[unit.seq] = unit.frame
        else:
            assert unit.call is not None
            self._pending[unit.req] = (unit.call.future, unit.frame, unit.seq)

    def _send_spooled(self, sock: zmq.Socket[bytes], frame: bytes) -> int:
        try:
            msg = p.decode(frame, max_frame=2**31)
        except p.ProtocolError as exc:  # cannot happen with our own files; never stop on one
            self._warn_once("spool-frame", "tracker-client: skipping a spool frame: %s", exc)
            return 0
        if isinstance(msg, p.Data | p.LogArtifact):
            self._unacked[msg.seq] = frame
        elif isinstance(msg, p.Hello):
            return 0  # this connection said hello already
        elif isinstance(msg, p.StartRun | p.EndRun | p.Flush | p.Call | p.StatusRequest):
            if msg.req not in self._pending:  # from an earlier life of this transport
                seq = msg.seq if isinstance(msg, p.Flush | p.EndRun | p.Call) else 0
                self._pending[msg.req] = (None, frame, seq)
        sock.send(frame, copy=False)
        self.frames_sent += 1
        return 1

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = p.decode(frame, max_frame=max(self.max_frame, 64 * 1024 * 1024))
            except p.ProtocolError as exc:
                _log.warning("tracker-client: undecodable reply from daemon: %s", exc)
                continue
            self._handle(sock, msg)

    def _handle(self, sock: zmq.Socket[bytes], msg: p.Message) -> None:
        if isinstance(msg, p.Ack):
            self._acked(msg.seq)
        elif isinstance(msg, p.Welcome):
            self._welcome(sock, msg)
        elif isinstance(msg, p.ErrorReply):
            self._error(msg)
        elif isinstance(msg, p.RunStarted | p.Done | p.StatusReply | p.Result):
            entry = self._pending.pop(msg.req, None)
            if entry is None:
                return
            if isinstance(msg, p.Done | p.Result):  # committed up to its seq implies accepted
                self._acked(entry[2])
            if entry[0] is not None:
                entry[0].set_result(msg)

    def _acked(self, upto: int) -> None:
        self._acked_upto = max(self._acked_upto, min(upto, self._seq))
        unacked = self._unacked
        while unacked:
            seq = next(iter(unacked))
            if seq > upto:
                break
            del unacked[seq]

    def _welcome(self, sock: zmq.Socket[bytes], msg: p.Welcome) -> None:
        self.staging_dir = msg.staging_dir
        if msg.spool_dir and not os.environ.get("TRACKER_SPOOL_DIR") and self._spool is None:
            self.spool_dir = Path(msg.spool_dir)
        self.max_frame = min(self.max_frame, msg.max_frame)
        self._maker.max_bytes = self.max_frame
        self._acked(msg.acked_seq)
        if msg.req == self._resend_req:
            self._resend(sock)
        self.connected = True
        self.welcomed.set()

    def _error(self, msg: p.ErrorReply) -> None:
        entry = self._pending.pop(msg.req, None) if msg.req is not None else None
        if entry is not None and entry[0] is not None:
            entry[0].set_exception(DaemonError(msg.code, msg.message))
        elif msg.code == "journal_full":
            if not self._resend_at:
                _log.warning("tracker-daemon is not accepting data: %s", msg.message)
                self._resend_at = time.monotonic() + JOURNAL_FULL_RETRY_S
        elif entry is None:
            _log.warning("tracker-daemon reported an error: %s: %s", msg.code, msg.message)

    # ---------------------------------------------------------------- spool (I/O thread only)

    def _spool_path(self) -> Path:
        base = self.spool_dir or default_spool_dir()
        return base / f"{self.client_id}{SUFFIX}"

    def _reopen_spool(self) -> None:
        """After a restart of this transport, pick up what an earlier close spooled."""
        path = self._spool_path()
        if self._spool is None and path.exists():
            self._open_spool()

    def _open_spool(self) -> Spool | None:
        if self._spool is None:
            spool = Spool(self._spool_path())
            try:
                spool.open()
            except (SpoolBusy, OSError) as exc:
                _log.error("tracker-client: cannot open the spool %s: %s", spool.path, exc)
                return None
            self._spool = spool
        return self._spool

    def _spill(self) -> None:
        """Queue over its bound: move its oldest part to the spool, in order. If the spool cannot
        be written, everything stays queued and the write is tried again SPOOL_RETRY_S later."""
        if self.spool_error is not None and time.monotonic() < self._spool_retry_at:
            return
        keep = self.max_buffer * 3 // 4
        units: list[Unit] = []
        seq = self._seq
        while len(self._queue) > keep:
            unit = self._maker.take(seq + 1, self._new_req)
            if unit is None:
                break
            units.append(unit)
            if unit.sequenced:
                seq = unit.seq
        if units and self._write_units(units):
            if self.spooled_frames == len(units):
                _log.warning(
                    "tracker-client: the daemon is not keeping up or not reachable; spooling to %s",
                    self._spool_path(),
                )
        with self._space:
            self._space.notify_all()

    def _write_units(self, units: list[Unit]) -> bool:
        """Append ``units`` to the spool (all or nothing) and keep them; on failure give them
        back to the queue, in order, and remember the error."""
        spool = self._open_spool()
        try:
            if spool is None:
                raise OSError(f"cannot open the spool {self._spool_path()}")
            frames = [u.frame for u in units]
            if spool.size == 0:
                frames.insert(0, self._spool_hello())
            spool.append(frames)
        except OSError as exc:
            for unit in reversed(units):
                self._maker.give_back(unit)
            self._spool_failed(exc)
            return False
        for unit in units:
            self._keep(unit, in_flight=False)
        self.spooled_frames += len(units)
        if self.spool_error is not None:
            _log.warning("tracker-client: the spool %s can be written again", spool.path)
            self.spool_error = None
        return True

    def _spool_failed(self, exc: OSError) -> None:
        self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S
        if self.spool_error is None:
            _log.warning(
                "tracker-client: cannot write the spool %s: %s; the records stay in memory and "
                "the write is tried again every %g s",
                self._spool_path(),
                exc,
                SPOOL_RETRY_S,
            )
        self.spool_error = str(exc) or type(exc).__name__

    def _spool_hello(self) -> bytes:
        floor = self._acked_upto  # not our last seq: spooled frames may not be sent yet
        return p.encode(
            p.Hello(0, self.client_id, os.getpid(), os.uname().nodename, _version(), floor)
        )

    def _spool_everything(self) -> None:
        """At close: unacked frames, unanswered requests, the unsent spool and the queue go to
        the spool file, in that order, so nothing the daemon has not taken is lost. What the
        disk cannot take stays in memory (sent if this transport is used again), is counted in
        ``unspooled`` and logged as an error."""
        unsent_spool: list[bytes] = []
        if self._spool is not None and self._spool.unread > 0:
            try:
                unsent_spool = self._spool.read_all()
            except OSError as exc:
                _log.error("tracker-client: cannot read the spool %s: %s", self._spool.path, exc)
                self._spool.close(remove_if_empty=False)  # leave its content as it is
                self._spool = None
                return
        q = self._queue
        nothing = not (self._unacked or q or unsent_spool) and all(
            isinstance(p.decode(f, max_frame=2**31), p.StatusRequest | p.Flush)
            for _, f, _ in list(self._pending.values())
        )
        if nothing:
            if self._spool is not None:
                try:
                    self._spool.rewrite([])
                except OSError:
                    pass
                self._spool.close()
                self._spool = None
            return
        head = [self._spool_hello(), *self._in_send_order()]
        units: list[Unit] = []
        seq = self._seq
        while (unit := self._maker.take(seq + 1, self._new_req)) is not None:
            units.append(unit)
            if unit.sequenced:
                seq = unit.seq
        written, saved = self._write_exit_spool(head, unsent_spool, units)
        for unit in units[:written]:
            self._keep(unit, in_flight=False)
        for unit in reversed(units[written:]):
            self._maker.give_back(unit)
        self.unspooled = sum(len(u.records) for u in units[written:])
        if saved != "all":  # the unacked frames are only in memory
            self.unspooled += sum(records_in(f) for f in self._unacked.values())
        if saved == "none":
            self.unspooled += sum(records_in(f) for f in unsent_spool)
        spool, self._spool = self._spool, None
        size = spool.size if spool is not None else 0
        if spool is not None:
            spool.close(remove_if_empty=False)
        path = self._spool_path()
        if self.unspooled:
            _log.error(
                "tracker-client: %d record(s) not taken by the daemon could not be written to "
                "the spool %s (%s); they are lost if this process exits now",
                self.unspooled,
                path,
                self.spool_error,
            )
        if size > 0:
            _log.warning(
                "tracker-client: frames not taken by the daemon were saved to %s; they are "
                "sent when this process reconnects, or by `tracker-daemon import %s`",
                path,
                path,
            )

    def _write_exit_spool(
        self, head: list[bytes], unsent_spool: list[bytes], units: list[Unit]
    ) -> tuple[int, str]:
        """Write ``head + unsent_spool + units`` as the spool's content, or as much of it as
        the disk takes, in order. Returns (units written, what of head + unsent_spool is in the
        file: "all", "unsent" (not the unacked frames) or "none")."""
        spool = self._open_spool()
        written = 0
        saved = "none"
        try:
            if spool is None:
                raise OSError(f"cannot open the spool {self._spool_path()}")
            try:
                spool.rewrite(head + unsent_spool + [u.frame for u in units])
                return len(units), "all"
            except OSError:  # not all of it fits: keep the order, write what fits
                spool.rewrite(head + unsent_spool)
                saved = "all"
                while written < len(units):
                    batch = units[written : written + 16]
                    spool.append([u.frame for u in batch])
                    written += len(batch)
        except OSError as exc:
            self.spool_error = str(exc) or type(exc).__name__
            if spool is not None and saved == "none":  # at least what the file held before
                try:
                    spool.rewrite([head[0], *unsent_spool])
                    saved = "unsent"
                except OSError:
                    pass
        return written, saved


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return True


def _version() -> str:
    from . import __version__

    return __version__


def _after_fork_in_child() -> None:
    for t in list(_LIVE):
        t._spool = None  # the parent's lock and file are the parent's
        t._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
