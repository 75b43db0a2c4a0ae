"""The I/O thread's send step (transport.Transport._drain) with a fake socket: the fault — pyzmq
refusing a zero-copy send because interpreter exit already stopped its gc thread, or any other
unexpected send error — cannot be produced inside a running test process, so the socket is fake.
A frame is never lost: it is sent with a copy, or it goes back to the queue (spooled at exit)."""

from __future__ import annotations

from typing import Any

import pytest

from tracker_client import protocol as p
from tracker_client.delivery.transport import Transport

RUN = "r" * 32


class FakeSocket:
    """``send`` as pyzmq's: ``refuse_zero_copy`` raises like pyzmq at exit; ``broken`` always."""

    def __init__(self, *, refuse_zero_copy: bool = False, broken: bool = False) -> None:
        self.refuse_zero_copy, self.broken = refuse_zero_copy, broken
        self.sent: list[tuple[bytes, bool]] = []

    def send(self, frame: bytes, copy: bool = True) -> None:
        if self.broken:
            raise ValueError("broken socket")
        if self.refuse_zero_copy and not copy:
            raise RuntimeError("zmq gc socket requested during shutdown")
        self.sent.append((frame, copy))


def queued(n: int) -> Transport:
    t = Transport("ipc:///nonexistent/tracker-test.sock")
    t.outbox.idle = False  # the I/O thread is not started: nothing to wake
    for i in range(n):
        t.put(p.metric_wire(RUN, "k", float(i), 1_700_000_000_000 + i, i))
    return t


def test_a_refused_zero_copy_send_is_sent_with_a_copy() -> None:
    t = queued(1500)
    sock = FakeSocket(refuse_zero_copy=True)
    assert t._drain(sock) == 2  # type: ignore[arg-type]
    assert [copy for _, copy in sock.sent] == [True, True]
    frames = [p.decode(f) for f, _ in sock.sent]
    assert [len(m.records) for m in frames if isinstance(m, p.Data)] == [1000, 500]
    assert list(t.session.unacked) == [1, 2] and len(t.outbox.queue) == 0


def test_a_frame_whose_send_fails_unexpectedly_goes_back_to_the_queue() -> None:
    t = queued(1500)
    with pytest.raises(ValueError, match="broken socket"):
        t._drain(FakeSocket(broken=True))  # type: ignore[arg-type]
    assert len(t.outbox.queue) == 1500 and not t.session.unacked and t.session.seq == 0
    sock = FakeSocket()
    assert t._drain(sock) == 2  # type: ignore[arg-type]  # nothing was lost
    steps: list[Any] = [r.step for f, _ in sock.sent for r in p.decode(f).records]  # type: ignore[union-attr]
    assert steps == list(range(1500))
