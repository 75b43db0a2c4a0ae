"""Control (anyio, no sockets or MLflow): requests go through its bounded stream, each runs as a
contained task and is answered through ``send``; a failing one is logged and counted, the others
are still answered; a full queue is refused at once. ``end_run`` is durable intent (with the real
Endings and RunBook): ``accepted`` once journaled, ``done`` once applied, applied once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.run_fakes import Wiring
from tracker_client import protocol as p
from tracker_daemon.commit.ledger import Ledger
from tracker_daemon.errors import PermanentSinkError
from tracker_daemon.intake.clients import Refusal
from tracker_daemon.intake.request_slots import RequestSlots
from tracker_daemon.ops.supervise import Supervisor
from tracker_daemon.runs.control import Control
from tracker_daemon.runs.endings import Endings
from tracker_daemon.runs.run_service import creation_key

pytestmark = pytest.mark.anyio

ID = b"peer-1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeCalls:
    """calls.StoreCalls without MLflow: ``results[method]`` is what a method returns."""

    def __init__(self) -> None:
        self.invoked: list[tuple[str, str, bytes]] = []
        self.results: dict[str, Any] = {}

    def check(self, target: str, method: str) -> None:
        if method == "nope":
            raise PermanentSinkError("ENDPOINT_NOT_FOUND", f"{target} store method 'nope'")

    def invoke(self, target: str, method: str, args: bytes, kwargs: bytes) -> tuple[Any, bytes]:
        self.invoked.append((target, method, args))
        if method == "get_exit":  # library code calling sys.exit (argparse at import)
            raise SystemExit(2)
        result = self.results.get(method)
        return result, repr(result).encode()

    @staticmethod
    def is_read(method: str) -> bool:
        return method.startswith("get_")


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        queue: int = 16,
        barrier_timeout_s: float = 30.0,
        slots: RequestSlots | None = None,
    ) -> None:
        self.w = Wiring(tmp_path)
        self.ledger = Ledger()
        self.supervisor = Supervisor()
        self.sent: list[tuple[bytes, p.DaemonMessage]] = []
        self.barrier_ok = True
        self.barriers: list[tuple[str, int]] = []
        self.gate: anyio.Event | None = None  # set: barriers wait for it
        self.reads = 0
        self.calls = FakeCalls()
        self.fail_send_for: set[int] = set()
        self._got = anyio.Event()
        self.committed = anyio.Event()  # the END barrier, while barrier_ok is False
        self.synced = 0
        self.plain: set[str] = set()  # client ids whose hello announced no features
        self.endings = Endings(
            self.w.runs,
            self.supervisor,
            barrier=self.end_barrier,
            received_upto=self.ledger.received_upto,
            synced=self.sync,
            note_error=lambda exc: None,
        )
        self.control = Control(
            self.w.runs,
            self.ledger,
            self.supervisor,
            self.endings,
            send=self.send,
            barrier=self.barrier,
            write=self.w.write,
            read=self.read,
            calls=lambda: self.calls,
            barrier_timeout_s=barrier_timeout_s,
            last_sink_error=lambda: "",
            queue=queue,
            slots=slots,
            announced=lambda cid: frozenset() if cid in self.plain else frozenset(p.FEATURES),
        )

    async def send(self, identity: bytes, msg: p.DaemonMessage) -> None:
        if getattr(msg, "req", None) in self.fail_send_for:
            raise RuntimeError("socket gone")
        self.sent.append((identity, msg))
        self._got.set()

    async def barrier(self, client_id: str, seq: int) -> bool:
        self.barriers.append((client_id, seq))
        if self.gate is not None:
            await self.gate.wait()
        return self.barrier_ok

    async def end_barrier(self, client_id: str, seq: int, within: float | None) -> bool:
        self.barriers.append((client_id, seq))
        if not self.barrier_ok:
            with anyio.move_on_after(within if within is not None else 60):
                await self.committed.wait()
            return self.committed.is_set()
        return True

    async def sync(self) -> None:
        self.synced += 1

    def received(self, client_id: str, upto: int) -> None:
        for seq in range(1, upto + 1):
            self.ledger.accept(client_id, seq, 1)

    async def read(self, fn: Any) -> Any:
        self.reads += 1
        return fn()

    async def replies(self, n: int) -> list[p.DaemonMessage]:
        with anyio.fail_after(5):
            while len(self.sent) < n:
                await self._got.wait()
                self._got = anyio.Event()
        assert all(identity == ID for identity, _ in self.sent)
        return [m for _, m in self.sent]


@asynccontextmanager
async def running(tmp_path: Path, **kw: Any) -> AsyncIterator[Harness]:
    """A Harness with its Control and Endings loops running (inside the test's own task)."""
    harness = Harness(tmp_path, **kw)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(harness.control.run)
            tg.start_soon(harness.endings.run)
            yield harness
            tg.cancel_scope.cancel()
    finally:
        harness.control.close()
        harness.endings.close()


async def test_start_run_is_answered_with_the_run(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        assert h.control.submit(ID, p.StartRun(req=1, client_id="c1", run_name="r")) is None
        (reply,) = await h.replies(1)
        assert reply == p.RunStarted(1, "run-1", "0", "file:///art/run-1", "r")


async def test_flush_waits_for_the_barrier_and_reports_failures(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        failure = p.Failure(None, "INVALID_PARAMETER_VALUE", "bad")
        h.ledger.fail("c1", "r1", failure)
        h.control.submit(ID, p.Flush(2, "c1", 7, "r1"))
        (reply,) = await h.replies(1)
        assert reply == p.Done(2, (failure,)) and h.barriers == [("c1", 7)]
        assert h.ledger.take_failures("c1") == []  # reported once


async def test_a_flush_that_times_out_is_answered_timeout(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.barrier_ok = False
        h.control.submit(ID, p.Flush(3, "c1", 9, None))
        (reply,) = await h.replies(1)
        assert reply == p.ErrorReply(
            3,
            "timeout",
            "records up to seq 9 were not committed within 30 s; last sink error: none",
        )


async def test_end_run_is_accepted_then_done_after_the_barrier(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.received("c1", 2)
        failure = p.Failure(None, "INVALID_PARAMETER_VALUE", "bad")
        h.ledger.fail("c1", "r1", failure)
        h.control.submit(ID, p.EndRun(4, "c1", 2, "r1", "FAILED", 77))
        assert await h.replies(2) == [p.Accepted(4), p.Done(4, (failure,))]
        assert h.w.sink.named("end_run") == [("r1", "FAILED", 77)]
        assert h.barriers == [("c1", 2)] and h.synced == 1  # journaled, with its records
        assert h.w.runbook.ended.keys() == {"c1:4"} and h.w.runbook.ending == {}
        assert h.endings.pending == 0 and h.endings.applied == 1


async def test_an_end_run_whose_records_are_missing_is_not_accepted(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.received("c1", 2)  # seq 3 was refused (journal_full): the client keeps it
        h.control.submit(ID, p.EndRun(4, "c1", 3, "r1", "FINISHED", 77))
        assert await h.replies(1) == [p.Done(4, ())]  # no accepted; done once committed
        assert h.w.runbook.ended.keys() == {"c1:4"}


async def test_no_accepted_for_a_client_that_did_not_announce_it(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.plain.add("c1")  # a client of the first edition of version 1: `accepted` is unknown
        h.received("c1", 2)
        h.control.submit(ID, p.EndRun(4, "c1", 2, "r1", "FINISHED", 77))
        assert await h.replies(1) == [p.Done(4, ())]  # the end_run is held all the same
        assert h.w.runbook.ended.keys() == {"c1:4"} and h.synced == 1


async def test_a_held_end_run_times_out_but_is_applied_once_committed(tmp_path: Path) -> None:
    async with running(tmp_path, barrier_timeout_s=0.2) as h:
        h.barrier_ok = False
        h.received("c1", 9)
        h.control.submit(ID, p.EndRun(3, "c1", 9, "r1", "KILLED", 5))
        accepted, late = await h.replies(2)
        assert accepted == p.Accepted(3)
        assert late == p.ErrorReply(
            3,
            "timeout",
            "records up to seq 9 were not committed within 0.2 s; last sink error: none; the "
            "daemon holds this end_run and sets the run's status once they are committed",
        )
        assert h.w.sink.named("end_run") == [] and h.endings.holds("r1")
        assert list(h.w.runbook.ending) == ["c1:3"]  # journaled
        ending = h.endings.receive(p.EndRun(3, "c1", 9, "r1", "KILLED", 5))  # the one held
        assert ending is not None
        h.committed.set()
        with anyio.fail_after(5):
            await ending.done.wait()
        assert h.w.sink.named("end_run") == [("r1", "KILLED", 5)]


async def test_copies_of_an_end_run_are_answered_and_applied_once(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.barrier_ok = False
        h.received("c1", 1)
        end = p.EndRun(5, "c1", 1, "r1", "FINISHED", 9)
        h.control.submit(ID, end)
        h.control.submit(ID, end)  # resent after a reconnect while held
        h.control.submit(ID, p.EndRun(6, "c1", 1, "r1", "FAILED", 10))  # a second END: joins
        assert await h.replies(3) == [p.Accepted(5), p.Accepted(5), p.Accepted(6)]
        h.committed.set()
        replies = await h.replies(6)
        assert sorted(replies[3:], key=str) == [p.Done(5), p.Done(5), p.Done(6)]
        h.control.submit(ID, end)  # replayed from a spool after it was applied
        assert (await h.replies(7))[6] == p.Done(5)  # answered at once, not accepted again
        assert h.w.sink.named("end_run") == [("r1", "FINISHED", 9)]  # once, the first wins


async def test_calls_read_or_write_and_a_resent_create_gets_its_run(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.calls.results["get_experiment"] = "exp"
        h.control.submit(ID, p.Call(5, "c1", 0, "tracking", "get_experiment", b"a", b"k"))
        (reply,) = await h.replies(1)
        assert reply == p.Result(5, b"'exp'", ()) and h.reads == 1
        h.w.runbook.created[creation_key("c1", 6)] = await h.w.runs.start(p.StartRun(1, "c0"))
        h.control.submit(ID, p.Call(6, "c1", 0, "tracking", "create_run", b"a", b"k"))
        await h.replies(2)
        assert h.calls.invoked[-1][:2] == ("tracking", "get_run")  # not a second run
        h.control.submit(ID, p.Call(7, "c1", 0, "tracking", "set_tag", b"a", b"k"))
        await h.replies(3)
        # writes go under the writer with 30 s of retries; only the get_ method was a read
        assert h.w.write.log[-2:] == [("invoke", 30.0), ("invoke", 30.0)] and h.reads == 1
        assert h.calls.invoked[-1] == ("tracking", "set_tag", b"a")


async def test_a_refused_call_keeps_the_failures_for_the_next_barrier(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        failure = p.Failure(None, "INVALID_PARAMETER_VALUE", "bad")
        h.ledger.fail("c1", None, failure)
        h.control.submit(ID, p.Call(8, "c1", 0, "tracking", "nope", b"", b""))
        (reply,) = await h.replies(1)
        assert isinstance(reply, p.ErrorReply) and reply.code == "ENDPOINT_NOT_FOUND"
        assert h.ledger.take_failures("c1") == [failure]


async def test_a_failing_request_is_contained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as h:
        caplog.set_level(logging.ERROR, "tracker_daemon.supervise")
        h.fail_send_for.add(10)
        h.control.submit(ID, p.Flush(10, "c1", 1))
        h.control.submit(ID, p.Flush(11, "c1", 1))
        (reply,) = await h.replies(1)
        assert reply == p.Done(11, ())
        await anyio.wait_all_tasks_blocked()  # request 10 ran first and is over
        assert h.supervisor.failed_tasks == 1 and h.supervisor.restarts == 0
        assert h.supervisor.by_task["_on_flush"] == 1
        assert "RuntimeError: socket gone" in h.supervisor.last_error
        h.control.submit(ID, p.Flush(12, "c1", 1))  # and the loop goes on
        assert (await h.replies(2))[1] == p.Done(12, ())


async def test_a_full_queue_is_refused_at_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path, queue=2)  # its loop is not running: nothing leaves the queue
    for req in (1, 2):
        assert harness.control.submit(ID, p.Flush(req, "c1", 1)) is None
    reply = harness.control.submit(ID, p.StartRun(3, "c1", offline_id="offline-q"))
    assert reply == p.ErrorReply(
        3,
        "REQUEST_LIMIT_EXCEEDED",
        "pending requests: the daemon already holds 2 start_run/end_run/flush/call requests "
        "waiting to start (its limit); this one was not performed: try again shortly",
    )
    assert harness.control.refused == 1
    harness.control.close()
    harness.endings.close()
    refused = p.StartRun(4, "c1", offline_id="offline-q")
    assert harness.w.runs.starts_new_run(refused)  # a refused start reserves nothing


async def test_calls_are_counted_timed_and_failures_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tracker_daemon.calls")
    async with running(tmp_path) as h:
        h.control.submit(ID, p.Call(20, "c1", 0, "tracking", "get_experiment", b"a", b"k"))
        h.control.submit(ID, p.Call(21, "c1", 0, "tracking", "set_tag", b"a", b"k"))
        h.control.submit(ID, p.Call(22, "c1", 0, "tracking", "nope", b"", b""))  # refused: write
        await h.replies(3)
        h.barrier_ok = False
        h.control.submit(ID, p.Call(23, "c1", 4, "tracking", "get_run", b"", b""))  # timeout
        await h.replies(4)
        assert h.control.stats.count("read") == (2, 1)
        assert h.control.stats.count("write") == (2, 1)
        assert [r.getMessage().split(" reason=")[0] for r in caplog.records] == [
            "event=call_failed kind=write method=nope code=ENDPOINT_NOT_FOUND",
            "event=call_failed kind=read method=get_run code=timeout",
        ]
        doc = h.control.stats.status()["calls"]
        assert doc["read"]["latency_ms"]["p99"] >= doc["read"]["latency_ms"]["p50"] > 0


async def test_a_call_refused_by_a_full_queue_is_a_failed_call(tmp_path: Path) -> None:
    harness = Harness(tmp_path, queue=1)  # its loop is not running: nothing leaves the queue
    assert harness.control.submit(ID, p.Flush(1, "c1", 1)) is None
    reply = harness.control.submit(ID, p.Call(2, "c1", 0, "tracking", "get_run", b"", b""))
    assert isinstance(reply, p.ErrorReply) and reply.code == "REQUEST_LIMIT_EXCEEDED"
    assert harness.control.stats.count("read") == (1, 1)
    assert harness.control.stats.status()["calls"]["read"]["latency_ms"] == {
        "p50": 0.0,
        "p99": 0.0,
    }
    harness.control.close()
    harness.endings.close()


async def test_an_end_run_runs_log_cannot_save_is_applied_but_not_accepted(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.received("c1", 1)
        h.w.runbook.unsaved = True  # runs.log could not be written (a full disk): memory only
        h.control.submit(ID, p.EndRun(4, "c1", 1, "r1", "FINISHED", 7))
        assert await h.replies(1) == [p.Done(4, ())]  # no accepted: the client keeps it
        assert h.w.sink.named("end_run") == [("r1", "FINISHED", 7)]


async def test_requests_in_progress_are_capped_per_client_and_in_total(tmp_path: Path) -> None:
    async with running(tmp_path, slots=RequestSlots(per_client=2, total=3)) as h:
        h.gate = anyio.Event()
        assert h.control.submit(ID, p.Flush(1, "c1", 5)) is None
        assert h.control.submit(ID, p.Flush(2, "c1", 5)) is None
        over = h.control.submit(ID, p.Flush(3, "c1", 5))
        assert isinstance(over, Refusal)
        assert (over.code, over.limit, over.value) == (
            "limit_exceeded",
            "max_requests_per_client",
            2,
        )
        assert over.message.startswith("max_requests_per_client = 2: this client already has 2 ")
        assert h.control.submit(ID, p.Flush(4, "c2", 5)) is None
        total = h.control.submit(ID, p.Call(5, "c3", 0, "tracking", "get_run", b"", b""))
        assert isinstance(total, Refusal)
        assert (total.limit, total.value) == ("max_requests", 3)
        assert h.control.stats.status()["calls"]["read"]["failures"] == 1  # a refused call
        assert h.control.slots.held == 3
        h.gate.set()  # the barriers complete: every request is answered and frees its slot
        replies = await h.replies(3)
        assert sorted(m.req for m in replies) == [1, 2, 4]  # type: ignore[attr-defined]
        await anyio.wait_all_tasks_blocked()
        assert h.control.slots.held == 0
        assert h.control.submit(ID, p.Flush(6, "c1", 5)) is None


async def test_a_request_refused_for_a_full_queue_frees_its_slot(tmp_path: Path) -> None:
    harness = Harness(tmp_path, queue=1, slots=RequestSlots(per_client=8, total=8))
    try:
        assert harness.control.submit(ID, p.Flush(1, "c1", 5)) is None  # queued, not started
        full = harness.control.submit(ID, p.Flush(2, "c1", 5))
        assert isinstance(full, p.ErrorReply) and full.code == "REQUEST_LIMIT_EXCEEDED"
        assert harness.control.slots.held == 1
    finally:
        harness.control.close()
        harness.endings.close()


async def test_a_call_that_raises_system_exit_is_answered_internal_error_and_contained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A BaseException from a call (even SystemExit) is answered, logged and counted; the daemon's
    request loop goes on (before, it left the task and ended the daemon without an answer)."""
    caplog.set_level(logging.WARNING)
    async with running(tmp_path) as h:
        h.control.submit(ID, p.Call(30, "c1", 0, "tracking", "get_exit", b"a", b"k"))
        (reply,) = await h.replies(1)
        assert isinstance(reply, p.ErrorReply) and (reply.req, reply.code) == (30, "INTERNAL_ERROR")
        assert "SystemExit: 2" in reply.message and "get_exit" in reply.message
        await anyio.wait_all_tasks_blocked()
        assert h.supervisor.failed_tasks == 1 and h.supervisor.by_task["_on_call"] == 1
        assert h.control.stats.count("read") == (1, 1)
        lines = [r.getMessage() for r in caplog.records]
        assert any("event=call_failed" in m and "SystemExit: 2" in m for m in lines), lines
        assert any("event=task_failed" in m and "SystemExit: 2" in m for m in lines), lines
        h.calls.results["get_experiment"] = "exp"  # and the next call is served
        h.control.submit(ID, p.Call(31, "c1", 0, "tracking", "get_experiment", b"a", b"k"))
        assert (await h.replies(2))[1] == p.Result(31, b"'exp'", ())
