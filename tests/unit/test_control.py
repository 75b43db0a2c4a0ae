"""Control (anyio, no sockets or MLflow): requests go through its bounded stream, each runs as a
contained task and is answered through ``send``; a failing one is logged and counted, the others
are still answered; a full queue is refused at once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.run_fakes import Wiring
from tracker_client import protocol as p
from tracker_daemon.control import Control
from tracker_daemon.errors import PermanentSinkError
from tracker_daemon.ledger import Ledger
from tracker_daemon.run_service import creation_key
from tracker_daemon.supervise import Supervisor

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
        result = self.results.get(method)
        return result, repr(result).encode()

    @staticmethod
    def is_read(method: str) -> bool:
        return method.startswith("get_")


class Harness:
    def __init__(self, tmp_path: Path, queue: int = 16) -> None:
        self.w = Wiring(tmp_path)
        self.ledger = Ledger()
        self.supervisor = Supervisor()
        self.sent: list[tuple[bytes, p.DaemonMessage]] = []
        self.barrier_ok = True
        self.barriers: list[tuple[str, int]] = []
        self.reads = 0
        self.calls = FakeCalls()
        self.fail_send_for: set[int] = set()
        self._got = anyio.Event()
        self.control = Control(
            self.w.runs,
            self.ledger,
            self.supervisor,
            send=self.send,
            barrier=self.barrier,
            write=self.w.write,
            read=self.read,
            calls=lambda: self.calls,
            barrier_timeout_s=30.0,
            last_sink_error=lambda: "",
            queue=queue,
        )

    async def send(self, identity: bytes, msg: p.DaemonMessage) -> None:
        if getattr(msg, "req", None) in self.fail_send_for:
            raise RuntimeError("socket gone")
        self.sent.append((identity, msg))
        self._got.set()

    async def barrier(self, client_id: str, seq: int) -> bool:
        self.barriers.append((client_id, seq))
        return self.barrier_ok

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


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.control.run)
        yield harness
        tg.cancel_scope.cancel()
    harness.control.close()


async def test_start_run_is_answered_with_the_run(h: Harness) -> None:
    assert h.control.submit(ID, p.StartRun(req=1, client_id="c1", run_name="r")) is None
    (reply,) = await h.replies(1)
    assert reply == p.RunStarted(1, "run-1", "0", "file:///art/run-1", "r")


async def test_flush_waits_for_the_barrier_and_reports_failures(h: Harness) -> None:
    failure = p.Failure(None, "INVALID_PARAMETER_VALUE", "bad")
    h.ledger.fail("c1", "r1", failure)
    h.control.submit(ID, p.Flush(2, "c1", 7, "r1"))
    (reply,) = await h.replies(1)
    assert reply == p.Done(2, (failure,)) and h.barriers == [("c1", 7)]
    assert h.ledger.take_failures("c1") == []  # reported once


async def test_a_barrier_that_times_out_is_answered_timeout(h: Harness) -> None:
    h.barrier_ok = False
    h.control.submit(ID, p.EndRun(3, "c1", 9, "r1", "FINISHED", 5))
    (reply,) = await h.replies(1)
    assert reply == p.ErrorReply(
        3,
        "timeout",
        "records up to seq 9 were not committed within 30 s; last sink error: none",
    )
    assert h.w.sink.named("end_run") == []


async def test_end_run_ends_it_after_the_barrier(h: Harness) -> None:
    h.control.submit(ID, p.EndRun(4, "c1", 2, "r1", "FAILED", 77))
    (reply,) = await h.replies(1)
    assert reply == p.Done(4, ())
    assert h.w.sink.named("end_run") == [("r1", "FAILED", 77)]


async def test_calls_read_or_write_and_a_resent_create_gets_its_run(h: Harness) -> None:
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


async def test_a_refused_call_keeps_the_failures_for_the_next_barrier(h: Harness) -> None:
    failure = p.Failure(None, "INVALID_PARAMETER_VALUE", "bad")
    h.ledger.fail("c1", None, failure)
    h.control.submit(ID, p.Call(8, "c1", 0, "tracking", "nope", b"", b""))
    (reply,) = await h.replies(1)
    assert isinstance(reply, p.ErrorReply) and reply.code == "ENDPOINT_NOT_FOUND"
    assert h.ledger.take_failures("c1") == [failure]


async def test_a_failing_request_is_contained(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
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
    refused = p.StartRun(4, "c1", offline_id="offline-q")
    assert harness.w.runs.starts_new_run(refused)  # a refused start reserves nothing


async def test_calls_are_counted_timed_and_failures_logged(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tracker_daemon.calls")
    h.control.submit(ID, p.Call(20, "c1", 0, "tracking", "get_experiment", b"a", b"k"))
    h.control.submit(ID, p.Call(21, "c1", 0, "tracking", "set_tag", b"a", b"k"))
    h.control.submit(ID, p.Call(22, "c1", 0, "tracking", "nope", b"", b""))  # refused: a write
    await h.replies(3)
    h.barrier_ok = False
    h.control.submit(ID, p.Call(23, "c1", 4, "tracking", "get_run", b"", b""))  # barrier timeout
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
