"""Raw network peers: a bare ZeroMQ DEALER (frames the client library would never send) and a free
TCP port."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from tracker_client import protocol as p


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def raw_dealer(address: str, routing_id: bytes = b"") -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id:  # a chosen ZMQ_ROUTING_ID, as a peer may pick one
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(address)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def recv_reply(sock: zmq.Socket[bytes], what: str, timeout: float = 30.0) -> p.Message:
    """Wait (poll with a deadline) for one single-frame reply and decode it."""
    deadline = time.monotonic() + timeout
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise AssertionError(f"no reply within {timeout:g} s to {what}")
        if sock.poll(left_ms, zmq.POLLIN):
            frames = sock.recv_multipart()
            assert len(frames) == 1, f"{what}: reply has {len(frames)} frames"
            return p.decode(frames[0])
