"""Intake (synchronous; a real journal in tmp_path, recording fakes for the data path and
control): hello, sequenced frames journaled once and acked, duplicates, a full journal,
refusals, requests handed to control, status."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_fakes import Wiring
from tracker_client import protocol as p
from tracker_daemon.commit.ledger import Ledger
from tracker_daemon.intake.clients import ClientInfo, ClientTable, Peer
from tracker_daemon.intake.intake import KIND_SEQUENCED, DataPath, Intake, Welcome
from tracker_daemon.intake.limits import LIMIT_LOG_INTERVAL_S, Limits
from tracker_daemon.journal.journal import Journal, Position
from tracker_daemon.ops.status import Counters

A = Peer(b"conn-a", uid=1000, pid=111)
B = Peer(b"conn-b", uid=1000, pid=222)
CID = "c" * 32


class Recorder:
    """The data path, control and the orphan watcher, recording what intake asked of them."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.ledger: Ledger | None = None
        self.ack_now = False
        self.refuse_requests = False

    def data(self) -> DataPath:
        return DataPath(
            journaled=self.journaled,
            deliver=lambda msg: self.events.append(("deliver", msg)),
            release=lambda cid: self.events.append(("release", cid)),
            ack_now=lambda: self.ack_now,
            ack_later=lambda identity, cid: self.events.append(("ack_later", identity, cid)),
            reclaim=lambda: self.events.append(("reclaim",)),
        )

    def journaled(self, cid: str, seq: int, count: int, pos: Position) -> None:
        # the data path records the position and accepts the message (settlement.py)
        self.events.append(("journaled", cid, seq, count, pos))
        assert self.ledger is not None
        self.ledger.accept(cid, seq, count)

    def submit(self, identity: bytes, msg: Any) -> p.ErrorReply | None:
        self.events.append(("submit", identity, msg))
        return (
            p.ErrorReply(msg.req, "REQUEST_LIMIT_EXCEEDED", "full")
            if self.refuse_requests
            else None
        )

    def watch(self, info: ClientInfo) -> None:
        self.events.append(("watch", info.client_id, info.pid))

    def watch_bound(self) -> None:
        self.events.append(("watch_bound",))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]


class Rig:
    def __init__(self, tmp_path: Path, max_bytes: int = 1 << 30) -> None:
        self.journal = Journal(tmp_path / "journal", max_bytes=max_bytes)
        self.journal.open()
        self.ledger = Ledger()
        self.table = ClientTable(100)
        self.counters = Counters()
        self.rec = Recorder()
        self.rec.ledger = self.ledger
        self.w = Wiring(tmp_path)
        self.intake = Intake(
            self.journal,
            self.ledger,
            self.table,
            Limits(3, 2, self.counters),
            self.w.runs,
            self.counters,
            Welcome("9.9", "/staging", 4096, "/spool", "thishost"),
            data=self.rec.data(),
            control=self.rec,
            watcher=self.rec,
            status=lambda: {"healthy": True},
        )

    def handle(self, msg: p.ClientMessage, peer: Peer = A, now: float = 0.0) -> Any:
        return self.intake.handle(peer, msg, p.encode(msg), now)

    def entries(self) -> list[bytes]:
        return [payload for _, payload in self.journal.read(Position(1, 0))]


def data(seq: int, n: int = 2, cid: str = CID) -> p.Data:
    return p.Data(cid, seq, tuple(p.Metric("r1", "loss", float(i), 1, i) for i in range(n)))


def test_hello_is_welcomed_with_what_the_daemon_has(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    reply = rig.handle(p.Hello(1, CID, 4242, "thishost", "1.0", acked_floor=5))
    assert reply == p.Welcome(1, "9.9", 5, "/staging", 4096, "/spool")
    info = rig.table.clients[CID]
    assert (info.claimed_pid, info.version) == (4242, "1.0")
    assert info.pid == 111  # the kernel's pid, not the claim
    assert rig.rec.named("release") == [("release", CID)]
    assert rig.rec.named("watch_bound") == [("watch_bound",)]  # bound to pid 111: watch it


def test_hello_over_a_connection_watches_the_claimed_local_pid(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    conn = Peer(b"tcp-conn")  # no kernel credentials
    rig.handle(p.Hello(1, CID, 4242, "thishost", "1.0"), conn)
    rig.handle(p.Hello(2, "other", 4343, "elsewhere", "1.0"), conn)
    assert rig.rec.named("watch") == [("watch", CID, 4242)]  # the other host's pid is not ours
    assert rig.table.clients["other"].host == "elsewhere"


def test_a_frame_is_journaled_then_accepted_then_delivered_and_acked_later(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    msg = data(1)
    raw = p.encode(msg)
    assert rig.intake.handle(A, msg, raw, 0.0) is None  # acked after the group fsync
    assert rig.entries() == [KIND_SEQUENCED + raw]
    pos = rig.rec.named("journaled")[0][4]
    assert rig.rec.events == [
        ("watch_bound",),
        ("journaled", CID, 1, 2, pos),
        ("deliver", msg),
        ("ack_later", A.routing_id, CID),
    ]
    assert (rig.counters.frames, rig.counters.received) == (1, 2)
    assert rig.ledger.received_upto(CID) == 1
    rig.rec.ack_now = True
    assert rig.handle(data(2)) == p.Ack(2)


def test_an_empty_frame_is_handed_on_with_its_count(tmp_path: Path) -> None:
    """A frame of no records is done as soon as it is accepted: the data path gets its count
    with its position, so it can settle the entry at once
    (tests/unit/journal/test_settlement.py)."""
    rig = Rig(tmp_path)
    rig.handle(data(1, n=0))
    events = [e for e in rig.rec.events if e[0] != "watch_bound"]
    assert [e[0] for e in events] == ["journaled", "deliver", "ack_later"]
    assert events[0][3] == 0 and rig.ledger.committed_upto(CID) == 1


def test_a_duplicate_is_acked_again_not_journaled_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.rec.ack_now = True
    msg = data(1)
    assert rig.handle(msg) == p.Ack(1)
    used = rig.journal.bytes_used
    assert rig.handle(msg) == p.Ack(1)
    assert rig.journal.bytes_used == used and len(rig.entries()) == 1
    assert len(rig.rec.named("deliver")) == 1
    assert (rig.counters.frames, rig.counters.duplicate_frames, rig.counters.received) == (2, 1, 2)


def test_a_full_journal_refuses_without_ack_and_logs_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tracker_daemon")
    rig = Rig(tmp_path, max_bytes=600)
    rig.rec.ack_now = True
    seq = 0
    while True:  # fill it
        seq += 1
        reply = rig.handle(data(seq), now=float(seq))
        if not isinstance(reply, p.Ack):
            break
    accepted = seq - 1
    assert accepted >= 1 and len(rig.entries()) == accepted
    assert isinstance(reply, p.ErrorReply) and (reply.req, reply.code) == (None, "journal_full")
    assert "journal_max_bytes" in reply.message
    again = rig.handle(data(seq), now=float(seq) + 1)
    assert isinstance(again, p.ErrorReply) and again.code == "journal_full"
    assert rig.ledger.received_upto(CID) == accepted  # not accepted: the client keeps it
    assert rig.counters.journal_full_rejections == 2 and rig.counters.received == 2 * accepted
    assert len(rig.rec.named("reclaim")) == 2 and len(rig.rec.named("deliver")) == accepted
    full = [r for r in caplog.records if "event=journal_full " in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR
    # room again (entries committed, the mark moved past them): accepted, logged once
    for pos, _ in rig.journal.read(Position(1, 0)):
        rig.journal.settle(pos)
    rig.journal.write_mark(rig.journal.low_water(), {})
    t = float(seq) + 2
    assert rig.handle(data(seq), now=t) == p.Ack(seq)
    assert sum("event=journal_accepting_again" in r.getMessage() for r in caplog.records) == 1

    # a new episode within the interval counts as the same one; one after it is logged
    def refill(now: float) -> int:
        nonlocal seq
        for pos, _ in rig.journal.read(Position(1, 0)):
            rig.journal.settle(pos)
        rig.journal.write_mark(rig.journal.low_water(), {})
        while isinstance(rig.handle(data(seq + 1), now=now), p.Ack):
            seq += 1
        return sum("event=journal_full " in r.getMessage() for r in caplog.records)

    assert refill(t + 1) == 1
    assert refill(t + LIMIT_LOG_INTERVAL_S) == 2
    assert rig.counters.journal_full_rejections == 4


def test_refusals_are_answered_and_nothing_is_journaled(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    too_big = data(1, n=4)  # max_records_per_frame = 3 here
    reply = rig.handle(too_big)
    assert isinstance(reply, p.ErrorReply) and (reply.req, reply.code) == (None, "limit_exceeded")
    assert reply.message.startswith("max_records_per_frame = 3")
    assert rig.entries() == [] and rig.counters.frames == 0
    assert rig.counters.limit_rejections["max_records_per_frame"] == 1
    rig.handle(data(1))  # binds CID to A
    taken = rig.handle(p.Flush(7, CID, 1), B)
    assert isinstance(taken, p.ErrorReply) and (taken.req, taken.code) == (7, "client_id_in_use")
    assert rig.rec.named("submit") == []
    assert rig.counters.limit_rejections["client_id_in_use"] == 1


def test_requests_go_to_control_and_status_is_answered(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    start = p.StartRun(3, CID, offline_id="offline-z")
    assert rig.handle(start) is None
    assert rig.rec.named("submit") == [("submit", A.routing_id, start)]
    rig.rec.refuse_requests = True
    assert rig.handle(p.EndRun(4, CID, 0, "r", "FINISHED", 1)) == p.ErrorReply(
        4, "REQUEST_LIMIT_EXCEEDED", "full"
    )
    assert rig.handle(p.StatusRequest(5)) == p.StatusReply(5, {"healthy": True})
