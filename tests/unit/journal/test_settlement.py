"""Settlement and barriers (settlement.py, barriers.py) on a real journal in tmp_path: the
ledger's progress settles journal entries and releases barriers; failures are dead-lettered."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import anyio
import pytest

from tracker_client import protocol as p
from tracker_daemon.commit.barriers import Barriers
from tracker_daemon.commit.batcher import Origin
from tracker_daemon.commit.ledger import Ledger
from tracker_daemon.journal.journal import Journal
from tracker_daemon.journal.settlement import Settlement
from tracker_daemon.ops.status import Counters

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.journal = Journal(tmp_path / "journal", segment_bytes=1 << 20, max_bytes=1 << 24)
        self.journal.open()
        self.ledger = Ledger()
        self.expedited: list[str] = []
        self.barriers = Barriers(
            self.ledger.committed_upto, expedite=self.expedited.append, timeout=5.0
        )
        self.counters = Counters()
        self.mark_wakes = 0
        self.deadletter = tmp_path / "deadletter.jsonl"
        self.settlement = Settlement(
            self.ledger,
            self.journal,
            self.barriers,
            self.counters,
            deadletter=self.deadletter,
            on_settled=self.wake_mark,
        )

    def wake_mark(self) -> None:
        self.mark_wakes += 1

    def journal_message(self, cid: str, seq: int, count: int) -> None:
        pos = self.journal.append(b"D" + f"{cid}:{seq}".encode())
        self.settlement.journaled(cid, seq, count, pos, written_at=100.0 + seq)


def rec(step: int) -> p.Metric:
    return p.Metric("r", "loss", 1.0, 1, step)


async def test_settling_a_message_settles_its_entry_and_releases_its_barrier(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.journal_message("c1", 1, 2)
    w.journal_message("c1", 2, 1)
    w.journal_message("c2", 1, 1)
    pos = dict(w.settlement.positions)
    assert w.journal.low_water() == pos[("c1", 1)]
    assert w.settlement.oldest_uncommitted_age(now=111.0) == 10.0  # c1:1 written at 101
    released: list[bool] = []

    async def wait(seq: int) -> None:
        released.append(await w.barriers.wait("c1", seq))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, 2)
        await anyio.wait_all_tasks_blocked()
        assert w.expedited == ["c1"] and w.barriers.waiting == 1
        w.settlement.settle(Origin("c1", 1), "r", rec(0), None)  # 1 of 2 records
        assert w.journal.low_water() == pos[("c1", 1)] and w.mark_wakes == 0
        w.settlement.committed(Counter({Origin("c1", 1): 1, Origin("c2", 1): 1}))
        assert w.journal.low_water() == pos[("c1", 2)] and w.mark_wakes == 2
        assert w.settlement.oldest_uncommitted_age(now=111.0) == 9.0
        await anyio.wait_all_tasks_blocked()
        assert released == []  # seq 2 is not done yet
        failure = p.Failure(rec(7), "INVALID_PARAMETER_VALUE", "bad value")
        w.settlement.settle(Origin("c1", 2), "r", rec(7), failure)
    assert released == [True]
    assert w.barriers.waiting == 0
    assert w.journal.low_water() == w.journal.head and w.mark_wakes == 3
    assert w.journal.outstanding == 0
    assert w.settlement.positions == {} and w.settlement.written_at == {}
    assert (w.counters.committed, w.counters.failed, w.counters.dead_lettered) == (3, 1, 1)
    assert w.ledger.take_failures("c1", "r") == [failure]
    [line] = w.deadletter.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["client_id"], entry["seq"], entry["run_id"], entry["code"]) == (
        "c1",
        2,
        "r",
        "INVALID_PARAMETER_VALUE",
    )


async def test_a_done_barrier_returns_at_once_without_expediting(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.journal_message("c1", 1, 1)
    w.settlement.settle(Origin("c1", 1), "r", rec(0), None)
    assert await w.barriers.wait("c1", 1) is True
    assert w.expedited == []


async def test_a_barrier_times_out_and_forgets_its_waiter(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.journal_message("c1", 1, 1)
    assert await w.barriers.wait("c1", 1, within=0.05) is False
    assert w.barriers.waiting == 0
    w.settlement.settle(Origin("c1", 1), "r", rec(0), None)  # nothing left to wake
    assert w.ledger.committed_upto("c1") == 1


async def test_a_message_of_no_records_is_done_at_once(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.journal_message("c1", 1, 0)
    assert w.journal.low_water() == w.journal.head and w.mark_wakes == 1
    assert w.ledger.committed_upto("c1") == 1


async def test_barriers_of_one_client_do_not_release_another(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.journal_message("c1", 1, 1)
    w.journal_message("c2", 1, 1)
    got: dict[str, bool] = {}

    async def wait(cid: str) -> None:
        got[cid] = await w.barriers.wait(cid, 1, within=0.3)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "c1")
        tg.start_soon(wait, "c2")
        await anyio.wait_all_tasks_blocked()
        assert sorted(w.expedited) == ["c1", "c2"]
        w.settlement.settle(Origin("c2", 1), "r", rec(0), None)
    assert got == {"c1": False, "c2": True}
