"""Orphan handling (anyio; fakes for the pid watcher, the barrier, the spool import, the held
ENDs and the sink): an exited client's spool is imported first, then its open runs are tagged and
ended with orphan_status after its records are committed; runs another live client still owns, and
runs whose END the daemon holds, are left; a failing end is reported, not raised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from tests.support.run_fakes import Wiring
from tracker_daemon.errors import RetryableSinkError, SinkError
from tracker_daemon.intake.clients import ClientTable, Peer
from tracker_daemon.ops.status import Counters
from tracker_daemon.ops.supervise import Supervisor
from tracker_daemon.runs.orphans import ORPHAN_BARRIER_S, Orphans
from tracker_daemon.store.sink import RunHandle

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeWatcher:
    """liveness.PidWatcher: ``alive`` pids are watched, others are already gone."""

    def __init__(self) -> None:
        self.alive: set[int] = set()
        self.watched: list[int] = []

    def watch(self, pid: int) -> bool:
        self.watched.append(pid)
        return pid in self.alive


class FakeEnds:
    """endings.Endings as orphans see it: ``held`` run ids; who was declared gone."""

    def __init__(self, steps: list[str]) -> None:
        self.held: set[str] = set()
        self.steps = steps

    def holds(self, run_id: str) -> bool:
        return run_id in self.held

    def client_gone(self, client_id: str) -> None:
        self.steps.append(f"gone {client_id}")


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.w = Wiring(tmp_path)
        self.table = ClientTable(100)
        self.counters = Counters()
        self.barriers: list[tuple[str, int, float | None]] = []
        self.errors: list[SinkError] = []
        self.done = anyio.Event()
        self.watcher = FakeWatcher()
        self.steps: list[str] = []  # spool imports, barriers, clients declared gone, in order
        self.ends = FakeEnds(self.steps)
        self.orphans = Orphans(
            self.table,
            self.w.runs,
            self.counters,
            Supervisor(),
            hostname="h",
            orphan_status="FAILED",
            sink=self.w.sink,
            write=self.w.write,
            barrier=self.barrier,
            received_upto=lambda cid: 41,
            note_error=self.errors.append,
            endings=self.ends,
            import_spool=self.import_spool,
        )
        self.orphans.liveness = self.watcher

    async def barrier(self, client_id: str, seq: int, within: float | None) -> bool:
        self.barriers.append((client_id, seq, within))
        self.steps.append(f"barrier {client_id}")
        return True

    async def import_spool(self, client_id: str) -> None:
        self.steps.append(f"import {client_id}")

    def open_run(self, run_id: str, *owners: str) -> None:
        for owner in owners:
            self.w.runbook.record_open(RunHandle(run_id, "0", "", run_id, {}), owner, 0, "h")


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Rig]:
    """A Rig with its orphans loop running (inside the test's own task)."""
    r = Rig(tmp_path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(r.orphans.run)
            yield r
            tg.cancel_scope.cancel()
    finally:
        r.orphans.close()


async def settle() -> None:
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()


async def test_an_exited_clients_runs_are_ended_after_its_records(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.open_run("r1", "c1")
        rig.open_run("r2", "c1", "c2")  # still owned by a live client
        assert rig.table.claim("c1", Peer(b"a", uid=1, pid=500), 0.0) is None
        rig.orphans.watch_bound()
        assert rig.watcher.watched == [500]  # not alive: exited at once
        await settle()
        assert rig.barriers == [("c1", 41, ORPHAN_BARRIER_S)]
        assert rig.steps == ["import c1", "barrier c1", "gone c1"]  # its spool first
        (tagged,) = rig.w.sink.named("log_batch")
        assert tagged[0] == "r1" and tagged[3][0].key == "tracker.end_reason"
        assert "client process 500 on h exited without ending this run" in tagged[3][0].value
        assert [(a[0], a[1]) for a in rig.w.sink.named("end_run")] == [("r1", "FAILED")]
        assert rig.counters.orphaned_runs == 1
        assert set(rig.w.runbook.open) == {"r2"} and rig.w.runbook.open["r2"].owners == {"c2"}
        assert "c1" not in [row["client_id"] for row in rig.table.status_rows(1.0)]


async def test_restored_owners_are_watched_and_a_live_one_is_left(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.open_run("r1", "c1")
        rig.w.runbook.record_open(RunHandle("r3", "0", "", "r3", {}), "c3", 600, "h")
        rig.w.runbook.record_open(RunHandle("r4", "0", "", "r4", {}), "c4", 700, "other-host")
        rig.watcher.alive.add(600)
        rig.orphans.watch_restored_owners()
        await settle()
        assert rig.watcher.watched == [600]  # pid 0 and another host's pid are not watched
        assert rig.w.sink.named("end_run") == [] and rig.counters.orphaned_runs == 0


async def test_a_failing_end_is_reported_and_the_next_client_handled(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.open_run("r1", "c1")
        rig.open_run("r5", "c5")
        failure = RetryableSinkError("TEMPORARILY_UNAVAILABLE", "down")
        rig.w.sink.fail_log_batch = failure  # the first exited client's tag: write gave up
        for cid, pid in (("c1", 801), ("c5", 802)):
            rig.table.claim(cid, Peer(cid.encode(), uid=1, pid=pid), 0.0)
        rig.orphans.watch_bound()
        await settle()
        assert rig.errors == [failure]
        assert [a[0] for a in rig.w.sink.named("end_run")] == ["r5"]
        assert rig.counters.orphaned_runs == 1


async def test_a_run_whose_end_is_held_is_not_an_orphan(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.open_run("r1", "c1")
        rig.open_run("r2", "c1")
        rig.ends.held.add("r1")  # its END was received (or spooled, or replayed)
        rig.table.claim("c1", Peer(b"a", uid=1, pid=900), 0.0)
        assert rig.orphans.judging == 0
        rig.orphans.watch_bound()
        assert rig.orphans.judging == 1  # queued: --until-idle waits for it
        await settle()
        assert rig.orphans.judging == 0
        assert [(a[0], a[1]) for a in rig.w.sink.named("end_run")] == [("r2", "FAILED")]
        assert rig.counters.orphaned_runs == 1
        assert "r1" in rig.w.runbook.open  # left to its END (which closes it)
