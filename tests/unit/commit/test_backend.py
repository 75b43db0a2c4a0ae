"""The backend (backend.py): one backoff policy for writes and reads, bounded ``retry_for``, the
writer limiter, and health accounting. The sink calls are plain functions run in real worker
threads; the sleeps and the clock are injected so that minutes of backoff take no time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

from tracker_client import protocol as p
from tracker_daemon.artifacts.lane import ArtifactLane
from tracker_daemon.artifacts.staging import StagingArea
from tracker_daemon.commit.backend import READ_RETRY_FOR_S, Backoff, ThreadBackend
from tracker_daemon.commit.batcher import Origin
from tracker_daemon.errors import PermanentSinkError, RetryableSinkError
from tracker_daemon.ops.status import Counters

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    """A clock that only moves when the backend sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(max_backoff: float = 2.0, writers: int = 1) -> tuple[ThreadBackend, Counters, FakeTime]:
    counters = Counters()
    t = FakeTime()
    backend = ThreadBackend(
        counters,
        writers=writers,
        max_backoff=max_backoff,
        sleep=t.sleep,
        clock=t.clock,
        rand=lambda lo, hi: 1.0,  # no jitter: exact delays
    )
    return backend, counters, t


class Flaky:
    """Fails with a retryable error ``n`` times, then returns ``value``."""

    def __init__(self, n: int, value: object = "ok") -> None:
        self.n = n
        self.value = value
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self, *args: object) -> object:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.calls <= self.n:
            raise RetryableSinkError("TEMPORARILY_UNAVAILABLE", f"down (call {self.calls})")
        return (self.value, args)


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = Backoff(first=0.05, cap=0.3).delays()
    assert [round(next(delays), 3) for _ in range(6)] == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]
    assert Backoff(jitter=0.5).jittered(2.0, lambda lo, hi: lo) == 1.0


async def test_retryable_errors_then_success() -> None:
    backend, counters, t = make(max_backoff=0.3)
    fn = Flaky(5)
    assert await backend.write(fn, "run", 1) == ("ok", ("run", 1))
    assert fn.calls == 6
    assert threading.get_ident() not in fn.threads  # in a worker thread, not on the loop
    assert [round(s, 3) for s in t.sleeps] == [0.05, 0.1, 0.2, 0.3, 0.3]
    assert counters.sink_retries == 5
    assert counters.last_sink_error.endswith("down (call 5)")
    assert counters.sink_failing_now is False  # the success came after the last error
    assert counters.last_sink_ok_at >= counters.last_sink_error_at > 0


async def test_retry_for_bounds_the_attempts() -> None:
    backend, counters, t = make(max_backoff=2.0)
    fn = Flaky(10**6)
    started = t.now
    with pytest.raises(RetryableSinkError):
        await backend.write(fn, retry_for=5.0)
    # waits 0.05+0.1+0.2+0.4+0.8+1.6 = 3.15 s; the next (2.0) would pass 5 s: give up
    assert fn.calls == 7
    assert [round(s, 3) for s in t.sleeps] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert t.now - started <= 5.0
    assert counters.sink_retries == 6
    assert counters.sink_failing_now is True


async def test_a_permanent_error_is_not_retried_nor_counted() -> None:
    backend, counters, t = make()
    calls = 0

    def bad() -> None:
        nonlocal calls
        calls += 1
        raise PermanentSinkError("INVALID_PARAMETER_VALUE", "no")

    with pytest.raises(PermanentSinkError):
        await backend.write(bad)
    assert calls == 1 and t.sleeps == [] and counters.sink_retries == 0
    assert counters.last_sink_error == ""  # an answer, not an outage: the caller notes it


async def test_reads_use_the_same_policy_for_a_bounded_time() -> None:
    backend, counters, t = make(max_backoff=2.0)
    fn = Flaky(3, value="read")
    assert await backend.read(fn) == ("read", ())
    assert [round(s, 3) for s in t.sleeps] == [0.05, 0.1, 0.2]
    always = Flaky(10**6)
    t.sleeps.clear()
    started = t.now
    with pytest.raises(RetryableSinkError):
        await backend.read(always)
    assert READ_RETRY_FOR_S - 2.0 < t.now - started <= READ_RETRY_FOR_S
    assert counters.sink_retries == 3 + len(t.sleeps)


async def test_one_writer_at_a_time() -> None:
    backend, _, _ = make(writers=1)
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow(_: int) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(backend.write, slow, i)
    assert peak == 1


async def test_a_successful_artifact_upload_clears_failing(tmp_path: Path) -> None:
    # health: a retryable upload failure followed by a successful upload leaves the backend
    # healthy (before, only a later log_batch cleared it). The upload is a stand-in (a backend
    # that fails once cannot be produced for real here); the staging area is real.
    backend, counters, _ = make()
    staging = StagingArea(tmp_path / "staging", tmp_path / "uploads")
    staging.prepare()
    slot = staging.root / "c1" / "0123456789abcdef0123456789abcdef"
    slot.mkdir(parents=True)
    (slot / "f.txt").write_text("x")
    uploads = 0
    done: list[p.Failure | None] = []
    finished = anyio.Event()

    def upload(uri: str, local: str, artifact_path: str | None) -> None:
        nonlocal uploads
        uploads += 1
        if uploads == 1:
            raise RetryableSinkError("TEMPORARILY_UNAVAILABLE", "store down")

    async def uri_of(run_id: str) -> str:
        return str(tmp_path / "artifacts")

    def on_done(origin: Origin, run_id: str, failure: p.Failure | None) -> None:
        done.append(failure)
        finished.set()

    lane = ArtifactLane(
        staging,
        artifact_root=str(tmp_path / "artifacts"),
        uri_of=uri_of,
        upload=upload,
        done=on_done,
        on_retry=backend.note_error,
        on_ok=backend.note_ok,
        max_backoff=0.01,
    )
    lane.submit(Origin("c1", 1), p.LogArtifact("c1", 1, "run", str(slot / "f.txt"), None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        with anyio.fail_after(10):
            await finished.wait()
        tg.cancel_scope.cancel()
    assert done == [None] and uploads == 2
    assert counters.last_sink_error.endswith("store down")
    assert counters.sink_failing_now is False
