"""Which client processes are alive: one watch per distinct pid, shared by all its clients.

A watch is a pidfd (``pidfd_open``, Linux >= 5.3) that the kernel makes readable when the
process exits — no polling — for at most ``max_fds`` pids at a time. Beyond that cap, or where a
pidfd cannot be had (old kernel, seccomp, EMFILE), the pid joins one shared check that runs every
``poll_s`` seconds (``kill(pid, 0)`` and the zombie state in ``/proc``; nothing is imported and a
failed check counts as alive, so fd exhaustion cannot crash it). Either way the daemon holds no
per-client OS resource without a cap.

Which pid is watched is the caller's choice (see daemon.py): the pid the kernel reports for an
ipc connection, else a pid a client on this host claims. A claim is only the client's word: a
false one can only end (or keep open) the claimant's own runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import anyio

__all__ = ["MAX_PIDFDS", "POLL_S", "PidWatcher", "alive"]

log = logging.getLogger("tracker_daemon.liveness")

MAX_PIDFDS = 256  # pidfds held at most; more distinct pids share the periodic check
POLL_S = 1.0  # the periodic check's interval


def alive(pid: int) -> bool:
    """Is process ``pid`` running (not gone, not a zombie)? Unknowable counts as running."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process, alive
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read(512)
    except FileNotFoundError:
        return False
    except OSError:  # EMFILE and the like: assume alive, look again next time
        return True
    # "pid (comm) S ..." — comm may hold spaces and parentheses: the state follows the last ')'
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


class PidWatcher:
    """``watch(pid)`` from the event loop; ``on_exit(pid)`` is called (on the loop) once the
    process exits. ``run()`` is the watcher's task."""

    def __init__(
        self,
        on_exit: Callable[[int], None],
        *,
        max_fds: int = MAX_PIDFDS,
        poll_s: float = POLL_S,
    ) -> None:
        self.on_exit = on_exit
        self.max_fds = max_fds
        self.poll_s = poll_s
        self._fds: dict[int, int] = {}  # pid -> pidfd
        self._polled: set[int] = set()
        self._starting: list[int] = []
        self._wake = anyio.Event()
        self._fallback_logged = False

    @property
    def fds(self) -> int:
        return len(self._fds)

    @property
    def watched(self) -> int:
        return len(self._fds) + len(self._polled)

    def status(self) -> dict[str, int]:
        return {"pid_watches": self.watched, "pidfds": self.fds}

    def watching(self, pid: int) -> bool:
        return pid in self._fds or pid in self._polled

    def watch(self, pid: int) -> bool:
        """Watch ``pid`` (once, however many clients share it). False if it is not running
        now: then nothing is watched and ``on_exit`` is not called — the caller acts at once."""
        if self.watching(pid) or pid == os.getpid():
            return True
        if not alive(pid):
            return False
        if len(self._fds) < self.max_fds:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return False
            except OSError as exc:  # EMFILE, ENOSYS, EPERM: share the periodic check
                self._note_fallback(exc)
            else:
                self._fds[pid] = fd
                self._starting.append(pid)
                self._wake.set()
                return True
        self._polled.add(pid)
        return True

    def _note_fallback(self, exc: OSError) -> None:
        if not self._fallback_logged:
            self._fallback_logged = True
            log.warning(
                "event=pidfd_unavailable reason=%r note=checking_every_%gs", exc, self.poll_s
            )

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_loop)
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._starting:
                    tg.start_soon(self._wait_fd, self._starting.pop())

    async def _wait_fd(self, pid: int) -> None:
        fd = self._fds[pid]
        try:
            await anyio.wait_readable(fd)
        except Exception as exc:  # contained: this pid moves to the periodic check
            log.warning("event=pidfd_wait_failed pid=%d reason=%r", pid, str(exc))
            self._polled.add(pid)
            return
        finally:
            del self._fds[pid]
            os.close(fd)
        self._exited(pid)

    async def _poll_loop(self) -> None:
        while True:
            await anyio.sleep(self.poll_s)
            for pid in [p for p in self._polled if not alive(p)]:
                self._polled.discard(pid)
                self._exited(pid)

    def _exited(self, pid: int) -> None:
        try:
            self.on_exit(pid)
        except Exception:  # contained: one client's bookkeeping must not stop the watcher
            log.exception("event=liveness_callback_failed pid=%d", pid)
