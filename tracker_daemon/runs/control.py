"""The requests that wait: ``start_run``, ``end_run``, ``flush`` and ``call``. Intake hands them
to :meth:`Control.submit` (synchronous, from the receive loop); they queue in a bounded memory
stream that :meth:`Control.run` owns, and each runs there as its own contained task (supervise.py:
one that fails is logged and counted, never the end of the daemon). ``flush`` and ``call`` first
wait until the client's earlier records are committed (the barrier).

``end_run`` is durable intent (endings.py): taken on receipt, answered ``accepted`` once it is
journaled (and the records it covers are), then ``done`` once the run's status is set. A reply
``error`` ``timeout`` after the barrier timeout only means the wait was long: the END stays held.

A request that finds the queue full (``CONTROL_QUEUE`` waiting to start) is answered at once with
``REQUEST_LIMIT_EXCEEDED``; the client may retry it. Requests in progress (from receipt until
answered) are capped per client and in total (request_slots.py): one over a cap is refused at
once with ``limit_exceeded`` naming the cap (``submit`` returns the refusal; intake counts it).

Every ``call`` is counted and timed by kind (read / write) in :attr:`Control.stats`
(call_stats.py: its own part of the status document); a call answered with an error is also a
failure there, and one (throttled) ``event=call_failed`` log line. A call that raises something
unexpected — any ``BaseException`` but cancellation, even ``SystemExit`` — is answered
``INTERNAL_ERROR`` naming the exception's type, then contained by the supervisor like any failed
request (logged, counted in ``task_failures``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tracker_client import protocol as p
from tracker_client.mlflow.entities import encode_value

from ..commit.ledger import Ledger
from ..errors import SinkError
from ..intake.clients import Refusal
from ..intake.request_slots import RequestSlots
from ..ops.call_stats import CallStats
from ..ops.supervise import Supervisor, each_contained, passes_through
from .endings import Endings
from .run_service import RunService, Write, creation_key

__all__ = ["CONTROL_QUEUE", "Control", "ControlRequest"]

T = TypeVar("T")

CONTROL_QUEUE = 1024  # requests accepted but not started yet
ControlRequest = p.StartRun | p.EndRun | p.Flush | p.Call


class StoreCalls(Protocol):
    """calls.StoreCalls, as Control uses it."""

    def check(self, target: str, method: str) -> None: ...
    def invoke(self, target: str, method: str, args: bytes, kwargs: bytes) -> tuple[Any, bytes]: ...
    @staticmethod
    def is_read(method: str) -> bool: ...


class Control:
    def __init__(
        self,
        runs: RunService,
        ledger: Ledger,
        supervisor: Supervisor,
        endings: Endings,
        *,
        send: Callable[[bytes, p.DaemonMessage], Awaitable[None]],
        barrier: Callable[[str, int], Awaitable[bool]],
        write: Write,
        read: Callable[[Callable[[], Any]], Awaitable[Any]],
        calls: Callable[[], StoreCalls | None],
        barrier_timeout_s: float,
        last_sink_error: Callable[[], str],
        queue: int = CONTROL_QUEUE,
        slots: RequestSlots | None = None,
        started: Callable[[p.StartRun, str], None] = lambda msg, run_id: None,
        announced: Callable[[str], frozenset[str]] = lambda client_id: frozenset(),
    ) -> None:
        self.runs = runs
        self.ledger = ledger  # failures taken at a barrier
        self.supervisor = supervisor
        self.endings = endings
        self._send = send
        self._barrier = barrier
        self._write = write
        self._read = read
        self._calls = calls  # None until MLflow is loaded
        self.barrier_timeout_s = barrier_timeout_s
        self._last_sink_error = last_sink_error
        self._announced = announced  # client id -> the features its hello announced
        self.refused = 0  # requests answered REQUEST_LIMIT_EXCEEDED (queue full)
        self.stats = CallStats()  # calls by kind: counts, failures, latency
        self.slots = slots if slots is not None else RequestSlots()  # requests in progress
        self._started = started  # a start_run succeeded (its message, the run id)
        self._in: MemoryObjectSendStream[tuple[bytes, ControlRequest]]
        self._out: MemoryObjectReceiveStream[tuple[bytes, ControlRequest]]
        self._in, self._out = anyio.create_memory_object_stream[tuple[bytes, ControlRequest]](queue)

    def submit(self, identity: bytes, msg: ControlRequest) -> p.ErrorReply | Refusal | None:
        """Queue a request (answered later by its task); a reply now only if the queue is full,
        a refusal (for intake to count and answer) if the client or the daemon holds as many
        requests in progress as it may."""
        refusal = self.slots.take(msg.client_id)
        if refusal is not None:
            if isinstance(msg, p.Call):
                kind = self._kind(msg.method)
                self.stats.done(kind, None)
                self.stats.failed(kind, msg.client_id, msg.method, refusal.code, refusal.message)
            return refusal
        try:
            self._in.send_nowait((identity, msg))
        except anyio.WouldBlock:
            self.slots.give(msg.client_id)
            self.refused += 1
            reply = p.ErrorReply(
                msg.req,
                "REQUEST_LIMIT_EXCEEDED",
                f"pending requests: the daemon already holds "
                f"{self._out.statistics().current_buffer_used} start_run/end_run/flush/call "
                "requests waiting to start (its limit); this one was not performed: try again "
                "shortly",
            )
            if isinstance(msg, p.Call):
                kind = self._kind(msg.method)
                self.stats.done(kind, None)
                self.stats.failed(kind, msg.client_id, msg.method, reply.code, reply.message)
            return reply
        if isinstance(msg, p.StartRun):
            self.runs.reserve(msg)
        elif isinstance(msg, p.EndRun):
            self.endings.receive(msg)  # held from now on: its run is no orphan
        return None

    async def run(self) -> None:
        """Start each queued request as its own contained task (until cancelled)."""
        handlers: dict[type, Callable[[bytes, Any], Awaitable[None]]] = {
            p.StartRun: self._on_start_run,
            p.EndRun: self._on_end_run,
            p.Flush: self._on_flush,
            p.Call: self._on_call,
        }

        async def handle(item: tuple[bytes, ControlRequest]) -> None:
            identity, msg = item
            try:
                await handlers[type(msg)](identity, msg)
            finally:
                self.slots.give(msg.client_id)

        def label(item: tuple[bytes, ControlRequest]) -> str:
            return handlers[type(item[1])].__name__

        await each_contained(self._out.receive, handle, self.supervisor, label)

    def close(self) -> None:
        """Close the queue (requests not started are dropped: the daemon is stopping)."""
        self._in.close()
        self._out.close()

    def late(self, seq: int) -> str:
        return (
            f"records up to seq {seq} were not committed within {self.barrier_timeout_s:g} s; "
            f"last sink error: {self._last_sink_error() or 'none'}"
        )

    # ------------------------------------------------------------------ requests

    async def _on_start_run(self, identity: bytes, msg: p.StartRun) -> None:
        try:
            handle = await self.runs.start(msg)
        except SinkError as exc:
            await self._send(identity, p.ErrorReply(msg.req, exc.code, exc.message))
            return
        self._started(msg, handle.run_id)
        await self._send(
            identity,
            p.RunStarted(
                msg.req, handle.run_id, handle.experiment_id, handle.artifact_uri, handle.run_name
            ),
        )

    async def _on_flush(self, identity: bytes, msg: p.Flush) -> None:
        if not await self._barrier(msg.client_id, msg.seq):
            await self._send(identity, p.ErrorReply(msg.req, "timeout", self.late(msg.seq)))
            return
        failures = self.ledger.take_failures(msg.client_id, msg.run_id)
        await self._send(identity, p.Done(msg.req, tuple(failures)))

    async def _on_end_run(self, identity: bytes, msg: p.EndRun) -> None:
        ending = self.endings.receive(msg)  # the one submit took (None: applied already)
        if ending is not None:
            await ending.durable.wait()
            if (
                ending.saved
                and self.ledger.received_upto(msg.client_id) >= msg.seq
                and p.FEATURE_ACCEPTED in self._announced(msg.client_id)  # else not a known kind
            ):
                await self._send(identity, p.Accepted(msg.req))  # the process may exit now
            with anyio.move_on_after(self.barrier_timeout_s):
                await ending.done.wait()
            if not ending.done.is_set():
                message = (
                    f"{self.late(msg.seq)}; the daemon holds this end_run and sets the run's "
                    "status once they are committed"
                )
                await self._send(identity, p.ErrorReply(msg.req, "timeout", message))
                return
        failures = self.ledger.take_failures(msg.client_id, msg.run_id)
        if ending is not None and ending.failure is not None:
            failures.append(ending.failure)
        await self._send(identity, p.Done(msg.req, tuple(failures)))

    def _kind(self, method: str) -> str:
        calls = self._calls()
        return "read" if calls is not None and calls.is_read(method) else "write"

    async def _on_call(self, identity: bytes, msg: p.Call) -> None:
        """A call, counted and timed (a failure also logged) before its answer is sent: a caller
        that has its answer finds it in the status document."""
        kind = self._kind(msg.method)
        started = time.monotonic()
        try:
            reply = await self._call(msg)
        except BaseException as exc:  # even SystemExit: answered, then contained by the supervisor
            if passes_through(exc):
                raise
            self.stats.done(kind, time.monotonic() - started)
            reason = f"{type(exc).__name__}: {exc}"[:300]
            self.stats.failed(kind, msg.client_id, msg.method, "INTERNAL_ERROR", reason)
            message = f"call {msg.method!r} failed in the daemon: {reason}"
            await self._send(identity, p.ErrorReply(msg.req, "INTERNAL_ERROR", message))
            raise
        self.stats.done(kind, time.monotonic() - started)
        if isinstance(reply, p.ErrorReply):
            self.stats.failed(kind, msg.client_id, msg.method, reply.code, reply.message)
        await self._send(identity, reply)

    async def _call(self, msg: p.Call) -> p.Result | p.ErrorReply:
        """An MLflow store method for the tracker:// plugin, after this client's earlier
        records are committed (read-your-writes): the answer."""
        calls = self._calls()
        assert calls is not None
        if not await self._barrier(msg.client_id, msg.seq):
            return p.ErrorReply(msg.req, "timeout", self.late(msg.seq))
        failures = self.ledger.take_failures(msg.client_id)
        invoke = functools.partial(calls.invoke, msg.target, msg.method, msg.args, msg.kwargs)
        try:
            calls.check(msg.target, msg.method)
            created = self.runs.created(creation_key(msg.client_id, msg.req))
            if msg.method == "create_run" and created is not None:
                # a request resent after a reconnect: answer with the run it created
                invoke = functools.partial(
                    calls.invoke,
                    "tracking",
                    "get_run",
                    encode_value([created.run_id]),
                    encode_value({}),
                )
            if calls.is_read(msg.method):
                result, value = await self._read(invoke)
            else:
                result, value = await self._write(invoke, retry_for=30.0)
        except SinkError as exc:
            for f in failures:  # not delivered: keep them for the next barrier
                self.ledger.fail(msg.client_id, f.record.run_id if f.record else None, f)
            return p.ErrorReply(msg.req, exc.code, exc.message)
        await self.runs.after_call(msg, result)
        return p.Result(msg.req, value, tuple(failures))
