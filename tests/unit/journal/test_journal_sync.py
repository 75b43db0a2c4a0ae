"""Journal sync (journal_sync.py) on a real journal in tmp_path: acks wait for the group fsync,
the mark follows the low water with the client floors, and a failing fsync holds acks back.
The fsync failure is a stand-in (a full disk at exactly fsync time cannot be produced here;
tests/faults/test_disk_full.py does it for real with a tmpfs)."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import anyio
import pytest

from tracker_client import protocol as p
from tracker_daemon.commit.ledger import Ledger
from tracker_daemon.intake.clients import ClientInfo
from tracker_daemon.journal.diskspace import DiskProblems
from tracker_daemon.journal.journal import Journal
from tracker_daemon.journal.journal_sync import CLIENT_MEMORY_S, JournalSync
from tracker_daemon.ops.status import Counters

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class World:
    def __init__(self, tmp_path: Path, durability: str = "fsync") -> None:
        self.journal = Journal(tmp_path / "journal", segment_bytes=1 << 20, max_bytes=1 << 24)
        self.journal.open()
        self.ledger = Ledger()
        self.clients: dict[str, ClientInfo] = {}
        self.disk = DiskProblems()
        self.counters = Counters()
        self.sent: list[tuple[bytes, p.Ack]] = []
        self.after_marks = 0
        self.expect_sends = 1
        self.all_sent = anyio.Event()
        self.marked = anyio.Event()
        self.sync = JournalSync(
            self.journal,
            self.disk,
            self.counters,
            durability=durability,
            fsync_interval=0.01,
            received_upto=self.ledger.received_upto,
            clients=self.clients,
            send=self.send,
            after_mark=self.after_mark,
        )

    async def send(self, identity: bytes, ack: p.Ack) -> None:
        self.sent.append((identity, ack))
        if len(self.sent) >= self.expect_sends:
            self.all_sent.set()

    async def after_mark(self) -> None:
        self.after_marks += 1
        self.marked.set()

    def receive(self, cid: str, seq: int) -> None:
        self.clients.setdefault(cid, ClientInfo(cid, last_seen=time.monotonic()))
        self.journal.append(b"D" + f"{cid}:{seq}".encode())
        self.ledger.accept(cid, seq, 1)


async def test_acks_go_out_after_one_group_fsync(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.receive("c1", 1)
    w.receive("c1", 2)
    w.receive("c2", 1)
    w.sync.ack_later(b"peer1", "c1")
    w.sync.ack_later(b"peer2", "c2")
    async with anyio.create_task_group() as tg:
        w.expect_sends = 2
        tg.start_soon(w.sync.sync_loop)
        with anyio.fail_after(5):
            await w.all_sent.wait()
        tg.cancel_scope.cancel()
    assert sorted(w.sent) == [(b"peer1", p.Ack(2)), (b"peer2", p.Ack(1))]
    assert w.counters.fsyncs == 1
    assert w.sync.pending_acks == {}


async def test_a_failing_fsync_holds_the_acks_back_until_it_works(tmp_path: Path) -> None:
    w = World(tmp_path)
    real_sync = w.journal.sync
    failures = 1
    sent_when_failing: list[int] = []

    def sync() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            sent_when_failing.append(len(w.sent))
            raise OSError(errno.ENOSPC, "No space left on device")
        assert w.disk.active  # the failure is reported until the fsync works
        real_sync()

    w.journal.sync = sync  # type: ignore[method-assign,assignment]
    w.receive("c1", 1)
    w.sync.ack_later(b"peer1", "c1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.sync.sync_loop)
        with anyio.fail_after(5):
            await w.all_sent.wait()  # retried after DISK_RETRY_S
        tg.cancel_scope.cancel()
    assert sent_when_failing == [0]  # not durable: not acked
    assert w.sent == [(b"peer1", p.Ack(1))]
    assert not w.disk.active and w.counters.fsyncs == 1


async def test_the_mark_follows_the_low_water_with_the_client_floors(tmp_path: Path) -> None:
    w = World(tmp_path, durability="os")
    w.receive("c1", 1)
    w.receive("c2", 1)
    w.clients["idle"] = ClientInfo("idle", last_seen=time.monotonic() - CLIENT_MEMORY_S - 1)
    w.ledger.floor("idle", 9)
    w.clients["new"] = ClientInfo("new", last_seen=time.monotonic())  # nothing received yet
    assert w.sync.client_floors() == {"c1": 1, "c2": 1}
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.sync.mark_loop)
        w.sync.mark_wake.set()
        with anyio.fail_after(5):
            await w.marked.wait()
        tg.cancel_scope.cancel()
    assert w.after_marks == 1
    mark = json.loads((tmp_path / "journal" / "mark.json").read_text())
    assert mark["clients"] == {"c1": 1, "c2": 1}
    low = w.journal.low_water()
    assert (mark["segment"], mark["offset"]) == (low.segment, low.offset)
