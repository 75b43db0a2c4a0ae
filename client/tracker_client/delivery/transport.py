"""The client's I/O thread: moves bytes between one DEALER socket, the session, the outbox and
the spool, and owns nothing else: the protocol state is :class:`~.session.Session` (seqs, acks,
unanswered requests, resends), the queue and its policies :class:`~.outbox.Outbox`, the spool
file :class:`~.spill.Spiller`.

Log calls (any thread) only append to the outbox; one background thread owns the ZeroMQ socket
(zmq sockets are not thread-safe). It drains the queue into frames (DATA frames of at most
``frame_records`` records), every ``flush_interval`` while records keep coming, and sleeps
without a timeout when there is nothing to do; a log call wakes it (one eventfd write) only when
it is asleep. Control requests (start_run, flush, end_run, artifacts, status) ride the same
queue, so they reach the daemon after every record logged before them. At most ``max_inflight``
frames are unacked. After a reconnect (the daemon restarted) the session's unacked frames and
unanswered requests are resent; the daemon drops seqs it already holds and answers a repeated
start_run with the run it already created. At close, whatever the daemon has not acked or
answered is written to the spool.

An item leaves the queue only once its frame is sent (and kept until acked) or written to the
spool; a frame that could not be placed goes back and uses no seq. The thread does not die on an
error: I/O errors are logged and retried, anything unexpected is logged and raised by the next
barrier.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import zmq

from .. import protocol as p
from ..errors import DaemonError, DaemonUnavailable
from ..wire.address import no_answer
from ..wire.curve import apply_curve, curve_from_env, curve_hint
from .outbox import POLICIES, RECORDS_PER_FRAME, Call, FrameMaker, MakeMessage, Outbox
from .session import (
    Accepted,
    Answered,
    FrameReplaced,
    JournalFull,
    Refused,
    Rehello,
    Session,
    Welcomed,
)
from .spill import Spiller

__all__ = ["POLICIES", "Request", "Transport"]

_log = logging.getLogger("tracker_client")

FAILURE_LIMIT = 100  # unexpected errors in a row after which the I/O thread gives up


_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()


class Request(Future[p.DaemonMessage]):
    """A request's future; ``accepted`` is set when the daemon answers ``accepted`` (it holds
    an ``end_run`` durably: the process may exit, the daemon applies it)."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted = threading.Event()


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
        self.address = address
        self.max_buffer = max_buffer
        self.policy = policy
        self.frame_records = frame_records
        self.flush_ms = max(1, int(flush_interval * 1000))
        self.max_inflight = max_inflight
        self.max_frame = max_frame
        self._curve = curve_from_env()  # TRACKER_CURVE_*: checked here, so connect() fails fast
        self.outbox = Outbox(
            max_buffer=max_buffer,
            policy=policy,
            maker=self._frame_maker,
            wake=self._wake,
            stopped=self._is_stopped,
        )
        # The log calls' path: the outbox's own method, no indirection. The outbox lives as long
        # as the transport (a forked child empties it), so a Run may keep this bound method.
        self.put = self.outbox.put
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent's thread is gone)."""
        self.client_id = uuid.uuid4().hex
        self.session = Session(
            self.client_id, pid=os.getpid(), host=os.uname().nodename, version=_version()
        )
        self.outbox.reset()
        self.spiller = Spiller(self.session, self.outbox)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake_fd = -1
        self._closing = False
        self._stopped = threading.Event()
        self.welcomed = threading.Event()
        self.staging_dir: str | None = None
        self._failure: BaseException | None = None  # unexpected I/O-thread error, unreported
        self._warned: set[str] = set()

    def _frame_maker(self, queue: deque[Any]) -> FrameMaker:
        return FrameMaker(
            queue,
            lambda: self.client_id,
            max_records=min(self.frame_records, RECORDS_PER_FRAME),
            max_bytes=self.max_frame,
        )

    # ---------------------------------------------------------------- producer side (any thread)

    def take_problems(self) -> tuple[int, BaseException | None]:
        """(records dropped since the last call because no daemon and no spool took them, an
        unexpected error of the I/O thread since the last call); both are reported once."""
        lost = self.outbox.take_lost()
        failure, self._failure = self._failure, None
        return lost, failure

    def request(self, make: MakeMessage, timeout: float) -> p.DaemonMessage:
        """Send a control request after everything queued so far; wait for its reply."""
        fut = self.request_async(make)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            self.abandon(fut)  # the caller got an error: never send or spool it later
            raise DaemonUnavailable(self.no_answer(timeout)) from None

    def abandon(self, fut: Future[Any]) -> None:
        """Forget a request the caller gave up on (not resent, not spooled)."""
        fut.cancel()  # if still queued, the frame maker skips it
        self.session.abandon(fut)

    def request_async(self, make: MakeMessage) -> Request:
        fut = Request()
        self.outbox.put_control(Call(make, fut, sequenced=False))
        return fut

    def put_unit(self, records: list[list[Any]]) -> None:
        """Queue records (wire form, one run) that commit all-or-nothing, as one MLflow
        ``log_batch`` call: one ``data.units`` entry for a daemon that announced units, else
        (an older daemon) records like any others."""
        self.outbox.put_unit(records)

    def send_sequenced(self, make: MakeMessage) -> None:
        """Queue a sequenced message (kept until acked, like DATA) without waiting."""
        self.outbox.put_control(Call(make, None, sequenced=True))

    def wait_welcome(self, timeout: float) -> None:
        self._ensure_started()
        if not self.welcomed.wait(timeout):
            raise DaemonUnavailable(self.no_answer(timeout))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread; what the daemon has not taken is written to the spool."""
        thread = self._thread
        if thread is None or self._stopped.is_set():
            return
        self._closing = True
        self._wake()
        thread.join(timeout)

    def no_answer(self, timeout: float) -> str:
        """Why no daemon answered within ``timeout``, with the likely cause when one is known."""
        return no_answer(self.address, timeout) + curve_hint(self._curve)

    def _is_stopped(self) -> bool:
        return self._stopped.is_set()

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
        session = self.session
        try:
            self.spiller.reopen()
            sock.connect(self.address)
            sock.send(session.hello(resend=bool(session.unacked or session.pending)))
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
                self.spiller.spool_everything()
            except Exception:  # pragma: no cover
                _log.exception("tracker-client: could not write the spool")
            self._stopped.set()
            for fut in session.waiting():
                if not fut.done():
                    fut.set_exception(DaemonUnavailable("the client's connection was closed"))
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()
            fd, self._wake_fd = self._wake_fd, -1
            os.close(fd)
            self.outbox.space_freed()

    def _step(
        self,
        sock: zmq.Socket[bytes],
        monitor: zmq.Socket[bytes],
        poller: zmq.Poller,
        state: dict[str, int],
    ) -> None:
        """One turn of the I/O loop: spill, send, wait for an event, handle it."""
        outbox = self.outbox
        if outbox.should_spill():
            self.spiller.spill()
        sent = self._drain(sock)
        timeout: int | None
        if sent:
            timeout = self.flush_ms
        else:
            outbox.idle = True
            if self._closing or (outbox.queue and self._window_open()):
                outbox.idle = False
                return
            timeout = None
        for at in (self.session.resend_at, self.spiller.retry_at()):
            if at:
                wait_ms = max(1, int((at - time.monotonic()) * 1000))
                timeout = wait_ms if timeout is None else min(timeout, wait_ms)
        events = dict(poller.poll(timeout))
        outbox.idle = False
        if self._wake_fd in events:
            try:
                os.eventfd_read(self._wake_fd)
            except BlockingIOError:
                pass
        if monitor in events:
            state["connections"] = self._on_monitor(sock, monitor, state["connections"])
        if sock in events:
            self._receive(sock)
        if self.session.resend_at:  # journal_full: resend the data once its delay is over
            for frame in self.session.resend_due(time.monotonic()):
                _send(sock, frame)

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
            self.session.disconnected()
            self.outbox.maker.units = False  # until a welcome says this daemon takes units
        elif event["event"] == zmq.EVENT_CONNECTED:
            connections += 1
            if connections > 1:
                sock.send(self.session.hello(resend=True))
        return connections

    def _window_open(self) -> bool:
        return self.session.window_open(self.max_inflight)

    def _drain(self, sock: zmq.Socket[bytes]) -> int:
        """Send what the window allows: the spool first (older), then the queue."""
        sent = 0
        session, spiller = self.session, self.spiller
        while spiller.has_unsent():
            if not self._window_open():
                return sent
            frames = spiller.replay(self.max_inflight - len(session.unacked))
            if frames is None:
                return sent
            for frame in frames:
                _send(sock, frame)
            sent += len(frames)
        maker = self.outbox.maker
        while self._window_open():
            unit = maker.take(session.seq + 1, session.new_req)
            if unit is None:
                break
            try:
                _send(sock, unit.frame)
            except zmq.ZMQError as exc:  # not expected with SNDHWM 0; keep the frame queued
                maker.give_back(unit)
                self._warn_once("send", "tracker-client: sending to the daemon: %s", exc)
                break
            except BaseException:  # a bug: the frame stays queued (spooled at exit), not lost
                maker.give_back(unit)
                raise
            session.placed(unit, in_flight=True)
            sent += 1
        if self.outbox.space_waiters:
            self.outbox.space_freed()
        return sent

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
            for event in self.session.receive(msg, time.monotonic()):
                if isinstance(event, Answered):
                    if event.future is not None:
                        event.future.set_result(event.reply)
                elif isinstance(event, Accepted):
                    if isinstance(event.future, Request):
                        event.future.accepted.set()
                elif isinstance(event, Welcomed):
                    self._welcomed(sock, event)
                elif isinstance(event, Rehello):
                    _send(sock, event.frame)
                elif isinstance(event, Refused):
                    if event.future is not None:
                        event.future.set_exception(DaemonError(event.code, event.message))
                    else:
                        _log.warning(
                            "tracker-daemon reported an error: %s: %s", event.code, event.message
                        )
                elif isinstance(event, JournalFull):
                    _log.warning("tracker-daemon is not accepting data: %s", event.message)
                elif isinstance(event, FrameReplaced):
                    self._replaced(sock, event)

    def _replaced(self, sock: zmq.Socket[bytes], event: FrameReplaced) -> None:
        """The daemon refused a frame whole: send what it can take under the same seq (so no
        barrier waits for it), queue the rest again; the records left out fail at the next
        barrier."""
        _send(sock, event.frame)
        if event.later:
            self.outbox.queue.extendleft(reversed(event.later))
        for f in event.failures:
            _log.warning("tracker-client: a record was not sent: %s", f.message)

    def take_refused(self, run_id: str | None = None) -> list[p.Failure]:
        """Records of frames the daemon refused whole that could not be sent again, not
        reported yet: all of them, or those of ``run_id``."""
        return self.session.take_refused(run_id)

    def _welcomed(self, sock: zmq.Socket[bytes], event: Welcomed) -> None:
        welcome = event.welcome
        self.staging_dir = welcome.staging_dir
        self.spiller.use_dir(welcome.spool_dir)
        self.max_frame = min(self.max_frame, welcome.max_frame)
        self.outbox.maker.max_bytes = self.session.max_frame = self.max_frame
        self.outbox.maker.units = p.FEATURE_UNITS in welcome.features
        for frame in event.resend:
            _send(sock, frame)
        self.welcomed.set()


def _send(sock: zmq.Socket[bytes], frame: bytes) -> None:
    """Send without copying; at interpreter exit pyzmq's zero-copy machinery (its gc thread) is
    already stopped and refuses large frames (RuntimeError, before anything is sent): copy."""
    try:
        sock.send(frame, copy=False)
    except RuntimeError:
        sock.send(frame, copy=True)


def _version() -> str:
    from .._version import __version__

    return __version__


def _after_fork_in_child() -> None:
    for t in list(_LIVE):
        t.spiller.spool = None  # the parent's lock and file are the parent's
        t._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
