"""The client's outbox (delivery.outbox): the one queue -> frames path (limits by record
count and by bytes, order, seqs, give-back), the importer's split of an oversized frame, and the
bounded queue's three policies (pure: the I/O thread is played by the test)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

import pytest

from tracker_client import protocol as p
from tracker_client.delivery.outbox import RECORDS_PER_FRAME, FrameMaker, Outbox, Unit, records_in
from tracker_client.delivery.spool_import import derived_client_id, split_records

CID = "6f1c2a9e0b3d4c5e8f7a1b2c3d4e5f60"
RUN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def metric(i: int, key: str = "loss") -> list[Any]:
    return ["m", RUN, key, float(i), 1_700_000_000_000 + i, i, None, None, None]


class Call:
    def __init__(self, make: Any, future: Future[Any] | None, sequenced: bool) -> None:
        self.make, self.future, self.sequenced = make, future, sequenced


def drain(maker: FrameMaker, seq: int = 0) -> list[Unit]:
    units = []
    req = iter(range(1, 10**6))
    while (unit := maker.take(seq + 1, lambda: next(req))) is not None:
        units.append(unit)
        if unit.sequenced:
            seq = unit.seq
    return units


def decoded(unit: Unit) -> p.Message:
    return p.decode(unit.frame, max_frame=2**31)


def test_frames_hold_at_most_1000_records_by_default() -> None:
    q: deque[Any] = deque(metric(i) for i in range(37_457))
    units = drain(FrameMaker(q, lambda: CID))
    assert [len(u.records) for u in units] == [1000] * 37 + [457]
    assert [u.seq for u in units] == list(range(1, 39))
    msgs = [decoded(u) for u in units]
    assert all(isinstance(m, p.Data) and m.client_id == CID for m in msgs)
    steps = [r.step for m in msgs for r in m.records]  # type: ignore[union-attr]
    assert steps == list(range(37_457))  # every record once, in order
    assert not q
    assert RECORDS_PER_FRAME == 1000


def test_frames_respect_the_byte_limit() -> None:
    long_key = "k" * 200
    q: deque[Any] = deque(metric(i, long_key) for i in range(5000))
    limit = 16 * 1024
    units = drain(FrameMaker(q, lambda: CID, max_bytes=limit))
    assert all(len(u.frame) <= limit for u in units)
    assert sum(len(u.records) for u in units) == 5000
    assert max(len(u.records) for u in units) < 1000  # the bytes, not the count, bound them
    assert max(len(u.frame) for u in units) > limit // 2  # and frames are not needlessly small
    steps = [r.step for u in units for r in decoded(u).records]  # type: ignore[union-attr]
    assert steps == list(range(5000))


def test_control_items_get_their_own_frames_in_order() -> None:
    fut: Future[Any] = Future()
    flush = Call(lambda req, seq: p.Flush(req, CID, seq, None), fut, sequenced=False)
    art = Call(
        lambda req, seq: p.LogArtifact(CID, seq, RUN, "/s/x/y/f", None), None, sequenced=True
    )
    q: deque[Any] = deque([metric(0), metric(1), flush, metric(2), art, metric(3)])
    units = drain(FrameMaker(q, lambda: CID))
    kinds = [type(decoded(u)).__name__ for u in units]
    assert kinds == ["Data", "Flush", "Data", "LogArtifact", "Data"]
    assert [u.seq for u in units] == [1, 1, 2, 3, 4]  # a barrier carries the seq before it
    assert decoded(units[1]).seq == 1  # type: ignore[union-attr]
    assert fut.running()


def test_a_cancelled_request_is_dropped_not_framed() -> None:
    fut: Future[Any] = Future()
    fut.cancel()
    q: deque[Any] = deque([Call(lambda req, seq: p.StatusRequest(req), fut, False), metric(0)])
    units = drain(FrameMaker(q, lambda: CID))
    assert [type(decoded(u)).__name__ for u in units] == ["Data"]


def test_give_back_restores_the_queue_and_the_seq_is_reused() -> None:
    records = [metric(i) for i in range(2500)]
    q: deque[Any] = deque(records)
    maker = FrameMaker(q, lambda: CID)
    taken = [maker.take(1, lambda: 1), maker.take(2, lambda: 1)]
    for unit in reversed(taken):  # e.g. the spool write failed: nothing placed
        assert unit is not None
        maker.give_back(unit)
    assert list(q) == records
    again = maker.take(1, lambda: 1)
    assert again is not None and again.seq == 1 and again.frame == taken[0].frame  # type: ignore[union-attr]


def test_records_in_counts_data_and_artifacts() -> None:
    assert records_in(p.encode_data(CID, 1, [metric(0), metric(1)])) == 2
    assert records_in(p.encode(p.LogArtifact(CID, 2, RUN, "/s/a/b/f", None))) == 1
    assert records_in(p.encode(p.Flush(1, CID, 2, None))) == 0


def test_split_of_an_oversized_frame_is_deterministic_and_within_limits() -> None:
    records = [metric(i) for i in range(37_000)]
    derived = derived_client_id(CID, 1)
    assert len(derived) == 32 and derived == derived_client_id(CID, 1) != derived_client_id(CID, 2)
    frames = split_records(derived, records, 1000, 64 * 1024)
    assert frames == split_records(derived, records, 1000, 64 * 1024)
    msgs = [p.decode(f, max_frame=64 * 1024) for f in frames]
    assert all(isinstance(m, p.Data) and len(m.records) <= 1000 for m in msgs)
    assert [m.seq for m in msgs] == list(range(1, len(frames) + 1))  # type: ignore[union-attr]
    assert sum(len(m.records) for m in msgs) == 37_000  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------
# the bounded queue and its policies


class Box:
    """An Outbox with a recording wake-up and a switch for "the I/O thread stopped"."""

    def __init__(self, policy: str, max_buffer: int = 5) -> None:
        self.wakes = 0
        self.woken = threading.Event()
        self.stopped = False
        self.outbox = Outbox(
            max_buffer=max_buffer,
            policy=policy,
            maker=lambda q: FrameMaker(q, lambda: CID, max_records=2),
            wake=self._wake,
            stopped=lambda: self.stopped,
        )

    def _wake(self) -> None:
        self.wakes += 1
        self.woken.set()


def steps_in(outbox: Outbox) -> list[int]:
    return [item[5] for item in outbox.queue if type(item) is list]


def test_put_wakes_the_io_thread_only_while_it_sleeps() -> None:
    box = Box("spool", max_buffer=100)
    box.outbox.put(metric(0))
    box.outbox.idle = False  # the I/O thread is awake
    for i in range(1, 10):
        box.outbox.put(metric(i))
    assert box.wakes == 1 and steps_in(box.outbox) == list(range(10))


def test_drop_oldest_keeps_the_newest_counts_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = Box("drop-oldest", max_buffer=5)
    box.outbox.idle = False
    with caplog.at_level(logging.WARNING, logger="tracker_client"):
        for i in range(12):
            box.outbox.put(metric(i))
    assert steps_in(box.outbox) == [7, 8, 9, 10, 11]
    assert box.outbox.dropped == 7
    assert box.outbox.take_lost() == 0  # dropped by policy, not lost
    assert len([r for r in caplog.records if "drop-oldest" in r.message]) == 1


def test_control_items_are_never_dropped() -> None:
    box = Box("drop-oldest", max_buffer=3)
    call = Call(lambda req, seq: p.Flush(req, CID, seq), Future(), sequenced=False)
    box.outbox.put(metric(0))
    box.outbox.put_control(call)
    for i in range(1, 6):
        box.outbox.put(metric(i))
    q = list(box.outbox.queue)
    assert q[0] is call  # record 0 was dropped, the flush stays at the front
    assert steps_in(box.outbox) == [1, 2, 3, 4, 5] and box.outbox.dropped == 1


def test_spool_policy_never_waits_while_the_spool_can_be_written() -> None:
    box = Box("spool", max_buffer=5)
    box.outbox.idle = False
    for i in range(9):  # over max_buffer, under 2 x: the I/O thread is woken to spill
        box.outbox.put(metric(i))
    assert steps_in(box.outbox) == list(range(9)) and box.outbox.dropped == 0
    assert box.wakes == 4  # one wake per put at or over the bound (puts 6..9)


def test_a_full_spool_queue_always_gets_a_spill() -> None:
    """A put that finds the queue full (2 x max_buffer) waits while len >= max_buffer; the I/O
    thread must then spill at every length the put waits at, including exactly max_buffer
    (it once spilled only above it, and such a put waited forever)."""
    box = Box("spool", max_buffer=5)
    box.outbox.idle = False
    for i in range(10):
        box.outbox.put(metric(i))
    assert box.outbox.should_spill()
    while len(box.outbox) > 5:
        box.outbox.queue.pop()
    assert len(box.outbox) == 5 and box.outbox.should_spill()
    box.outbox.queue.pop()
    assert not box.outbox.should_spill()  # under the bound: a put would not wait either
    assert not Box("block").outbox.should_spill()


def test_spool_policy_without_spool_holds_twice_the_buffer_then_loses_the_oldest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = Box("spool", max_buffer=5)
    box.outbox.idle = False
    box.outbox.spool_error = "No space left on device"
    with caplog.at_level(logging.WARNING, logger="tracker_client"):
        for i in range(15):
            box.outbox.put(metric(i))
    assert steps_in(box.outbox) == list(range(5, 15))  # the newest 2 x max_buffer
    assert box.outbox.dropped == 5 and box.outbox.lost_total == 5
    assert box.outbox.lost_reason == "No space left on device"
    assert box.outbox.take_lost() == 5 and box.outbox.take_lost() == 0  # reported once
    assert len([r for r in caplog.records if "DROPPED" in r.message]) == 1


def test_block_policy_waits_for_room() -> None:
    box = Box("block", max_buffer=3)
    box.outbox.idle = False
    for i in range(3):
        box.outbox.put(metric(i))
    box.woken.clear()
    done = threading.Event()

    def producer() -> None:
        box.outbox.put(metric(3))
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert box.woken.wait(5)  # it asked the I/O thread for room ...
    assert not done.is_set() and steps_in(box.outbox) == [0, 1, 2]  # ... and waits
    units = box.outbox.take_all(1, lambda: 1, down_to=1)  # the I/O thread sends one frame
    assert [u.seq for u in units] == [1] and len(units[0].records) == 2
    box.outbox.space_freed()
    t.join(5)
    assert done.is_set() and steps_in(box.outbox) == [2, 3]


def test_a_blocked_put_returns_when_the_io_thread_stops() -> None:
    box = Box("block", max_buffer=2)
    box.outbox.idle = False
    box.outbox.put(metric(0))
    box.outbox.put(metric(1))
    t = threading.Thread(target=box.outbox.put, args=(metric(2),))
    t.start()
    assert box.woken.wait(5)
    box.stopped = True
    box.outbox.space_freed()
    t.join(5)
    assert not t.is_alive() and steps_in(box.outbox) == [0, 1, 2]


def test_take_all_and_give_back_keep_order_and_seqs() -> None:
    box = Box("spool", max_buffer=100)
    for i in range(9):
        box.outbox.put(metric(i))
    units = box.outbox.take_all(5, lambda: 1, down_to=4)  # frames of 2 until <= 4 are left
    assert [u.seq for u in units] == [5, 6, 7] and steps_in(box.outbox) == [6, 7, 8]
    box.outbox.give_back(units)
    assert steps_in(box.outbox) == list(range(9))
    assert [len(u.records) for u in box.outbox.take_all(1, lambda: 1)] == [2, 2, 2, 2, 1]


def test_reset_empties_and_zeroes() -> None:
    box = Box("drop-oldest", max_buffer=2)
    for i in range(5):
        box.outbox.put(metric(i))
    box.outbox.reset()
    assert len(box.outbox) == 0 and box.outbox.dropped == 0 and box.outbox.idle
    box.outbox.put(metric(9))
    assert steps_in(box.outbox) == [9]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="policy must be one of spool, block, drop-oldest"):
        Box("nope")
    with pytest.raises(ValueError, match="max_buffer must be >= 1"):
        Box("spool", max_buffer=0)
