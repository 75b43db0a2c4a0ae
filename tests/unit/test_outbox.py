"""The one queue -> frames path (tracker_client.outbox): limits by record count and by bytes,
order, seqs, give-back, and the importer's split of an oversized frame."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from typing import Any

from tracker_client import protocol as p
from tracker_client.outbox import RECORDS_PER_FRAME, FrameMaker, Unit, records_in
from tracker_client.spool_import import derived_client_id, split_records

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
