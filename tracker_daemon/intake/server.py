"""The ROUTER socket: bind safely, receive frames, decode them, hand messages on, send replies.

No business logic lives here. A frame that cannot be decoded is answered with an ``error`` reply
(and counted); it never raises out of the loop. Decoding is bounded (``protocol.value_budget``), so
a hostile frame costs little more than a valid one of its size. Each peer (ZeroMQ routing
identity) has a budget of rejected frames (``REJECT_BUDGET_PER_S`` a second, a frame costing one
plus one per ``REJECT_COST_BYTES``); while it is spent, that peer's frames are dropped unread and
without a reply (counted as rejected, and as ``rejected_unanswered``). Rejections are logged once
per peer and code per ``REJECT_LOG_INTERVAL_S`` with a count of the lines held back, and the loop
yields to the event loop after each rejected frame, so other clients keep being served.

Replies are bounded per peer: the socket queues at most ``REPLY_QUEUE`` messages for one
connection (``SNDHWM``) and, with ``ROUTER_MANDATORY``, a send that finds that queue full fails
(``EAGAIN``) instead of being dropped silently. A reply is never lost for a peer that reads: such
a peer's queue drains as fast as replies come. A peer whose queue is full does not read: it is
dropped — nothing more is sent to it, its frames are dropped unread, and the daemon forgets it
as if it had disconnected (its routing identity no longer counts as connected) — counted
(``peers_dropped``, ``dropped_frames``) and logged once (``event=peer_dropped``). Its queue stays
bounded until it disconnects; a client that reconnects is a new connection, served again.

For ipc endpoints, binding first checks that no other daemon answers on the socket path: ZeroMQ's
bind would silently replace a live socket file (endpoints.py; for tcp, that the port is free).

Access control. ipc: the socket file is made mode 0660 and a socket directory the daemon creates
0770 (whatever the umask), so only the daemon's user and group can connect. tcp: with CURVE
configured (curve_auth.py), every connection is encrypted and a ZAP handler (pyzmq's
``zmq.auth`` in a thread) admits only clients whose public key is in the allowed directory (re-read
whenever the directory changes), plus the daemon's own key (for its spool imports and for
administrators who hold the daemon's secret key).

Receiving. The socket is used synchronously from the event loop: a reader on its ZeroMQ FD wakes
the loop, which then reads every queued frame without waiting (``NOBLOCK``), yielding to the
other tasks every ``DRAIN_BATCH`` frames, and waits again only once the socket reports nothing
to read (its ``EVENTS``). The FD is edge-triggered: whatever touches the socket (a send) may
consume the edge, so every send checks ``EVENTS`` afterwards and wakes the reader when a frame
waits. (One awaited recv per frame, pyzmq's asyncio socket, cost a future and its callbacks per
frame: the largest fixed cost per frame at everyday rates.)

Peers. Each message is dispatched with a :class:`~tracker_daemon.intake.clients.Peer` read from the
frame's ZeroMQ properties: ``Peer-Address`` (on ipc the uid and pid the kernel reported for the
connection) and, with CURVE, ``User-Id`` (the client's public key). The client table binds
client ids to peers.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.thread import ThreadAuthenticator

from tracker_client import protocol as p
from tracker_client.wire.address import ipc_path

from ..errors import AlreadyRunning
from ..ops.throttle import LogThrottle, RateBudget
from .clients import Peer, peer_from
from .curve_auth import AllowedKeys, CurveSetup
from .endpoints import check_tcp_free, prepare_ipc_path, refuse_live_socket

__all__ = ["Dispatch", "Server"]

log = logging.getLogger("tracker_daemon.server")

# (peer, message, raw frame, monotonic now) -> the reply to send now, if any (intake.Intake.handle)
Dispatch = Callable[[Peer, p.ClientMessage, bytes, float], p.DaemonMessage | None]
REJECT_LOG_INTERVAL_S = 10.0  # one frame_rejected line per peer and code this often
REJECT_LOG_LINES = 20  # ... and at most this many such lines per interval over all peers
REJECT_BUDGET_PER_S = 100.0  # rejected frames a second one peer may cost before it is dropped
REJECT_BUDGET_BURST = 200.0
REJECT_COST_BYTES = 64 * 1024  # a rejected frame costs 1 + its size / this
THROTTLED = "peer_throttled"  # the log code of frames dropped unread
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
DRAIN_BATCH = 64  # frames read in a row before the other tasks get a turn
PEER_CACHE = 65_536  # peers remembered by routing identity (the oldest is dropped beyond)
REPLY_QUEUE = 1000  # messages queued for one peer (SNDHWM); a peer that lets it fill is dropped
DROPPED = "peer_dropped"  # the log code of a peer dropped for not reading its replies
ADDRESS_FIX = "stop that process first, or give this daemon another --address"


class Server:
    def __init__(
        self,
        address: str,
        max_frame: int,
        curve: CurveSetup | None = None,
        max_records: int = p.DEFAULT_MAX_RECORDS,
    ) -> None:
        self.address = address
        self.max_frame = max_frame
        self.max_values = p.value_budget(max_records)
        self.curve = curve
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.Socket[bytes] | None = None  # used synchronously: see "Receiving"
        self._readable = asyncio.Event()  # set by the reader of the socket's FD
        self.rejected = 0
        self.rejected_by_code: Counter[str] = Counter()
        self.last_rejection = ""
        self.rejected_unanswered = 0  # frames of a peer over its budget: dropped unread
        self._reject_log = LogThrottle(REJECT_LOG_INTERVAL_S, REJECT_LOG_LINES)
        self._reject_budget = RateBudget(REJECT_BUDGET_PER_S, REJECT_BUDGET_BURST)
        self.keys: AllowedKeys | None = None
        self._auth: ThreadAuthenticator | None = None
        self._peers: dict[bytes, Peer] = {}
        self._dropped: dict[bytes, None] = {}  # peers that stopped reading (oldest first)
        self.peers_dropped = 0
        self.dropped_frames = 0  # frames of dropped peers, dropped unread
        self._probe: zmq.Socket[bytes] | None = None  # a sync shadow, to ask "still connected?"

    @property
    def auth(self) -> str:
        return "curve" if self.curve is not None else "none"

    @property
    def auth_denied(self) -> int:
        return self.keys.denied if self.keys is not None else 0

    def status(self) -> dict[str, Any]:
        return {
            "auth": self.auth,
            "auth_denied": self.auth_denied,
            "rejected_frames": self.rejected,
            "rejected_unanswered": self.rejected_unanswered,
            "last_rejection": self.last_rejection,
            "peers_dropped": self.peers_dropped,
            "dropped_frames": self.dropped_frames,
        }

    def limit_rejections(self) -> dict[str, int]:
        """The ``limit_rejections`` the server counts (frames refused before decoding)."""
        return {"max_frame_bytes": self.rejected_by_code["frame_too_large"]}

    def check_free(self) -> None:
        """Raise AlreadyRunning now if the address is taken, before the daemon makes any file
        (:meth:`bind` checks again)."""
        path = ipc_path(self.address)
        if path is not None:
            refuse_live_socket(path)
            return
        host, _, port = self.address.removeprefix("tcp://").rpartition(":")
        if self.address.startswith("tcp://") and port.isdigit():
            check_tcp_free(host.strip("[]"), int(port), self.address, ADDRESS_FIX)

    def bind(self) -> None:
        _return_large_buffers_to_os()
        path = ipc_path(self.address)
        if path is not None:
            prepare_ipc_path(path)
        sock: zmq.Socket[bytes] = zmq.Socket(self.ctx, zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, REPLY_QUEUE)
        # a full queue fails the send (send() drops that peer) and so does one to a peer that
        # is gone (EHOSTUNREACH: ignored), instead of ZeroMQ dropping the message silently
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        # A hard stop for absurd frames; frames between max_frame and this get an error reply.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame * 2 + 1024)
        if self.curve is not None:
            self._start_auth(self.curve)
            sock.curve_secretkey = self.curve.secret
            sock.curve_publickey = self.curve.public
            sock.curve_server = True
        try:
            sock.bind(self.address)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._stop_auth()
            if exc.errno == zmq.EADDRINUSE:
                raise AlreadyRunning(
                    f"{self.address} is already in use by another process; {ADDRESS_FIX}"
                ) from None
            raise
        if path is not None:
            os.chmod(path, 0o660)
        if path is None and self.curve is None:
            # tcp without CURVE: a connection is the only identity a peer has, so the daemon
            # must be able to ask whether one is still open (sends to a gone peer fail with
            # EHOSTUNREACH: ROUTER_MANDATORY)
            self._probe = zmq.Socket.shadow(sock.underlying)
        self.sock = sock

    def _start_auth(self, curve: CurveSetup) -> None:
        self.keys = AllowedKeys(curve.allowed_dir, curve.public)
        auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("tracker_daemon.zap"))
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=self.keys)
        self._auth = auth

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def close(self) -> None:
        bound = self.sock is not None
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        path = ipc_path(self.address)
        if path is not None and bound:  # never remove a socket this process did not bind
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._stop_auth()
        self.ctx.term()

    async def send(self, identity: bytes, msg: p.DaemonMessage) -> None:
        """Send ``msg`` to a peer now, never waiting: to a gone peer it is dropped; a peer whose
        queue of ``REPLY_QUEUE`` replies is full does not read, and is dropped itself."""
        assert self.sock is not None
        if identity in self._dropped:
            return
        try:
            self.sock.send_multipart([identity, p.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._drop_peer(identity)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:  # a gone peer (ROUTER_MANDATORY): drop the reply
                raise
        finally:
            self._check_readable()

    def _check_readable(self) -> None:
        """After touching the socket: wake the reader if a frame waits (the FD's edge may have
        been consumed by this call)."""
        if self._pollin():
            self._readable.set()

    def _pollin(self) -> bool:
        events = self.sock.get(zmq.EVENTS) if self.sock is not None else 0
        return isinstance(events, int) and bool(events & zmq.POLLIN)

    def _drop_peer(self, identity: bytes) -> None:
        """``identity`` lets its replies pile up unread: send it nothing more, drop its frames
        unread, forget it (as if it had disconnected); count it and log it once."""
        if len(self._dropped) >= PEER_CACHE:
            del self._dropped[next(iter(self._dropped))]
        self._dropped[identity] = None
        self._peers.pop(identity, None)
        self.peers_dropped += 1
        held = self._reject_log.check((identity, DROPPED), time.monotonic())
        if held is not None:
            log.warning(
                "event=peer_dropped peer=%s reason=%r peers_dropped=%d",
                peer_name(identity),
                f"{REPLY_QUEUE} replies queued unread (its limit): it does not read; its "
                "frames are dropped unread from now on",
                self.peers_dropped,
            )

    def connected(self, identity: bytes, notice: p.DaemonMessage) -> bool:
        """Is the connection ``identity`` still open? Where the server can tell (tcp without
        CURVE), ``notice`` is sent to it to find out; elsewhere the answer is yes."""
        if identity in self._dropped:
            return False
        if self._probe is None:
            return True
        try:
            self._probe.send_multipart([identity, p.encode(notice)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH
        finally:
            self._check_readable()
        return True

    def _peer(self, identity: bytes, frame: zmq.Frame) -> Peer:
        """Who sent ``frame``. The properties are read for every frame: a peer may choose its
        routing identity (ZMQ_ROUTING_ID) and take over one whose connection closed, so the
        identity alone must not stand for the process behind it. (~0.4 µs per property.)"""
        address = self._property(frame, "Peer-Address") or ""
        user_id = self._property(frame, "User-Id") if self.curve is not None else None
        peer = self._peers.get(identity)
        if peer is None or peer.address != address or (user_id and peer.key != user_id):
            peer = peer_from(identity, address, user_id)
            if len(self._peers) >= PEER_CACHE:
                del self._peers[next(iter(self._peers))]
            self._peers[identity] = peer
        return peer

    async def serve(self, dispatch: Dispatch) -> None:
        """Receive forever; decode each frame, call ``dispatch(peer, message, raw, now)`` and send
        the reply it returns."""
        sock = self.sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        fd: int = sock.fileno()
        readable = self._readable
        loop.add_reader(fd, readable.set)
        try:
            in_a_row = 0
            while True:
                try:
                    parts = [sock.recv(zmq.NOBLOCK, copy=False)]  # frames: to read the peer
                    while parts[-1].more:  # (recv_multipart reads RCVMORE through getsockopt)
                        parts.append(sock.recv(zmq.NOBLOCK, copy=False))
                except zmq.Again:
                    readable.clear()
                    if not self._pollin():  # reading EVENTS re-arms the FD's edge
                        await readable.wait()
                    in_a_row = 0
                    continue
                in_a_row += 1
                if in_a_row % DRAIN_BATCH == 0:
                    await asyncio.sleep(0)  # a long queue: let the rest of the daemon run
                await self._frame(parts, dispatch)
        finally:
            loop.remove_reader(fd)

    async def _frame(self, parts: list[zmq.Frame], dispatch: Dispatch) -> None:
        """One received message: check, decode, dispatch, reply."""
        identity = parts[0].bytes
        if identity in self._dropped:
            self.dropped_frames += 1
            if self.dropped_frames % 16 == 0:
                await asyncio.sleep(0)  # dropping is cheap: yield now and then
            return
        if not self._reject_budget.ready(identity, time.monotonic()):
            await self._drop(identity)
            return
        if len(parts) != 2:
            await self._reject(identity, None, "bad_envelope", "expected exactly one frame")
            return
        raw = parts[1].bytes
        try:
            msg = p.decode(raw, self.max_frame, self.max_values)
        except p.ProtocolError as exc:
            await self._reject(identity, exc.req, exc.code, exc.message, len(raw))
            return
        if isinstance(msg, p.DaemonMessage):
            await self._reject(
                identity,
                getattr(msg, "req", None),
                "invalid_request",
                f"{type(msg).__name__} is a daemon message; clients may not send it",
            )
            return
        reply = dispatch(self._peer(identity, parts[0]), msg, raw, time.monotonic())
        if reply is not None:
            await self.send(identity, reply)

    @staticmethod
    def _property(frame: zmq.Frame, name: str) -> str | None:
        try:
            value = frame.get(name)
        except zmq.ZMQError:  # not set for this connection
            return None
        return value if isinstance(value, str) else None

    async def _reject(
        self, identity: bytes, req: int | None, code: str, message: str, size: int = 0
    ) -> None:
        self.rejected += 1
        self.rejected_by_code[code] += 1
        self.last_rejection = f"{code}: {message}"
        now = time.monotonic()
        self._reject_budget.spend(identity, now, 1 + size / REJECT_COST_BYTES)
        self._log_rejection(identity, code, message, now)
        await self.send(identity, p.ErrorReply(req, code, message))
        await asyncio.sleep(0)  # let the rest of the daemon run between a flood's frames

    async def _drop(self, identity: bytes) -> None:
        """A frame of a peer over its budget of rejections: dropped unread, no reply."""
        self.rejected += 1
        self.rejected_unanswered += 1
        self.rejected_by_code[THROTTLED] += 1
        message = (
            f"frame dropped unread: this peer's frames were rejected more than "
            f"{REJECT_BUDGET_PER_S:g} times a second"
        )
        self._log_rejection(identity, THROTTLED, message, time.monotonic())
        if self.rejected_unanswered % 16 == 0:
            await asyncio.sleep(0)  # dropping is cheap: yield now and then

    def _log_rejection(self, identity: bytes, code: str, message: str, now: float) -> None:
        held = self._reject_log.check((identity, code), now)
        if held is not None:
            log.warning(
                "event=frame_rejected peer=%s code=%s reason=%r suppressed=%d rejected_total=%d",
                peer_name(identity),
                code,
                message[:200],
                held,
                self.rejected,
            )


def _return_large_buffers_to_os() -> None:
    """Frames of up to 8 MiB arrive in bursts and are freed at once. glibc raises its mmap
    threshold to the size of a freed mmap'd block, after which such buffers come from the heap
    and a burst leaves the RSS high for good; a fixed threshold (glibc's initial 128 KiB) keeps
    them mmap'd, so their memory goes back to the system as soon as they are freed."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def peer_name(identity: bytes) -> str:
    """A ZeroMQ routing identity for the log (hex, at most 16 bytes of it)."""
    return identity[:16].hex() or "-"
