"""Unit tests for tracker_daemon.ops.supervise: a failing task is logged, counted and (a loop)
restarted; it never ends the task group; cancellation passes through. anyio, no sockets."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest

from tracker_daemon.ops import supervise
from tracker_daemon.ops.supervise import Supervisor, Tasks


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "RESTART_MIN_S", 0.001)
    monkeypatch.setattr(supervise, "RESTART_MAX_S", 0.004)


def test_a_failing_loop_restarts_until_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor()
    runs: list[int] = []

    async def flaky(limit: int) -> None:
        runs.append(len(runs))
        if len(runs) < limit:
            raise OSError(28, "No space left on device")

    async def main() -> None:
        with anyio.fail_after(5):
            await sup.supervised("mark", flaky, 5)

    with caplog.at_level(logging.ERROR, logger="tracker_daemon.supervise"):
        anyio.run(main)
    assert runs == [0, 1, 2, 3, 4]  # four failures, then a clean return
    assert sup.restarts == 4 and sup.by_task == {"mark": 4} and sup.failed_tasks == 0
    assert "mark: OSError" in sup.last_error
    lines = [r for r in caplog.records if "event=task_failed" in r.getMessage()]
    assert len(lines) == 4
    # the traceback once per (task, exception type); one line for the repeats
    assert [r.exc_info is not None for r in lines] == [True, False, False, False]
    assert sup.status() == {
        "task_restarts": 4,
        "task_failures": 0,
        "last_task_error": sup.last_error,
    }


def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = anyio.sleep

    async def recording_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(supervise.anyio, "sleep", recording_sleep)
    sup = Supervisor()
    count = 0

    async def failing() -> None:
        nonlocal count
        count += 1
        if count <= 6:
            raise RuntimeError("bug")

    anyio.run(sup.supervised, "x", failing)
    assert sleeps == [0.001, 0.002, 0.004, 0.004, 0.004, 0.004]


def test_cancellation_passes_through_and_is_not_counted() -> None:
    sup = Supervisor()
    started = anyio.Event()
    finished = False

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async def main() -> None:
        nonlocal finished
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.supervised, "loop", forever)
            await started.wait()
            tg.cancel_scope.cancel()
        finished = True

    anyio.run(main)
    assert finished and sup.restarts == 0 and sup.failed_tasks == 0 and sup.last_error == ""


def test_one_failing_task_does_not_end_the_group_or_its_siblings() -> None:
    sup = Supervisor()
    done: list[str] = []

    async def request(name: str, fail: bool) -> None:
        await anyio.lowlevel.checkpoint()
        if fail:
            raise KeyError(name)
        done.append(name)

    async def loop() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        done.append("loop")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tasks = Tasks(tg, sup)
            tasks.start_soon(request, "bad", True)
            tasks.start_soon(request, "good", False)
            tasks.loop("loop", loop)
            tasks.start_soon(request, "bad2", True, name="named")

    anyio.run(main)
    assert sorted(done) == ["good", "loop"]
    assert sup.failed_tasks == 2 and sup.restarts == 0
    assert sup.by_task == {"request": 1, "named": 1}


def test_without_supervision_the_same_failure_ends_the_group() -> None:
    """Guard against a vacuous test: the failure used above does end a bare task group."""

    async def bad() -> None:
        raise KeyError("x")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bad)

    with pytest.raises(BaseExceptionGroup):
        anyio.run(main)


# --------------------------------------------- BaseException: contained unless it means "stop"


async def _exits() -> None:
    await anyio.lowlevel.checkpoint()
    raise SystemExit(2)  # what argparse does at import in mlflow.pyfunc.stdin_server


def test_a_system_exit_in_a_task_is_contained_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SystemExit raised on behalf of one request ends neither the group nor its siblings."""
    sup = Supervisor()
    done: list[str] = []

    async def good() -> None:
        await anyio.lowlevel.checkpoint()
        done.append("good")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tasks = Tasks(tg, sup)
            tasks.start_soon(_exits, name="_on_call")
            tasks.start_soon(good)
        done.append("group")

    with caplog.at_level(logging.ERROR, "tracker_daemon.supervise"):
        anyio.run(main)
    assert done == ["good", "group"]
    assert sup.failed_tasks == 1 and sup.by_task == {"_on_call": 1}
    assert sup.last_error == "_on_call: SystemExit: 2"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "task=_on_call action=dropped" in line and "SystemExit: 2" in line


def test_a_loop_that_raises_system_exit_is_restarted() -> None:
    sup = Supervisor()
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            await _exits()

    anyio.run(sup.supervised, "loop", loop)
    assert runs == 3 and sup.restarts == 2 and "SystemExit" in sup.last_error


def test_keyboard_interrupt_and_cancellation_pass_through_containment() -> None:
    sup = Supervisor()

    async def interrupted() -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        anyio.run(sup.contained, "x", interrupted)
    with pytest.raises(KeyboardInterrupt):
        anyio.run(sup.supervised, "x", interrupted)

    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async def main() -> None:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                Tasks(tg, sup).start_soon(forever)
                await started.wait()
                tg.cancel_scope.cancel()

    anyio.run(main)  # the cancelled contained task ends; nothing counted
    assert sup.failed_tasks == 0 and sup.restarts == 0 and sup.last_error == ""


def test_passes_through_names_stop_exceptions_also_inside_groups() -> None:
    async def check() -> None:
        cancelled = anyio.get_cancelled_exc_class()
        assert supervise.passes_through(cancelled())
        assert supervise.passes_through(KeyboardInterrupt())
        assert supervise.passes_through(GeneratorExit())
        assert supervise.passes_through(BaseExceptionGroup("g", [SystemExit(1), cancelled()]))
        assert not supervise.passes_through(SystemExit(2))
        assert not supervise.passes_through(BaseExceptionGroup("g", [SystemExit(1)]))
        assert not supervise.passes_through(RuntimeError("x"))

    anyio.run(check)


def test_without_containment_a_system_exit_ends_the_event_loop() -> None:
    """Guard against a vacuous test: the SystemExit used above ends a bare task group (and with
    it the daemon's event loop)."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_exits)

    with pytest.raises((SystemExit, BaseExceptionGroup)):
        anyio.run(main)
