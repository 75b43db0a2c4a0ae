"""The client's I/O thread: frames records, sends them on one DEALER socket, tracks acks, resends.

Threads: log calls (any thread) only append to a deque; one background thread owns the ZeroMQ socket
(zmq sockets are not thread-safe). The thread drains the deque into DATA frames of at most
``frame_records`` records, every ``flush_interval`` while records keep coming, and sleeps without a
timeout when there is nothing to do. A log call wakes it (one eventfd write) only when it is asleep.

Control requests (start_run, flush, end_run, artifacts, status) ride the same deque, so they reach
the daemon after every record logged before them. Each sequenced message (DATA, artifact) is kept
until the daemon acks its seq, and resent after a reconnect; the daemon drops seqs it already holds.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as p
from .address import ipc_path
from .errors import DaemonError, DaemonUnavailable

__all__ = ["Transport"]

_log = logging.getLogger("tracker_client")

MakeMessage = Callable[[int, int], p.ClientMessage]  # (req, seq) -> message


class _Call:
    """A control item in the send queue. ``future`` is None for sequenced, unanswered messages."""

    __slots__ = ("future", "make", "sequenced")

    def __init__(self, make: MakeMessage, future: Future[Any] | None, sequenced: bool) -> None:
        self.make = make
        self.future = future
        self.sequenced = sequenced


class _Stop:
    __slots__ = ()


_STOP = _Stop()
_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()


class Transport:
    """One connection to the daemon, owned by a background thread started on first use."""

    def __init__(
        self,
        address: str,
        *,
        max_buffer: int = 1_000_000,
        frame_records: int = 1000,
        flush_interval: float = 0.005,
        max_inflight: int = 64,
        max_frame: int = p.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if max_buffer < 1 or frame_records < 1 or max_inflight < 1:
            raise ValueError("max_buffer, frame_records and max_inflight must be >= 1")
        self.address = address
        self.max_buffer = max_buffer
        self.frame_records = frame_records
        self.flush_ms = max(1, int(flush_interval * 1000))
        self.max_inflight = max_inflight
        self.max_frame = max_frame
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
        self._next_req = 0
        self._pending: dict[int, Future[Any]] = {}
        self._unacked: OrderedDict[int, bytes] = OrderedDict()
        self._space = threading.Condition()
        self._space_waiters = 0
        self._resend_req = -1
        self._stopped = threading.Event()
        self.welcomed = threading.Event()
        self.staging_dir: str | None = None
        self.frames_sent = 0

    # ---------------------------------------------------------------- producer side (any thread)

    def put(self, record: list[Any]) -> None:
        """Queue one record in wire form. Never waits unless the buffer is full."""
        q = self._queue
        if len(q) >= self.max_buffer:
            self._wait_for_space()
        q.append(record)
        if self._idle:
            self._wake()

    def request(self, make: MakeMessage, timeout: float) -> p.DaemonMessage:
        """Send a control request after everything queued so far; wait for its reply."""
        fut: Future[p.DaemonMessage] = Future()
        self._queue.append(_Call(make, fut, sequenced=False))
        self._wake()
        try:
            return fut.result(timeout)
        except FutureTimeout:
            raise DaemonUnavailable(self._no_answer(timeout)) from None

    def send_sequenced(self, make: MakeMessage) -> None:
        """Queue a sequenced message (kept until acked, like DATA) without waiting."""
        self._queue.append(_Call(make, None, sequenced=True))
        self._wake()

    def wait_welcome(self, timeout: float) -> None:
        self._ensure_started()
        if not self.welcomed.wait(timeout):
            raise DaemonUnavailable(self._no_answer(timeout))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread after it has sent what is queued (waits at most ``timeout``)."""
        thread = self._thread
        if thread is None or self._stopped.is_set():
            return
        self._queue.append(_STOP)
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
        if path is not None and not path.exists():
            msg += (
                f"; the socket {path} does not exist — is the daemon running? "
                "Start it with `tracker-daemon run` or set TRACKER_DAEMON_ADDRESS"
            )
        return msg

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
                    if self._queue and self._queue[0] is _STOP:
                        self._queue.popleft()
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
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_fd, zmq.POLLIN)
        try:
            sock.connect(self.address)
            self._send_hello(sock, resend=bool(self._unacked))
            connections = 0
            while True:
                sent = self._drain(sock)
                if sent is None:
                    break
                if sent:
                    timeout: int | None = self.flush_ms
                else:
                    self._idle = True
                    if self._queue and len(self._unacked) < self.max_inflight:
                        self._idle = False
                        continue
                    timeout = None
                events = dict(poller.poll(timeout))
                self._idle = False
                if self._wake_fd in events:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
                if monitor in events:
                    event = recv_monitor_message(monitor)
                    if event["event"] == zmq.EVENT_CONNECTED:
                        connections += 1
                        if connections > 1:  # reconnected: the daemon may have restarted
                            self._send_hello(sock, resend=True)
                if sock in events:
                    self._receive(sock)
        except Exception:  # pragma: no cover - a bug; make it visible instead of hanging callers
            _log.exception("tracker-client I/O thread failed")
        finally:
            self._stopped.set()
            for fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(DaemonUnavailable("the client's I/O thread stopped"))
            self._pending.clear()
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()
            fd, self._wake_fd = self._wake_fd, -1
            os.close(fd)
            with self._space:
                self._space.notify_all()

    def _send_hello(self, sock: zmq.Socket[bytes], *, resend: bool) -> None:
        req = self._new_req()
        if resend:
            self._resend_req = req
        floor = next(iter(self._unacked)) - 1 if self._unacked else self._seq
        hello = p.Hello(req, self.client_id, os.getpid(), os.uname().nodename, _version(), floor)
        sock.send(p.encode(hello))

    def _new_req(self) -> int:
        self._next_req += 1
        return self._next_req

    def _drain(self, sock: zmq.Socket[bytes]) -> int | None:
        """Send what the window allows. Returns the number of frames sent, None on stop."""
        q = self._queue
        recs: list[list[Any]] = []
        sent = 0
        while q and len(self._unacked) < self.max_inflight:
            item = q.popleft()
            if type(item) is list:
                recs.append(item)
                if len(recs) >= self.frame_records:
                    sent += self._send_data(sock, recs)
                    recs = []
                continue
            if recs:
                sent += self._send_data(sock, recs)
                recs = []
            if item is _STOP:
                return None
            self._send_call(sock, item)
            sent += 1
        if recs:
            sent += self._send_data(sock, recs)
        if self._space_waiters:
            with self._space:
                self._space.notify_all()
        return sent

    def _send_data(self, sock: zmq.Socket[bytes], recs: list[list[Any]]) -> int:
        frame = p.encode_data(self.client_id, self._seq + 1, recs)
        if len(frame) > self.max_frame and len(recs) > 1:
            half = len(recs) // 2
            return self._send_data(sock, recs[:half]) + self._send_data(sock, recs[half:])
        self._seq += 1
        self._unacked[self._seq] = frame
        sock.send(frame, copy=False)
        self.frames_sent += 1
        return 1

    def _send_call(self, sock: zmq.Socket[bytes], call: _Call) -> None:
        if call.sequenced:
            self._seq += 1
            frame = p.encode(call.make(0, self._seq))
            self._unacked[self._seq] = frame
        else:
            req = self._new_req()
            assert call.future is not None
            if not call.future.set_running_or_notify_cancel():
                return
            self._pending[req] = call.future
            frame = p.encode(call.make(req, self._seq))
        sock.send(frame)

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
            unacked = self._unacked
            while unacked:
                seq = next(iter(unacked))
                if seq > msg.seq:
                    break
                del unacked[seq]
        elif isinstance(msg, p.Welcome):
            self.staging_dir = msg.staging_dir
            self.max_frame = min(self.max_frame, msg.max_frame)
            self._handle(sock, p.Ack(msg.acked_seq))
            if msg.req == self._resend_req:
                for frame in self._unacked.values():
                    sock.send(frame, copy=False)
            self.welcomed.set()
        elif isinstance(msg, p.ErrorReply):
            fut = self._pending.pop(msg.req, None) if msg.req is not None else None
            if fut is not None:
                fut.set_exception(DaemonError(msg.code, msg.message))
            else:
                _log.warning("tracker-daemon reported an error: %s: %s", msg.code, msg.message)
        elif isinstance(msg, p.RunStarted | p.Done | p.StatusReply):
            fut = self._pending.pop(msg.req, None)
            if fut is not None:
                fut.set_result(msg)


def _version() -> str:
    from . import __version__

    return __version__


def _after_fork_in_child() -> None:
    for t in list(_LIVE):
        t._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
