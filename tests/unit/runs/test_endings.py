"""Endings (anyio; a real RunBook in tmp_path, fakes for the sink and the barrier — run_fakes.py):
an END is journaled in runs.log before it counts as durable, applied once its records are done,
restored after a restart (and applied once: a replayed copy is not applied again), waits only for
what was received once its client is gone, and a failing end is reported in its Ending."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.run_fakes import Wiring
from tracker_client import protocol as p
from tracker_daemon.commit.ledger import Ledger
from tracker_daemon.errors import PermanentSinkError, SinkError
from tracker_daemon.ops.supervise import Supervisor
from tracker_daemon.runs.endings import Ending, Endings
from tracker_daemon.runs.runs import EndIntent, RunBook
from tracker_daemon.store.sink import RunHandle

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Rig:
    """Endings over a real RunBook; the ledger decides the barrier (``committed_upto``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.w = Wiring(tmp_path)
        self.ledger = Ledger()
        self.moved = anyio.Event()  # set when the test commits more (the barrier looks again)
        self.errors: list[SinkError] = []
        self.synced = 0
        self.endings = Endings(
            self.w.runs,
            Supervisor(),
            barrier=self.barrier,
            received_upto=self.ledger.received_upto,
            synced=self.sync,
            note_error=self.errors.append,
        )

    async def barrier(self, client_id: str, seq: int, within: float | None) -> bool:
        with anyio.move_on_after(within if within is not None else 60):
            while self.ledger.committed_upto(client_id) < seq:
                await self.moved.wait()
                self.moved = anyio.Event()
            return True
        return False

    async def sync(self) -> None:
        self.synced += 1

    def receive(self, client_id: str, upto: int, committed: int = 0) -> None:
        for seq in range(1, upto + 1):
            self.ledger.accept(client_id, seq, 1)
        self.commit(client_id, committed)

    def commit(self, client_id: str, upto: int) -> None:
        for seq in range(self.ledger.committed_upto(client_id) + 1, upto + 1):
            self.ledger.settle(client_id, seq)
        self.moved.set()


@asynccontextmanager
async def running(tmp_path: Path, **kw: Any) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, **kw)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.endings.run)
            yield rig
            tg.cancel_scope.cancel()
    finally:
        rig.endings.close()


async def done(ending: Ending | None) -> None:
    assert ending is not None
    with anyio.fail_after(5):
        await ending.done.wait()


async def test_an_end_is_journaled_then_applied_once_its_records_are_done(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.receive("c1", 3, committed=1)
        ending = rig.endings.receive(p.EndRun(7, "c1", 3, "r1", "FINISHED", 50))
        assert ending is not None and rig.endings.holds("r1") and not rig.endings.holds("r2")
        with anyio.fail_after(5):
            await ending.durable.wait()
        assert rig.synced == 1  # the journal's fsync, with the runs.log entry
        reread = RunBook(rig.w.runbook.path)
        reread.load()
        assert list(reread.ending.values()) == [EndIntent("c1:7", "c1", 3, "r1", "FINISHED", 50)]
        assert rig.w.sink.named("end_run") == []  # seq 2 and 3 are not committed
        rig.commit("c1", 3)
        await done(ending)
        assert rig.w.sink.named("end_run") == [("r1", "FINISHED", 50)]
        assert not rig.endings.holds("r1") and rig.endings.status() == {
            "ends_pending": 0,
            "ends_applied": 1,
        }
        assert rig.endings.receive(p.EndRun(7, "c1", 3, "r1", "FINISHED", 50)) is None  # a copy


async def test_a_restart_restores_held_ends_and_applies_each_once(tmp_path: Path) -> None:
    book = RunBook(tmp_path / "runs.log")
    book.load()
    book.record_open(RunHandle("r1", "0", "", "r1", {}), "c1", 0, "")
    book.record_ending(EndIntent("c1:4", "c1", 2, "r1", "KILLED", 9))
    book.record_ending(EndIntent("c2:1", "c2", 0, "r2", "FINISHED", 8))
    book.record_ended("c2:1", "r2")  # applied before the crash
    book.close()
    async with running(tmp_path) as rig:  # its RunBook loads (and compacts) runs.log
        assert set(rig.w.runbook.ending) == {"c1:4"} and set(rig.w.runbook.ended) == {"c2:1"}
        rig.endings.restore()
        (ending,) = [rig.endings.receive(p.EndRun(4, "c1", 2, "r1", "KILLED", 9))]
        assert ending is not None and ending.durable.is_set()  # no second journal entry
        rig.receive("c1", 2, committed=2)  # the replayed journal is committed
        await done(ending)
        assert rig.w.sink.named("end_run") == [("r1", "KILLED", 9)]  # r2's not again
        assert rig.synced == 0 and "r1" not in rig.w.runbook.open
    again = RunBook(tmp_path / "runs.log")
    again.load()
    assert again.ending == {} and set(again.ended) == {"c1:4", "c2:1"} and again.open == {}


async def test_an_end_of_a_gone_client_waits_only_for_what_it_received(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.receive("c1", 2, committed=2)  # seqs 3..5 never came; nor will they
        ending = rig.endings.receive(p.EndRun(1, "c1", 5, "r1", "FINISHED", 3))
        other = rig.endings.receive(p.EndRun(1, "c2", 1, "r2", "FINISHED", 3))
        assert ending is not None and other is not None
        with anyio.fail_after(5):
            await ending.durable.wait()
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()  # the END waits on its barrier
        assert not ending.done.is_set()
        rig.endings.client_gone("c1")
        await done(ending)
        assert rig.w.sink.named("end_run") == [("r1", "FINISHED", 3)]
        assert rig.endings.pending == 1  # c2 is not gone: still waiting
        rig.endings.nothing_more()  # --until-idle: nothing else will arrive
        await done(other)
        assert rig.endings.pending == 0


async def test_an_end_named_by_its_offline_id_holds_the_mlflow_run(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        handle = await rig.w.runs.start(p.StartRun(1, "c1", offline_id="offline-x"))
        rig.endings.receive(p.EndRun(2, "c1", 1, "offline-x", "FAILED", 4))
        assert rig.endings.holds(handle.run_id)
        rig.receive("c1", 1, committed=1)
        ending = rig.endings.receive(p.EndRun(2, "c1", 1, "offline-x", "FAILED", 4))
        await done(ending)
        assert rig.w.sink.named("end_run") == [(handle.run_id, "FAILED", 4)]


async def test_an_end_that_fails_is_reported_in_its_ending(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        failure = PermanentSinkError("RESOURCE_DOES_NOT_EXIST", "no run r9")

        def end_run(run_id: str, status: str, end_time: int) -> None:
            raise failure

        rig.w.sink.end_run = end_run  # type: ignore[method-assign]
        ending = rig.endings.receive(p.EndRun(1, "c1", 0, "r9", "FINISHED", 1))
        await done(ending)
        assert ending is not None and ending.failure == p.Failure(
            None, "RESOURCE_DOES_NOT_EXIST", "ending run r9: no run r9"
        )
        assert rig.errors == [failure] and rig.w.runbook.ended.keys() == {"c1:1"}
