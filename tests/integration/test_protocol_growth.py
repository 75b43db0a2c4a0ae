"""The protocol grows without breaking its clients (PROTOCOL.md section 11.1), against a real
daemon over a raw ZeroMQ socket: a peer built from the first edition of version 1 — it announces
no features — sees only the kinds that edition listed during a whole session (an `accepted` on
every end_run used to reach it, a kind it was told to reject as `unknown_kind`); a peer that
announces the feature `accepted` gets it; a client that sends a daemon → client kind, `accepted`
included, is refused with `invalid_request` (section 10)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

# The daemon -> client kinds of the first edition of version 1 of client/PROTOCOL.md (commit
# c16947dcc65a0071983ed666181d0771883bfef7, section 4): a peer built from it rejects any other.
FIRST_EDITION_DAEMON_KINDS = frozenset({"welcome", "ack", "run", "done", "status_reply", "error"})
TS = 1_700_000_000_000


def receive_until(sock: zmq.Socket[bytes], last_req: int, timeout: float = 60.0) -> list[bytes]:
    """Every frame the daemon sends until the reply (not `accepted`) to ``last_req``."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        assert left_ms > 0, f"no final reply to req {last_req} within {timeout} s: {frames}"
        if not sock.poll(left_ms, zmq.POLLIN):
            continue
        frame = sock.recv()
        frames.append(frame)
        version, kind, body = msgpack.unpackb(frame, raw=False)
        if kind not in ("accepted", "ack") and body.get("req") == last_req:
            return frames


def kinds(frames: list[bytes]) -> list[str]:
    return [str(msgpack.unpackb(f, raw=False)[1]) for f in frames]


def session(address: str, features: tuple[str, ...]) -> list[str]:
    """hello, start_run, data, flush, status, end_run, a bad frame: the kinds that came back."""
    cid = os.urandom(16).hex()
    got: list[bytes] = []
    with raw_dealer(address) as sock:
        sock.send(p.encode(p.Hello(1, cid, os.getpid(), "h", "1st-edition", 0, features)))
        got += receive_until(sock, 1)
        sock.send(p.encode(p.StartRun(2, cid, None, "growth", None, "r", None, {}, TS)))
        got += receive_until(sock, 2)
        run = p.decode(got[-1])
        assert isinstance(run, p.RunStarted), run
        metric = p.Metric(run.run_id, "loss", 0.5, TS, 1)
        sock.send(p.encode(p.Data(cid, 1, (metric,))))
        sock.send(p.encode(p.Flush(3, cid, 1, None)))
        got += receive_until(sock, 3)
        sock.send(p.encode(p.StatusRequest(4)))
        got += receive_until(sock, 4)
        sock.send(p.encode(p.Data(cid, 2, (p.Metric(run.run_id, "loss", 0.25, TS, 2),))))
        sock.send(p.encode(p.EndRun(5, cid, 2, run.run_id, "FINISHED", TS + 1)))
        got += receive_until(sock, 5)
        sock.send(msgpack.packb([1, "nonsense", {"req": 6}]))
        got += receive_until(sock, 6)
    return kinds(got)


@pytest.mark.timeout(90)
def test_a_peer_that_announces_no_features_sees_only_first_edition_kinds(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        seen = session(d.address, ())
    assert set(seen) <= FIRST_EDITION_DAEMON_KINDS, seen
    assert {"welcome", "run", "done", "status_reply", "error"} <= set(seen), seen
    assert "accepted" not in seen


@pytest.mark.timeout(90)
def test_a_peer_that_announces_accepted_gets_it_before_done(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        seen = session(d.address, (p.FEATURE_ACCEPTED,))
    end = seen[seen.index("status_reply") + 1 :]
    assert [k for k in end if k != "ack"][:2] == ["accepted", "done"], seen


@pytest.mark.timeout(60)
def test_a_client_sent_accepted_is_refused_as_invalid_request(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d, raw_dealer(d.address) as sock:
        sock.send(p.encode(p.Accepted(7)))
        reply = recv_reply(sock, "accepted from a client")
    assert reply == p.ErrorReply(
        7, "invalid_request", "Accepted is a daemon message; clients may not send it"
    )
