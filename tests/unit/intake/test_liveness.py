"""The pid watcher with real child processes: one watch per pid, a cap on pidfds with the shared
periodic check beyond it, and dead pids reported at once."""

from __future__ import annotations

import os
import subprocess

import anyio
import anyio.lowlevel
import pytest

from tracker_daemon.intake.liveness import PidWatcher, alive

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sleepers(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["sleep", "60"]) for _ in range(n)]


class Exits:
    """Collects exited pids; ``wait(n)`` returns once ``n`` are in."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self._changed = anyio.Event()

    def __call__(self, pid: int) -> None:
        self.pids.append(pid)
        self._changed.set()

    async def wait(self, n: int) -> None:
        with anyio.fail_after(10):
            while len(self.pids) < n:
                await self._changed.wait()
                self._changed = anyio.Event()


async def test_exits_are_reported_once_per_pid_with_pidfds_and_beyond_the_cap() -> None:
    procs = sleepers(4)
    exited = Exits()
    watcher = PidWatcher(exited, max_fds=2, poll_s=0.1)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            for proc in procs:
                assert watcher.watch(proc.pid)
                assert watcher.watch(proc.pid)  # shared: no second watch
            assert watcher.fds == 2 and watcher.watched == 4
            for proc in procs:
                proc.kill()
                proc.wait()
            await exited.wait(4)
            assert sorted(exited.pids) == sorted(p.pid for p in procs)
            assert watcher.fds == 0 and watcher.watched == 0
            tg.cancel_scope.cancel()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_a_dead_pid_is_reported_to_the_caller_at_once() -> None:
    (proc,) = sleepers(1)
    proc.kill()
    proc.wait()
    watcher = PidWatcher(lambda pid: None)
    assert not watcher.watch(proc.pid)
    assert watcher.watched == 0
    assert watcher.watch(os.getpid())  # the daemon itself: alive, never watched
    assert watcher.watched == 0


def test_a_zombie_counts_as_exited() -> None:
    (proc,) = sleepers(1)
    assert alive(proc.pid)
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not alive(proc.pid)
    proc.wait()


async def test_pidfd_exhaustion_falls_back_to_the_shared_check() -> None:
    """EMFILE is produced for real: this process's fd limit is lowered to what it holds."""
    import resource

    procs = sleepers(3)
    exited = Exits()
    watcher = PidWatcher(exited, poll_s=0.1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            await anyio.lowlevel.checkpoint()
            # below the fds already open: every new fd fails with EMFILE
            resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
            try:
                for proc in procs:
                    assert watcher.watch(proc.pid)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert watcher.watched == 3 and watcher.fds == 0
            for proc in procs:
                proc.kill()
                proc.wait()
            await exited.wait(3)
            tg.cancel_scope.cancel()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for proc in procs:
            proc.kill()
            proc.wait()
