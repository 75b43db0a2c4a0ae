"""The feeder (feeder.py) on a real journal in tmp_path: spill over the memory budget, read back
from the spill position in journal order, and the replay index built at start."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from tests.support.fakes import FakeBackend
from tracker_client import protocol as p
from tracker_daemon.commit.barriers import Barriers
from tracker_daemon.commit.batcher import Origin
from tracker_daemon.commit.committer import Committer
from tracker_daemon.commit.lanes import Lanes
from tracker_daemon.commit.ledger import Ledger
from tracker_daemon.intake.clients import ClientInfo
from tracker_daemon.journal.feeder import KIND_SEQUENCED, Feeder
from tracker_daemon.journal.journal import Journal, Position
from tracker_daemon.journal.settlement import Settlement
from tracker_daemon.ops.status import Counters

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def log_batch(*args: object) -> None:
    raise AssertionError("FakeBackend answers instead")


def identity(run_id: str, replayed: bool = False) -> str:
    return run_id


class World:
    def __init__(self, journal_dir: Path, budget: int) -> None:
        self.journal = Journal(journal_dir, segment_bytes=1 << 20, max_bytes=1 << 24)
        self.mark = self.journal.open()
        self.counters = Counters()
        self.ledger = Ledger()
        self.clients: dict[str, ClientInfo] = {}
        barriers = Barriers(self.ledger.committed_upto, expedite=lambda cid: None, timeout=5.0)
        self.settlement = Settlement(
            self.ledger,
            self.journal,
            barriers,
            self.counters,
            deadletter=journal_dir.parent / "deadletter.jsonl",
            on_settled=lambda: None,
        )
        self.backend = FakeBackend()
        self.committer = Committer(
            Lanes(1, max_age=60.0),
            self.backend,
            self.settlement,
            self.counters,
            log_batch=log_batch,
            lookup=identity,
            runs_of=lambda cid: self.clients[cid].runs,
            clock=lambda: 0.0,
        )
        self.artifacts: list[tuple[Origin, bool]] = []
        self.feeder = Feeder(
            self.journal,
            self.settlement,
            self.committer,
            self.counters,
            budget=budget,
            client=self.client,
            submit_artifact=lambda origin, msg, replayed: self.artifacts.append((origin, replayed)),
        )

    def client(self, cid: str) -> ClientInfo:
        return self.clients.setdefault(cid, ClientInfo(cid))

    def receive(self, msg: p.Data | p.LogArtifact) -> Position:
        """What intake does with a new sequenced message: journal it, register it, offer it."""
        pos = self.journal.append(KIND_SEQUENCED + p.encode(msg))
        count = len(msg.records) if isinstance(msg, p.Data) else 1
        self.settlement.journaled(msg.client_id, msg.seq, count, pos, 0.0)
        self.client(msg.client_id)
        self.feeder.offer(msg)
        return pos

    async def commit_all(self) -> list[int]:
        """Commit every buffered batch; the steps committed, in order."""
        self.committer.expedite_all()
        steps = []
        while (batch := self.committer.lanes.pop_ready(0, 0.0)) is not None:
            steps += [m.step for m in batch.metrics]
            await self.committer.commit(batch)
        return steps


def data(cid: str, seq: int, steps: range, run: str = "r") -> p.Data:
    return p.Data(cid, seq, tuple(p.Metric(run, "loss", 1.0, 1, s) for s in steps))


async def test_over_the_budget_messages_stay_in_the_journal_and_are_read_back_in_order(
    tmp_path: Path,
) -> None:
    w = World(tmp_path / "journal", budget=4)
    w.receive(data("c1", 1, range(0, 3)))
    w.receive(data("c1", 2, range(3, 6)))  # 3 < 4 buffered: still delivered
    assert w.committer.lanes.pending == 6 and not w.feeder.spilling
    spill_at = w.receive(data("c2", 1, range(6, 9)))  # 6 >= 4: spill from here
    w.receive(data("c1", 3, range(9, 12)))  # behind the spill: not delivered either
    w.receive(p.LogArtifact("c1", 4, "r", "/staged/x", None))
    assert w.feeder.spill_from == spill_at
    assert w.counters.spills == 1
    assert w.committer.lanes.pending == 6 and w.artifacts == []

    assert await w.commit_all() == list(range(6))
    await w.feeder.feed_once()  # everything left fits in one chunk: the spill ends
    assert not w.feeder.spilling
    assert w.artifacts == [(Origin("c1", 4), True)]
    assert await w.commit_all() == list(range(6, 12))
    assert w.counters.committed == 12
    assert (w.ledger.committed_upto("c1"), w.ledger.committed_upto("c2")) == (3, 1)
    assert w.settlement.positions == {("c1", 4): w.settlement.positions[("c1", 4)]}
    w.receive(data("c1", 5, range(12, 13)))  # direct delivery again
    assert w.committer.lanes.pending == 1


async def test_read_back_skips_entries_no_longer_outstanding(tmp_path: Path) -> None:
    w = World(tmp_path / "journal", budget=1)
    w.receive(data("c1", 1, range(0, 2)))
    spill_at = w.receive(data("c1", 2, range(2, 4)))
    w.receive(data("c1", 3, range(4, 6)))
    assert w.feeder.spill_from == spill_at
    # seq 2's entry is settled some other way meanwhile (as after a duplicate at replay)
    w.settlement.positions.pop(("c1", 2))
    await w.commit_all()
    await w.feeder.feed_once()
    assert await w.commit_all() == [4, 5]


async def test_a_frame_records_every_run_it_touches_and_fails_bad_records_at_once(
    tmp_path: Path,
) -> None:
    w = World(tmp_path / "journal", budget=100)
    bad = p.Metric("r3", "", 1.0, 1, 0)  # an empty key: refused before MLflow
    r1, r2 = data("c1", 1, range(2), "r1").records, data("c1", 1, range(1), "r2").records
    msg = p.Data("c1", 1, (*r1, bad, *r2))
    w.receive(msg)
    assert w.clients["c1"].runs == {"r1", "r2"}  # before: only the first run, r1
    assert w.counters.failed == 1 and w.committer.lanes.pending == 3


async def test_recover_indexes_the_journal_from_its_mark(tmp_path: Path) -> None:
    first = World(tmp_path / "journal", budget=100)
    first.receive(data("c1", 1, range(0, 2)))
    mark_at = first.receive(data("c1", 2, range(2, 5)))
    first.receive(data("c2", 1, range(5, 6)))
    first.journal.append(KIND_SEQUENCED + p.encode(data("c1", 2, range(2, 5))))  # written twice
    first.receive(p.LogArtifact("c2", 2, "r", "/staged/y", "dir"))
    first.journal.append(b"X" + b"not a sequenced entry")
    first.journal.write_mark(mark_at, {"c1": 1, "c9": 7})
    first.journal.close()

    w = World(tmp_path / "journal", budget=100)
    assert w.mark.position == mark_at
    entries, records = w.feeder.recover(w.mark.position, w.mark.clients)
    assert (entries, records) == (3, 5)  # c1:2 (3), c2:1 (1), the artifact (1); not the copy
    assert w.counters.replayed == 5
    assert w.feeder.spill_from == mark_at
    assert sorted(w.settlement.positions) == [("c1", 2), ("c2", 1), ("c2", 2)]
    assert w.ledger.received_upto("c1") == 2 and w.ledger.received_upto("c9") == 7
    assert sorted(w.clients) == ["c1", "c9"]  # the mark's clients; the others when fed
    assert w.committer.lanes.pending == 0  # nothing delivered yet
    # what the previous daemon received (offline ids of these wait for a resent start_run)
    assert w.feeder.replayed(Origin("c1", 2)) and w.feeder.replayed(Origin("c2", 2))
    assert not w.feeder.replayed(Origin("c1", 3)) and not w.feeder.replayed(Origin("c9", 1))
    await w.feeder.feed_once()
    assert not w.feeder.spilling
    assert sorted(w.clients) == ["c1", "c2", "c9"]
    assert w.artifacts == [(Origin("c2", 2), True)]
    assert await w.commit_all() == [2, 3, 4, 5]
    assert (w.ledger.committed_upto("c1"), w.ledger.committed_upto("c2")) == (2, 1)


async def test_a_record_that_does_not_decode_fails_alone_live_and_at_replay(
    tmp_path: Path,
) -> None:
    good = [["m", "run-b", "loss", 1.0, 1, s, None, None, None] for s in range(3)]
    bad = ["m", "run-a", "bad", 1.0, 2**63, 0, None, None, None]  # timestamp outside int64
    raw = msgpack.packb(
        [1, "data", {"client_id": "c1", "seq": 1, "records": [good[0], bad, *good[1:]]}]
    )
    msg = p.decode(raw)
    assert isinstance(msg, p.Data) and isinstance(msg.records[1], p.Unreadable)

    for replay in (False, True):
        w = World(tmp_path / f"journal-{replay}", budget=0 if replay else 100)
        pos = w.journal.append(KIND_SEQUENCED + raw)  # intake journals the frame verbatim
        w.settlement.journaled("c1", 1, len(msg.records), pos, 0.0)
        w.feeder.offer(msg)
        if replay:  # over the budget: read back from the journal, decoded there
            assert w.feeder.spilling
            await w.feeder.feed_once()
        assert w.counters.failed == 1 and w.committer.lanes.pending == 3
        assert w.clients["c1"].runs == {"run-b"}
        assert await w.commit_all() == [0, 1, 2]
        assert w.ledger.committed_upto("c1") == 1  # the frame is done: a barrier completes
        assert w.ledger.take_failures("c1", "run-b") == []
        (failure,) = w.ledger.take_failures("c1", "run-a")
        assert failure.record is None and failure.code == "INVALID_PARAMETER_VALUE"
        assert failure.message == (
            "run run-a: record not stored, it does not decode: data.records[1].timestamp: "
            "9223372036854775808 is outside int64 (-2**63 .. 2**63-1)"
        )
