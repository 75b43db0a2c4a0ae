"""The client's spool side (delivery.spill) with real spool files in tmp_path, no sockets:
the overflow goes to the file in order and only then uses its seqs, a failed write gives
everything back, the exit spool holds unsettled frames before the queue, and a reopened spool
is replayed in order into the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tracker_client import protocol as p
from tracker_client.delivery.outbox import Call, FrameMaker, Outbox
from tracker_client.delivery.session import Session
from tracker_client.delivery.spill import Spiller
from tracker_client.wire.framing import scan

CID = "5" * 32
RUN = "r" * 32


def rec(i: int) -> list[Any]:
    return p.metric_wire(RUN, "k", float(i), 1_700_000_000_000 + i, i)


def parts(spool_dir: Path, max_buffer: int = 4) -> tuple[Session, Outbox, Spiller]:
    session = Session(CID, pid=7, host="h", version="t")
    outbox = Outbox(
        max_buffer=max_buffer,
        policy="spool",
        maker=lambda q: FrameMaker(q, lambda: CID, max_records=2),
        wake=lambda: None,
        stopped=lambda: False,
    )
    outbox.idle = False
    spiller = Spiller(session, outbox)
    spiller.spool_dir = spool_dir
    return session, outbox, spiller


def raw_frames(path: Path) -> list[bytes]:
    result = scan(path.read_bytes())
    assert result.problem is None
    return [payload for _, payload in result.frames]


def file_frames(path: Path) -> list[p.Message]:
    return [p.decode(payload, max_frame=2**31) for payload in raw_frames(path)]


def steps(msg: p.Message) -> list[int]:
    assert isinstance(msg, p.Data)
    return [r.step for r in msg.records if isinstance(r, p.Metric)]


def queued_steps(outbox: Outbox) -> list[int]:
    return [item[5] for item in outbox.queue if type(item) is list]


def test_spill_moves_the_oldest_part_in_order_then_uses_the_seqs(tmp_path: Path) -> None:
    session, outbox, spiller = parts(tmp_path)
    for i in range(6):
        outbox.put(rec(i))
    assert outbox.should_spill()
    spiller.spill()
    assert queued_steps(outbox) == [4, 5]  # down to 3 x max_buffer / 4 = 3 or fewer
    assert session.seq == 2 and not session.unacked  # placed, not in flight
    assert spiller.spooled_frames == 2 and outbox.spool_error is None
    frames = file_frames(spiller.path())
    hello = frames[0]
    assert isinstance(hello, p.Hello) and hello.req == 0 and hello.acked_floor == 0
    assert [steps(f) for f in frames[1:]] == [[0, 1], [2, 3]]
    assert [f.seq for f in frames[1:]] == [1, 2]  # type: ignore[union-attr]


def test_a_failed_spill_gives_everything_back_and_retries_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    session, outbox, spiller = parts(blocker / "spool")  # cannot be created: ENOTDIR
    for i in range(6):
        outbox.put(rec(i))
    spiller.spill()
    assert queued_steps(outbox) == list(range(6)) and session.seq == 0  # nothing used
    assert outbox.spool_error is not None and "cannot open the spool" in outbox.spool_error
    retry = spiller.retry_at()
    assert retry > 0
    spiller.spool_dir = tmp_path / "spool"  # the disk is back
    spiller.spill()  # too early: not tried again yet
    assert queued_steps(outbox) == list(range(6)) and spiller.retry_at() == retry
    monkeypatch.setattr("tracker_client.delivery.spill.time.monotonic", lambda: retry + 0.001)
    spiller.spill()
    assert queued_steps(outbox) == [4, 5] and session.seq == 2
    assert outbox.spool_error is None and spiller.retry_at() == 0.0


def test_the_exit_spool_keeps_unsettled_frames_before_the_queue(tmp_path: Path) -> None:
    session, outbox, spiller = parts(tmp_path, max_buffer=100)
    for i in range(4):
        outbox.put(rec(i))
    outbox.put_control(Call(lambda req, seq: p.StartRun(req, CID, run_name="x"), None, False))
    outbox.put(rec(4))
    for unit in outbox.take_all(1, session.new_req, down_to=1):  # sent, never acked
        session.placed(unit, in_flight=True)
    outbox.put(rec(5))
    assert list(session.unacked) == [1, 2] and len(session.pending) == 1
    spiller.spool_everything()
    assert spiller.unspooled == 0 and spiller.spool is None and len(outbox) == 0
    raw = raw_frames(spiller.path())
    frames = file_frames(spiller.path())
    assert isinstance(frames[0], p.Hello)
    assert [type(f).__name__ for f in frames[1:]] == ["Data", "Data", "StartRun", "Data"]
    assert [steps(f) for f in (frames[1], frames[2], frames[4])] == [[0, 1], [2, 3], [4, 5]]
    assert frames[4].seq == 3 and session.seq == 3  # type: ignore[union-attr]

    # the same transport starts again: the spool is reopened and replayed, in order
    session2, outbox2, spiller2 = parts(tmp_path)
    spiller2.reopen()
    assert spiller2.has_unsent()
    first, rest = spiller2.replay(room=2), spiller2.replay(room=64)
    assert first is not None and rest is not None and len(first) == 1  # the hello took a place
    replayed = first + rest
    assert replayed == raw[1:]  # the hello is not sent again
    assert not spiller2.has_unsent()
    assert list(session2.unacked) == [1, 2, 3] and len(session2.pending) == 1


def test_nothing_unsettled_leaves_no_file(tmp_path: Path) -> None:
    session, outbox, spiller = parts(tmp_path)
    outbox.put_control(Call(lambda req, seq: p.Flush(req, CID, seq), None, False))
    for unit in outbox.take_all(1, session.new_req):
        session.placed(unit, in_flight=True)
    spiller.spool_everything()  # an unanswered flush means nothing to a later daemon
    assert not spiller.path().exists() and spiller.unspooled == 0
