"""The client's sans-I/O session (delivery.session) against a fake daemon, no sockets.

``SessionPair`` wires a :class:`Session` and the outbox's :class:`FrameMaker` (the client side,
exactly as the I/O thread uses them) to ``FakeDaemon``, a few lines of pure Python that keep
sequenced frames in order, ack them, answer requests and can "crash" back to what its journal
held. It is a fake because the point is the client's bookkeeping, frame by frame, which a real
daemon behind a socket would not let us step through; tests/faults/ cover the real thing.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from tracker_client import protocol as p
from tracker_client.delivery.outbox import FrameMaker
from tracker_client.delivery.session import (
    JOURNAL_FULL_RETRY_S,
    Accepted,
    Acked,
    Answered,
    Event,
    FrameReplaced,
    JournalFull,
    Refused,
    Session,
    Welcomed,
)

CID = "c" * 32
RUN = "r" * 32


def rec(i: int) -> list[Any]:
    return p.metric_wire(RUN, "k", float(i), 1_700_000_000_000 + i, i)


@dataclass
class Item:
    """A control item in the queue (what transport._Call is)."""

    make: Any
    future: Future[Any] | None
    sequenced: bool


@dataclass
class FakeDaemon:
    """Pure stand-in for the daemon's intake: in-order seqs per client, acks, answers."""

    upto: int = 0  # every seq <= upto is held
    records: list[list[Any]] = field(default_factory=list)  # (seq, record) in arrival order
    seqs: list[int] = field(default_factory=list)  # the seq of each record
    requests: list[p.Message] = field(default_factory=list)
    run_ids: dict[int, str] = field(default_factory=dict)  # start_run req -> run id (dedup)

    def receive(self, frame: bytes) -> list[p.Message]:
        msg = p.decode(frame)
        if isinstance(msg, p.Hello):
            return [p.Welcome(msg.req, "fake", self.upto, "/staging", 1 << 20)]
        if isinstance(msg, p.Data | p.LogArtifact):
            if msg.seq != self.upto + 1:  # a duplicate (or a gap): not taken again
                return [p.Ack(self.upto)]
            self.upto = msg.seq
            if isinstance(msg, p.Data):
                for r in msg.records:
                    self.records.append(p.record_to_wire(r))
                    self.seqs.append(msg.seq)
            return [p.Ack(msg.seq)]
        self.requests.append(msg)
        if isinstance(msg, p.StartRun):
            run_id = self.run_ids.setdefault(msg.req, f"run-{len(self.run_ids)}")
            return [p.RunStarted(msg.req, run_id, "0", "", "")]
        if isinstance(msg, p.Flush | p.EndRun):
            return [p.Done(msg.req)]
        raise AssertionError(msg)

    def crash(self, journaled_upto: int) -> None:
        """Restart: what was acked beyond ``journaled_upto`` is gone (never fsynced)."""
        keep = sum(1 for s in self.seqs if s <= journaled_upto)
        del self.records[keep:], self.seqs[keep:]
        self.upto = journaled_upto


class SessionPair:
    """A client session, its queue and frame maker, and a fake daemon; ``online`` decides whether
    frames reach the daemon (off: they are lost on the way, as when the daemon is down)."""

    def __init__(self, max_records: int = 2, max_inflight: int = 64) -> None:
        self.session = Session(CID, pid=42, host="host", version="test")
        self.queue: deque[Any] = deque()
        self.maker = FrameMaker(self.queue, lambda: CID, max_records=max_records)
        self.daemon = FakeDaemon()
        self.max_inflight = max_inflight
        self.online = True
        self.now = 100.0
        self.events: list[Event] = []
        self.sent: list[bytes] = []  # every frame the client put on the wire

    def log(self, first: int, n: int) -> None:
        self.queue.extend(rec(i) for i in range(first, first + n))

    def request(self, make: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self.queue.append(Item(make, fut, sequenced=False))
        return fut

    def start_run(self) -> Future[Any]:
        return self.request(lambda req, seq: p.StartRun(req, CID, run_name="x"))

    def flush(self) -> Future[Any]:
        return self.request(lambda req, seq: p.Flush(req, CID, seq))

    def pump(self) -> None:
        """What the I/O thread's drain does: frame and send while the window is open."""
        s = self.session
        while s.window_open(self.max_inflight):
            unit = self.maker.take(s.seq + 1, s.new_req)
            if unit is None:
                return
            s.placed(unit, in_flight=True)
            self.send(unit.frame)

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        if self.online:
            for reply in self.daemon.receive(frame):
                self.deliver(reply)

    def deliver(self, reply: p.Message) -> list[Event]:
        events = self.session.receive(reply, self.now)
        self.events += events
        for ev in events:  # what transport._receive does with them
            if isinstance(ev, Answered) and ev.future is not None:
                ev.future.set_result(ev.reply)
            elif isinstance(ev, Refused) and ev.future is not None:
                ev.future.set_exception(RuntimeError(ev.code))
            elif isinstance(ev, Welcomed):
                for frame in ev.resend:
                    self.send(frame)
        return events

    def reconnect(self) -> None:
        self.online = True
        self.send(self.session.hello(resend=True))


def steps(pair: SessionPair) -> list[int]:
    return [int(r[5]) for r in pair.daemon.records]


def test_seqs_acks_and_the_window() -> None:
    pair = SessionPair(max_records=2, max_inflight=3)
    pair.online = False
    pair.log(0, 10)  # 5 frames of 2; the window lets 3 out
    pair.pump()
    s = pair.session
    assert list(s.unacked) == [1, 2, 3] and s.seq == 3 and len(pair.queue) == 4
    assert [len(p.decode(f).records) for f in s.unacked.values()] == [2, 2, 2]  # type: ignore[union-attr]
    assert s.receive(p.Ack(2)) == [Acked(2)]
    assert list(s.unacked) == [3] and s.acked_upto == 2
    pair.pump()  # two more fit now
    assert list(s.unacked) == [3, 4, 5] and not pair.queue
    assert s.receive(p.Ack(99)) == [Acked(99)]
    assert not s.unacked and s.acked_upto == 5  # never above the last seq used


def test_a_barrier_reply_acks_up_to_its_seq_and_answers() -> None:
    pair = SessionPair()
    pair.online = False
    pair.log(0, 4)
    fut = pair.flush()
    pair.pump()
    s = pair.session
    assert list(s.unacked) == [1, 2] and list(s.pending) == [1]
    assert s.pending[1][2] == 2  # the flush carries the seq sent before it
    events = s.receive(p.Done(1))
    assert events == [Acked(2), Answered(fut, p.Done(1))]
    assert not s.unacked and not s.pending
    assert s.receive(p.Done(1)) == []  # a second answer to the same req: nothing


def test_resend_after_a_reconnect_in_the_original_order() -> None:
    """The daemon restarts having journaled seq 1 only: the unacked frames and the unanswered
    requests go again, in the order first sent, and the daemon ends with every record once."""
    pair = SessionPair(max_records=2)
    pair.online = False  # the daemon is down: nothing is answered
    pair.log(0, 4)  # seqs 1, 2
    run = pair.start_run()  # framed after seq 2
    pair.log(4, 3)  # seqs 3 (2 records), 4 (1 record)
    flush = pair.flush()  # after seq 4
    pair.pump()
    s = pair.session
    first = list(pair.sent)
    assert list(s.unacked) == [1, 2, 3, 4] and sorted(s.pending) == [1, 2]
    pair.daemon.upto = 0
    pair.daemon.receive(first[0])  # the daemon had taken seq 1 before it went down
    pair.daemon.crash(journaled_upto=1)
    pair.sent.clear()
    pair.reconnect()
    hello = p.decode(pair.sent[0])
    assert isinstance(hello, p.Hello) and hello.req == s.resend_req
    assert hello.acked_floor == 0  # nothing was ever acked to this client
    # welcome(acked_seq=1) acks seq 1; then: seq 2, start_run, seq 3, seq 4, flush
    welcomed = [e for e in pair.events if isinstance(e, Welcomed)]
    assert len(welcomed) == 1 and welcomed[0].welcome.acked_seq == 1
    assert list(welcomed[0].resend) == [first[1], first[2], first[3], first[4], first[5]]
    assert pair.sent[1:] == list(welcomed[0].resend)
    assert steps(pair) == list(range(7))  # every record once, in order
    assert isinstance(run.result(0), p.RunStarted) and isinstance(flush.result(0), p.Done)
    assert not s.unacked and not s.pending and s.acked_upto == 4


def test_a_welcome_without_resend_sends_nothing_again() -> None:
    pair = SessionPair()
    pair.online = False
    pair.log(0, 2)
    pair.pump()
    s = pair.session
    hello = p.decode(s.hello(resend=False))  # the first hello of a connection
    assert isinstance(hello, p.Hello)
    events = s.receive(p.Welcome(hello.req, "d", 0, "/staging", 1 << 20))
    assert len(events) == 1 and isinstance(events[0], Welcomed)
    assert events[0].resend == () and s.connected
    s.disconnected()
    assert not s.connected and list(s.unacked) == [1]


def test_the_welcome_floor() -> None:
    """hello announces what was acked (not the last seq: spooled frames may not be sent yet); a
    welcome's acked_seq acks everything up to it, never beyond the last seq used."""
    pair = SessionPair(max_records=1)
    pair.online = False
    pair.log(0, 3)
    pair.pump()
    s = pair.session
    s.receive(p.Ack(1))
    for frame in (s.hello(resend=False), s.spool_hello()):
        hello = p.decode(frame)
        assert isinstance(hello, p.Hello)
        assert (hello.client_id, hello.pid, hello.host, hello.version) == (CID, 42, "host", "test")
        assert hello.acked_floor == 1
    assert p.decode(s.spool_hello()).req == 0  # type: ignore[union-attr]
    s.receive(p.Welcome(999, "d", 2, "/staging", 1 << 20))
    assert list(s.unacked) == [3] and s.acked_upto == 2
    s.receive(p.Welcome(999, "d", 50, "/staging", 1 << 20))
    assert not s.unacked and s.acked_upto == 3


def test_refusals() -> None:
    pair = SessionPair()
    pair.online = False
    fut = pair.start_run()
    pair.pump()
    s = pair.session
    (req,) = s.pending
    events = s.receive(p.ErrorReply(req, "invalid_request", "no such experiment"))
    assert events == [Refused(fut, "invalid_request", "no such experiment", req)]
    assert not s.pending
    # an error about no pending request is reported, not attached to anything
    assert s.receive(p.ErrorReply(None, "bad_msgpack", "x")) == [
        Refused(None, "bad_msgpack", "x", None)
    ]
    assert s.receive(p.ErrorReply(77, "bad_field", "y")) == [Refused(None, "bad_field", "y", 77)]


def test_a_frame_refused_whole_is_replaced_under_its_seq_and_no_barrier_waits_for_it() -> None:
    pair = SessionPair(max_records=40)
    s = pair.session
    s.max_frame = 1500  # the daemon's limit; the frame maker (4 MiB) does not know it yet
    other = "o" * 32
    huge = p.metric_wire(other, "big", 1.0, 1, 0, "m" * 3000)  # over the limit on its own
    pair.queue.extend([rec(0), rec(1), huge, *(rec(i) for i in range(2, 30))])
    pair.online = False  # the frame is "refused": the fake daemon never sees it
    pair.pump()
    (seq,) = s.unacked
    assert len(s.unacked[seq]) > s.max_frame

    # errors that name no refused frame of ours stay plain refusals
    assert s.receive(p.ErrorReply(None, "client_id_in_use", "x")) == [
        Refused(None, "client_id_in_use", "x", None)
    ]
    events = s.receive(p.ErrorReply(None, "frame_too_large", "frame is 4000 bytes"))
    (ev,) = events
    assert isinstance(ev, FrameReplaced) and ev.seq == seq
    assert s.unacked[seq] == ev.frame and len(ev.frame) <= s.max_frame
    kept = p.decode(ev.frame, max_frame=s.max_frame)
    assert isinstance(kept, p.Data) and kept.seq == seq
    assert [r.step for r in kept.records] == list(range(len(kept.records)))  # type: ignore[union-attr]
    # the records that did not fit with them are queued again, in order, after them
    assert [r[5] for r in ev.later] == list(range(len(kept.records), 30))
    (failure,) = ev.failures
    assert failure.record is not None and failure.record.run_id == other
    assert failure.message.startswith(f"run {other}: not stored: the daemon refused its frame")
    assert "frame_too_large" in failure.message
    # reported once, at a barrier of its run (or of all runs)
    assert s.take_refused(RUN) == []
    assert s.take_refused(other) == [failure]
    assert s.take_refused() == []

    # the replacement fills the seq: a barrier after it completes
    pair.online = True
    pair.send(ev.frame)
    assert not s.unacked
    pair.queue.extendleft(reversed(ev.later))
    fut = pair.flush()
    pair.pump()
    assert isinstance(fut.result(0), p.Done)
    assert sorted(steps(pair)) == list(range(30))


def test_a_refused_frame_with_no_record_to_keep_becomes_an_empty_data_frame() -> None:
    s = Session(CID, pid=1, host="h", version="t")
    s.max_frame = 1024
    frame = p.encode_data(CID, 1, [["p", RUN, "k", "v" * 2000]])
    s.unacked[1] = frame
    (ev,) = s.receive(p.ErrorReply(None, "frame_too_large", "too large"))
    assert isinstance(ev, FrameReplaced)
    assert p.decode(ev.frame) == p.Data(CID, 1, ())
    assert ev.later == () and len(ev.failures) == 1
    assert s.take_refused(RUN) == list(ev.failures)


def test_journal_full_resends_the_unacked_frames_once_later() -> None:
    pair = SessionPair()
    pair.online = False
    pair.log(0, 4)
    pair.flush()
    pair.pump()
    s = pair.session
    frames = list(s.unacked.values())
    events = s.receive(p.ErrorReply(None, "journal_full", "journal is full"), now=10.0)
    assert events == [JournalFull("journal is full", 10.0 + JOURNAL_FULL_RETRY_S)]
    assert s.receive(p.ErrorReply(None, "journal_full", "again"), now=10.5) == []  # armed once
    assert s.resend_due(10.0 + JOURNAL_FULL_RETRY_S - 0.01) == []
    assert s.resend_due(10.0 + JOURNAL_FULL_RETRY_S) == frames  # data only: the flush is held
    assert s.resend_due(20.0) == [] and s.resend_at == 0.0
    events = s.receive(p.ErrorReply(None, "journal_full", "full"), now=30.0)
    assert events == [JournalFull("full", 30.0 + JOURNAL_FULL_RETRY_S)]  # re-armed


def test_abandoned_requests_are_forgotten() -> None:
    pair = SessionPair()
    pair.online = False
    fut = pair.flush()
    pair.pump()
    s = pair.session
    (req,) = s.pending
    s.abandon(fut)
    assert not s.pending and s.in_send_order() == []
    assert s.receive(p.Done(req)) == []  # a late answer goes nowhere


def test_frames_replayed_from_the_spool_are_kept_like_fresh_ones() -> None:
    s = Session(CID, pid=1, host="h", version="v")
    data = p.encode_data(CID, 7, [rec(0)])
    start = p.encode(p.StartRun(5, CID, run_name="x"))
    end = p.encode(p.EndRun(6, CID, 7, RUN, "FINISHED", 1))
    assert s.replayed(s.spool_hello(), p.decode(s.spool_hello())) is False  # not sent
    for frame in (data, start, end):
        assert s.replayed(frame, p.decode(frame)) is True
    assert dict(s.unacked) == {7: data}
    assert s.pending == {5: (None, start, 0), 6: (None, end, 7)}
    assert s.in_send_order() == [start, data, end]
    # the daemon's answer to a spooled request (nobody waits for it) still acks
    assert s.receive(p.Done(6)) == [Acked(7), Answered(None, p.Done(6))]


@pytest.mark.parametrize(
    ("pending", "unsettled"),
    [
        ([], False),
        ([p.Flush(1, CID, 0), p.StatusRequest(2)], False),
        ([p.Flush(1, CID, 0), p.StartRun(2, CID)], True),
    ],
)
def test_unsettled(pending: list[p.ClientMessage], unsettled: bool) -> None:
    s = Session(CID, pid=1, host="h", version="v")
    for msg in pending:
        s.pending[msg.req] = (None, p.encode(msg), 0)  # type: ignore[union-attr]
    assert s.unsettled() is unsettled
    s.unacked[1] = p.encode_data(CID, 1, [rec(0)])
    assert s.unsettled() is True


def test_an_accepted_end_run_is_no_longer_spooled_but_still_answered() -> None:
    """``accepted``: the daemon holds the end_run durably. The request stays pending (a resend
    after a reconnect is harmless, and ``done`` still answers it) but is not spooled and does
    not make the session unsettled; its ``done`` answers it as usual."""
    pair = SessionPair()
    pair.online = False
    pair.log(0, 2)  # seq 1
    end = pair.request(lambda req, seq: p.EndRun(req, CID, seq, RUN, "FINISHED", 5))
    pair.pump()
    s = pair.session
    (req,) = s.pending
    assert s.receive(p.Ack(1)) == [Acked(1)]
    assert s.unsettled() is True  # an end_run nobody holds yet
    assert s.receive(p.Accepted(req)) == [Acked(1), Accepted(end)]
    assert s.receive(p.Accepted(999)) == []  # not a pending request: nothing
    assert s.unsettled() is False
    assert s.in_send_order(held=False) == []  # what goes to the spool
    assert len(s.in_send_order()) == 1  # what a reconnect resends
    assert s.receive(p.Done(req)) == [Acked(1), Answered(end, p.Done(req))]
    assert not s.pending and not s.accepted


def test_accepted_acknowledges_every_run_s_messages_up_to_the_end_run_s_seq() -> None:
    """PROTOCOL.md 6.8: ``accepted`` means the daemon holds every sequenced message of this
    client with seq <= the end_run's seq — of all runs, the counter is shared — so the client
    forgets exactly those (and does not spool the end_run); a later seq stays kept."""
    s = Session(CID, pid=1, host="h", version="v")
    for seq, run in ((1, "run-a"), (2, "run-b"), (3, "run-a")):
        s.unacked[seq] = p.encode_data(CID, seq, [["m", run, "k", 1.0, 5, seq, None, None, None]])
    end = p.EndRun(7, CID, 3, "run-b", "FINISHED", 5)
    s.pending[7] = (None, p.encode(end), 3)
    s.unacked[4] = p.encode_data(CID, 4, [["m", "run-a", "k", 1.0, 5, 4, None, None, None]])
    s.seq = 4
    assert s.receive(p.Accepted(7)) == [Acked(3), Accepted(None)]
    assert list(s.unacked) == [4] and s.acked_upto == 3  # run-a's seqs 1 and 3 too
    assert s.in_send_order(held=False) == [s.unacked[4]]  # what goes to the spool
