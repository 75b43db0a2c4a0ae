"""The limits (pure): each limit refuses with its code, the limit's name and value in the message,
is counted in limit_rejections, and is logged at most once per interval per peer and limit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.run_fakes import Wiring
from tracker_client import protocol as p
from tracker_daemon.intake.clients import ClientTable, Peer
from tracker_daemon.intake.limits import LIMIT_LOG_INTERVAL_S, Limits
from tracker_daemon.ops.status import Counters
from tracker_daemon.store.sink import RunHandle

A = Peer(b"conn-a", uid=1000, pid=111)
B = Peer(b"conn-b", uid=1000, pid=222)


def data(n: int, cid: str = "c1", seq: int = 1) -> p.Data:
    return p.Data(cid, seq, tuple(p.Metric("r1", "loss", 0.5, 1, i) for i in range(n)))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Limits, ClientTable, Wiring, Counters]:
    counters = Counters()
    return Limits(3, 2, counters), ClientTable(100), Wiring(tmp_path), counters


def test_records_per_frame(setup: tuple[Limits, ClientTable, Wiring, Counters]) -> None:
    limits, table, w, _ = setup
    assert limits.check(A, data(3), table, w.runs, 0.0) is None
    refusal = limits.check(A, data(4, seq=7), table, w.runs, 0.0)
    assert refusal is not None
    assert (refusal.code, refusal.limit, refusal.value) == (
        "limit_exceeded",
        "max_records_per_frame",
        3,
    )
    assert refusal.message.startswith("max_records_per_frame = 3: this data frame (seq 7) holds 4")
    assert "split it" in refusal.message


def test_open_runs_per_client(setup: tuple[Limits, ClientTable, Wiring, Counters]) -> None:
    limits, table, w, _ = setup
    for rid in ("r1", "r2"):
        w.runbook.opened(RunHandle(rid, "0", "", rid, {}), "c1")
    start = p.StartRun(req=5, client_id="c1")
    refusal = limits.check(A, start, table, w.runs, 0.0)
    assert refusal is not None
    assert (refusal.code, refusal.limit, refusal.value) == (
        "limit_exceeded",
        "max_open_runs_per_client",
        2,
    )
    assert refusal.message == (
        "max_open_runs_per_client = 2: this client already has 2 open runs; "
        "end some before starting more"
    )
    create = p.Call(6, "c1", 0, "tracking", "create_run", b"", b"")
    assert limits.check(A, create, table, w.runs, 0.0) is not None
    # what does not open a new run passes: resuming an owned run, reads, other clients
    assert limits.check(A, p.StartRun(req=7, client_id="c1", run_id="r1"), table, w.runs, 0) is None
    get = p.Call(8, "c1", 0, "tracking", "get_run", b"", b"")
    assert limits.check(A, get, table, w.runs, 0.0) is None
    assert limits.check(B, p.StartRun(req=1, client_id="c2"), table, w.runs, 0.0) is None


def test_a_client_id_bound_to_another_process(
    setup: tuple[Limits, ClientTable, Wiring, Counters],
) -> None:
    limits, table, w, _ = setup
    assert limits.check(A, data(1), table, w.runs, 0.0) is None
    refusal = limits.check(B, data(1), table, w.runs, 1.0)
    assert refusal is not None and refusal.code == "client_id_in_use"
    assert refusal.limit == "client_id_in_use"


def test_max_clients(tmp_path: Path) -> None:
    limits, w = Limits(3, 2, Counters()), Wiring(tmp_path)
    table = ClientTable(1, per_process=1)
    assert limits.check(A, data(1, "c1"), table, w.runs, 0.0) is None
    refusal = limits.check(B, data(1, "c2"), table, w.runs, 0.0)
    assert refusal is not None
    assert (refusal.code, refusal.limit, refusal.value) == ("limit_exceeded", "max_clients", 1)
    assert "max_clients = 1" in refusal.message
    refusal = limits.check(A, data(1, "c3"), ClientTable(100, per_process=1), w.runs, 0.0)
    assert refusal is None
    table = ClientTable(100, per_process=1)
    assert limits.check(A, data(1, "c1"), table, w.runs, 0.0) is None
    refusal = limits.check(A, data(1, "c2"), table, w.runs, 0.0)
    assert refusal is not None
    assert (refusal.limit, refusal.value) == ("max_clients_per_process", 1)
    assert refusal.message.startswith("max_clients_per_process = 1: this process already has 1")


def test_refusals_are_counted_answered_and_logged_throttled(
    setup: tuple[Limits, ClientTable, Wiring, Counters], caplog: pytest.LogCaptureFixture
) -> None:
    limits, table, w, counters = setup
    caplog.set_level(logging.WARNING, "tracker_daemon")
    msg = data(4, seq=2)
    replies = []
    for now in (0.0, 1.0, 2.0, LIMIT_LOG_INTERVAL_S + 0.5):
        refusal = limits.check(A, msg, table, w.runs, now)
        assert refusal is not None
        replies.append(limits.refuse(A.routing_id, msg, refusal, now))
    assert counters.limit_rejections["max_records_per_frame"] == 4
    assert replies[0] == p.ErrorReply(None, "limit_exceeded", replies[0].message)
    assert "max_records_per_frame = 3" in replies[0].message
    lines = [r.getMessage() for r in caplog.records if "event=limit_exceeded" in r.getMessage()]
    assert len(lines) == 2  # the first, then one after the interval naming the two held back
    assert "rejections=1 " in lines[0] and lines[0].endswith("suppressed=0")
    assert "rejections=4 " in lines[1] and lines[1].endswith("suppressed=2")
    assert f"peer={A.routing_id.hex()}" in lines[0] and "client=c1" in lines[0]
    w.runbook.opened(RunHandle("r1", "0", "", "r1", {}), "c1")
    w.runbook.opened(RunHandle("r2", "0", "", "r2", {}), "c1")
    start = p.StartRun(req=9, client_id="c1")
    refusal = limits.check(A, start, table, w.runs, 30.0)
    assert refusal is not None
    reply = limits.refuse(A.routing_id, start, refusal, 30.0)
    assert (reply.req, reply.code) == (9, "limit_exceeded")  # names the refused request
    assert counters.limit_rejections["max_open_runs_per_client"] == 1
