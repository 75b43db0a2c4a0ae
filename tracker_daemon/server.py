"""The ROUTER socket: bind safely, receive frames, decode them, hand messages on, send replies.

No business logic lives here. A frame that cannot be decoded is answered with an ``error`` reply
(and counted); it never raises out of the loop. For ipc endpoints, binding first checks that no
other daemon answers on the socket path: ZeroMQ's bind would silently replace a live socket file.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import zmq
import zmq.asyncio

from tracker_client import protocol as p
from tracker_client.address import ipc_path

from .errors import AlreadyRunning

__all__ = ["Dispatch", "Server"]

log = logging.getLogger("tracker_daemon.server")

Dispatch = Callable[[bytes, p.ClientMessage, bytes], Awaitable[None] | None]


class Server:
    def __init__(self, address: str, max_frame: int) -> None:
        self.address = address
        self.max_frame = max_frame
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket | None = None
        self.rejected = 0
        self.last_rejection = ""

    def bind(self) -> None:
        path = ipc_path(self.address)
        if path is not None:
            _prepare_ipc_path(path)
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        # A hard stop for absurd frames; frames between max_frame and this get an error reply.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame * 2 + 1024)
        try:
            sock.bind(self.address)
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno == zmq.EADDRINUSE:
                raise AlreadyRunning(f"{self.address} is already in use by another process") from None
            raise
        if path is not None:
            os.chmod(path, 0o660)
        self.sock = sock

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
        self.ctx.term()

    async def send(self, identity: bytes, msg: p.DaemonMessage) -> None:
        assert self.sock is not None
        await self.sock.send_multipart([identity, p.encode(msg)], copy=True)

    async def serve(self, dispatch: Dispatch) -> None:
        """Receive forever; decode each frame and call ``dispatch(identity, message, raw)``."""
        assert self.sock is not None
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            identity = frames[0]
            if len(frames) != 2:
                await self._reject(identity, None, "bad_envelope", "expected exactly one frame")
                continue
            try:
                msg = p.decode(frames[1], self.max_frame)
            except p.ProtocolError as exc:
                await self._reject(identity, _peek_req(frames[1]), exc.code, exc.message)
                continue
            if isinstance(msg, p.DaemonMessage):
                await self._reject(
                    identity, getattr(msg, "req", None), "invalid_request",
                    f"{type(msg).__name__} is a daemon message; clients may not send it",
                )
                continue
            result = dispatch(identity, msg, frames[1])
            if result is not None:
                await result

    async def _reject(self, identity: bytes, req: int | None, code: str, message: str) -> None:
        self.rejected += 1
        self.last_rejection = f"{code}: {message}"
        log.warning("event=frame_rejected code=%s reason=%r", code, message[:200])
        await self.send(identity, p.ErrorReply(req, code, message))


def _peek_req(frame: bytes) -> int | None:
    """Best effort: the ``req`` of an invalid request, so the client can match the error."""
    try:
        obj = msgpack.unpackb(frame, raw=False)  # strict keys: PROTOCOL.md 6.6
        req = obj[2].get("req")
        return req if type(req) is int and 0 <= req < 2**63 else None
    except Exception:
        return None


def _prepare_ipc_path(path: Path) -> None:
    """Create the socket's directory; refuse to replace a socket another daemon still answers on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o770)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale socket of a daemon that is gone
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise AlreadyRunning(
        f"another tracker-daemon is listening on {path}; stop it first "
        "(or give this one another --address and --state-dir)"
    )
