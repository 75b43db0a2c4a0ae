"""Containment of the daemon's tasks: one task that fails is logged and counted, never the end of
the daemon's task group (which would stop every client's service).

* A long-lived loop runs under :meth:`Supervisor.supervised`: an unexpected exception is logged
  (with its traceback the first time that loop fails that way, as one line after that) and
  counted (``task_restarts`` in the status), and the loop starts again after a short backoff
  (doubling from ``RESTART_MIN_S`` up to ``RESTART_MAX_S``; back to the minimum once it ran
  ``STABLE_S`` without failing).
* A one-shot task (a client request) runs under :meth:`Supervisor.contained`: logged and counted
  the same way, not restarted.
* :class:`Tasks` is a task group whose ``start_soon`` runs every task contained.
* :func:`each_contained` takes items from a stream and handles each as its own contained task
  (the request queue, held ENDs, exited clients).

Containment takes every ``BaseException`` — a ``SystemExit`` raised by library code on behalf of a
client's request must not end the daemon — except the ones that mean "stop": anyio's cancellation
(``anyio.get_cancelled_exc_class()``), ``KeyboardInterrupt`` and ``GeneratorExit`` (and an
exception group holding one of them) always pass through, neither logged nor counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc

__all__ = [
    "RESTART_MAX_S",
    "RESTART_MIN_S",
    "Supervisor",
    "Tasks",
    "each_contained",
    "passes_through",
]

log = logging.getLogger("tracker_daemon.supervise")

RESTART_MIN_S = 0.1
RESTART_MAX_S = 5.0
STABLE_S = 30.0

TaskFn = Callable[..., Awaitable[Any]]
T = TypeVar("T")


def passes_through(exc: BaseException) -> bool:
    """Whether ``exc`` means "stop" (cancellation, an interrupt, a closed coroutine) and must
    never be contained."""
    stop = (anyio.get_cancelled_exc_class(), KeyboardInterrupt, GeneratorExit)
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, stop)) is not None
    return isinstance(exc, stop)


class Supervisor:
    def __init__(self) -> None:
        self.restarts = 0  # loop restarts after a failure
        self.failed_tasks = 0  # one-shot tasks that raised
        self.by_task: Counter[str] = Counter()
        self.last_error = ""
        self._seen: set[tuple[str, str]] = set()

    async def supervised(self, name: str, fn: TaskFn, *args: Any) -> None:
        """Run ``fn(*args)`` until it returns; restart it whenever it raises."""
        backoff = RESTART_MIN_S
        while True:
            started = time.monotonic()
            try:
                await fn(*args)
                return
            except BaseException as exc:
                if passes_through(exc):
                    raise
                if time.monotonic() - started >= STABLE_S:
                    backoff = RESTART_MIN_S
                self.restarts += 1
                self._report(name, exc, f"restart_in={backoff:g}s")
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX_S)

    async def contained(self, name: str, fn: TaskFn, *args: Any) -> None:
        """Run ``fn(*args)`` once; an exception is logged and counted, not raised."""
        try:
            await fn(*args)
        except BaseException as exc:
            if passes_through(exc):
                raise
            self.failed_tasks += 1
            self._report(name, exc, "dropped")

    def _report(self, name: str, exc: BaseException, action: str) -> None:
        self.by_task[name] += 1
        self.last_error = f"{name}: {type(exc).__name__}: {exc}"[:500]
        key = (name, type(exc).__name__)
        first = key not in self._seen
        self._seen.add(key)
        log.error(
            "event=task_failed task=%s action=%s failures=%d reason=%r",
            name,
            action,
            self.by_task[name],
            f"{type(exc).__name__}: {exc}"[:300],
            exc_info=exc if first else None,
        )

    def status(self) -> dict[str, Any]:
        return {
            "task_restarts": self.restarts,
            "task_failures": self.failed_tasks,
            "last_task_error": self.last_error,
        }


class Tasks:
    """The daemon's task group, seen through its supervisor: ``start_soon`` runs each task
    contained, ``loop`` runs a long-lived loop supervised."""

    def __init__(self, tg: anyio.abc.TaskGroup, supervisor: Supervisor) -> None:
        self._tg = tg
        self._supervisor = supervisor
        self.cancel_scope = tg.cancel_scope

    def start_soon(self, func: TaskFn, *args: Any, name: object = None) -> None:
        label = str(name) if name is not None else getattr(func, "__name__", repr(func))
        self._tg.start_soon(self._supervisor.contained, label, func, *args, name=name)

    def loop(self, name: str, func: TaskFn, *args: Any) -> None:
        """Start a long-lived loop, restarted whenever it fails."""
        self._tg.start_soon(self._supervisor.supervised, name, func, *args, name=name)


async def each_contained(
    receive: Callable[[], Awaitable[T]],
    handle: Callable[[T], Awaitable[Any]],
    supervisor: Supervisor,
    label: Callable[[T], str] | None = None,
) -> None:
    """Receive items for ever and handle each in its own contained task (until cancelled);
    ``label(item)`` names the task in logs and ``task_failures`` (default: ``handle``'s name)."""
    async with anyio.create_task_group() as tg:
        tasks = Tasks(tg, supervisor)
        while True:
            item = await receive()
            tasks.start_soon(handle, item, name=None if label is None else label(item))
