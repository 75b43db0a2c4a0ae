"""The run lifecycle on the event loop: start (create, resume by id, or find-or-create by name
in an experiment created with its tags and artifact location), end, the experiment by name
(read from the store at each start: no cache can outlive a rename), the
ids of offline runs (reserved when their ``start_run`` arrives, resolved to the MLflow run they
became; offline_ids.py decides what a record of an unknown one gets), the run bookkeeping of
plugin calls, and each run's artifact location.

Every MLflow call goes through the injected ``write`` (the daemon's writer limiter and retries);
``runs.log`` (:class:`~tracker_daemon.runs.RunBook`) is written from worker threads (it fsyncs).
Run creations are keyed by :func:`creation_key`, the one place that spells those keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio

from tracker_client import protocol as p

from ..commit.offline_ids import OFFLINE_PREFIX, OfflineIds, Waiting, is_offline
from ..errors import PermanentSinkError, RunGone, SinkError
from ..intake.clients import ClientInfo
from ..store.experiments import RESUME_BY_NAME
from ..store.sink import RunHandle
from .runs import RunBook

__all__ = [
    "OFFLINE_PREFIX",
    "RESOLVE_WAIT_S",
    "ExperimentCalls",
    "RunService",
    "RunSink",
    "check_start",
    "creation_key",
]

log = logging.getLogger("tracker_daemon")
T = TypeVar("T")

# How long a record of an offline run waits, at most, for a start_run the daemon received but has
# not handled yet, and a record of an unknown offline id for its start_run after the daemon
# starts serving (a resend after a restart): offline_ids.py. Nobody else waits meanwhile.
RESOLVE_WAIT_S = 30.0


def creation_key(client_id: str = "", req: int | None = None, *, offline_id: str = "") -> str:
    """The ``runs.log`` key of a run creation: ``offline:<offline_id>`` for an offline run (the
    same run may arrive live, replayed and imported), else ``<client_id>:<req>`` (a request resent
    after a reconnect)."""
    if offline_id:
        return f"offline:{offline_id}"
    return f"{client_id}:{req}"


def start_key(msg: p.StartRun) -> str:
    """The creation key of a ``start_run`` ("" when it names no client: not remembered)."""
    if msg.offline_id:
        return creation_key(offline_id=msg.offline_id)
    return creation_key(msg.client_id, msg.req) if msg.client_id else ""


class Write(Protocol):
    def __call__(
        self, fn: Callable[..., T], *args: Any, retry_for: float | None = None
    ) -> Awaitable[T]: ...


class RunSink(Protocol):
    """The blocking MLflow calls the run service makes (``sink.Sink``)."""

    def get_or_create_experiment(self, name: str) -> str: ...
    def resume_run(self, run_id: str) -> RunHandle: ...
    def create_run(
        self,
        experiment_id: str,
        start_time: int,
        tags: dict[str, str],
        run_name: str | None,
        parent_run_id: str | None,
    ) -> RunHandle: ...
    def end_run(self, run_id: str, status: str, end_time: int) -> None: ...
    def run_info(self, run_id: str) -> RunHandle: ...


class ExperimentCalls(Protocol):
    """The blocking calls of ``start_run``'s experiment and by-name options (experiments.py)."""

    def find(self, name: str) -> str | None: ...
    def get_or_create(self, name: str, artifact_location: str | None) -> str: ...
    def set_tags(self, experiment_id: str, tags: dict[str, str]) -> None: ...
    def latest_run_named(self, experiment_id: str, run_name: str) -> str | None: ...


def check_start(msg: p.StartRun) -> None:
    """Refuse option combinations the daemon cannot perform (INVALID_PARAMETER_VALUE)."""
    if msg.run_id is not None:
        return  # resuming by id ignores the experiment and naming options
    if msg.resume not in (None, RESUME_BY_NAME):
        raise PermanentSinkError(
            "INVALID_PARAMETER_VALUE",
            f"start_run.resume: {msg.resume[:100]!r} is not nil or {RESUME_BY_NAME!r}",
        )
    if msg.resume is not None and not msg.run_name:
        raise PermanentSinkError(
            "INVALID_PARAMETER_VALUE", "start_run.resume 'by_name' needs a run_name"
        )
    if msg.artifact_location is not None and msg.experiment_name is None:
        raise PermanentSinkError(
            "INVALID_PARAMETER_VALUE",
            "start_run.artifact_location needs an experiment_name (it is used when the daemon "
            "creates that experiment)",
        )


class RunService:
    def __init__(
        self,
        runbook: RunBook,
        sink: RunSink,
        *,
        experiments: ExperimentCalls,
        write: Write,
        owner_of: Callable[[str], ClientInfo | None],
        owner_gone: Callable[[ClientInfo], None],
        seed_params: Callable[[str, dict[str, str]], None],
        release_run: Callable[[str], object],
        resolve_wait_s: float = RESOLVE_WAIT_S,
        check_location: Callable[[str, str], None] = lambda location, field: None,
        on_offline: Callable[[str], None] = lambda offline_id: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runbook = runbook
        self.sink = sink
        self.experiments = experiments
        self._write = write
        self._owner_of = owner_of  # the client table's entry of a client id
        self._owner_gone = owner_gone  # its process exited: end its runs later
        self._seed_params = seed_params  # the batcher: params a resumed run already has
        self._release_run = release_run  # the batcher: forget an ended run
        self.resolve_wait_s = resolve_wait_s
        self._check_location = check_location  # artifact_roots.ArtifactRoots.check
        self._on_offline = on_offline  # the start_run of this offline id was handled
        self._clock = clock
        self.offline = OfflineIds(self._offline_run_id, wait_s=resolve_wait_s, since=clock())
        self._creating: dict[str, anyio.Event] = {}  # offline id -> set once handled
        self._by_name = anyio.Lock()  # one find-or-create by name at a time

    # ------------------------------------------------------------------ queries (pure)

    def created(self, key: str) -> RunHandle | None:
        return self.runbook.created.get(key) if key else None

    def offline_run(self, offline_id: str) -> RunHandle | None:
        return self.runbook.created.get(creation_key(offline_id=offline_id))

    def _offline_run_id(self, offline_id: str) -> str | None:
        handle = self.offline_run(offline_id)
        return None if handle is None else handle.run_id

    def open_runs_of(self, client_id: str) -> int:
        return sum(1 for run in self.runbook.open.values() if client_id in run.owners)

    def starts_new_run(self, msg: p.ClientMessage) -> bool:
        """Would ``msg`` open a run its client does not have open yet? (A resent request
        answered from the run book, or resuming a run the client owns, would not.)"""
        if isinstance(msg, p.Call):
            return (
                msg.method == "create_run"
                and self.created(creation_key(msg.client_id, msg.req)) is None
            )
        if not isinstance(msg, p.StartRun):
            return False
        if msg.offline_id:
            return self.offline_run(msg.offline_id) is None and not self.offline.in_flight(
                msg.offline_id
            )
        if self.created(start_key(msg)) is not None:
            return False
        if msg.run_id is not None:
            run = self.runbook.open.get(msg.run_id)
            return run is None or msg.client_id not in run.owners
        return True

    def owners(self) -> set[str]:
        return {o for run in self.runbook.open.values() for o in run.owners}

    def status(self) -> dict[str, Any]:
        return {"open_runs": len(self.runbook.open)}

    # ------------------------------------------------------------------ offline ids

    def reserve(self, msg: p.StartRun) -> None:
        """Called when a ``start_run`` is accepted, before it is handled: records of its offline
        run wait (a bounded time) for it instead of failing, and a second one is not counted as
        a new run."""
        if msg.offline_id:
            self.offline.reserve(msg.offline_id, self._clock())

    def serving(self) -> None:
        """The daemon serves from now: clients reconnect and resend their start_runs."""
        self.offline.serving(self._clock())

    def lookup(self, run_id: str, replayed: bool = False) -> str | Waiting | RunGone:
        """Without waiting: the MLflow run id for an id a client used (itself, or the run an
        offline id became), Waiting (its start_run may still come: ask again when
        ``on_offline`` names it, or at ``until``), or why its records fail. ``replayed``: for
        what a daemon received before a restart (offline_ids.py)."""
        if not is_offline(run_id):
            return run_id
        return self.offline.verdict(run_id, self._clock(), replayed=replayed)

    async def resolve(self, run_id: str, *, replayed: bool = False) -> str:
        """As :meth:`lookup`, waiting while it is Waiting (bounded). Raises RunGone."""
        while True:
            verdict = self.lookup(run_id, replayed)
            if isinstance(verdict, str):
                return verdict
            if isinstance(verdict, RunGone):
                raise verdict
            event = self._creating.setdefault(run_id, anyio.Event())
            with anyio.move_on_after(max(0.0, verdict.until - self._clock())):
                await event.wait()
            if not event.is_set() and not self.offline.in_flight(run_id):
                self._creating.pop(run_id, None)  # decided by the deadline: nothing to wake

    # ------------------------------------------------------------------ lifecycle

    async def experiment_id(self, msg: p.StartRun) -> str:
        """The run's experiment (got or created by name), with ``experiment_tags`` set."""
        if msg.artifact_location is not None:  # refused whether or not the experiment exists
            self._check_location(msg.artifact_location, "start_run.artifact_location")
        if msg.experiment_id is not None:
            exp_id = msg.experiment_id
        elif msg.experiment_name is None:
            exp_id = "0"  # MLflow's Default experiment
        else:
            name = msg.experiment_name
            found = await self._find_experiment(name)
            if found is not None:
                exp_id = found
            elif msg.artifact_location is not None:
                exp_id = await self._write(
                    self.experiments.get_or_create, name, msg.artifact_location, retry_for=5.0
                )
            else:
                exp_id = await self._write(self.sink.get_or_create_experiment, name, retry_for=5.0)
        if msg.experiment_tags:
            tags = dict(msg.experiment_tags)
            await self._write(self.experiments.set_tags, exp_id, tags, retry_for=5.0)
        return exp_id

    async def _find_experiment(self, name: str) -> str | None:
        """The active experiment ``name`` as the store has it now (one indexed read, no writer
        slot); None when there is none, it is deleted, or the read failed: then the write path
        (with retries) gets or creates it, or says it is deleted. Never remembered: another
        process (the MLflow UI) may rename, delete or restore it at any time."""
        try:
            return await anyio.to_thread.run_sync(self.experiments.find, name)
        except SinkError:
            return None

    async def _create_or_find(self, msg: p.StartRun) -> RunHandle:
        exp_id = await self.experiment_id(msg)
        if msg.resume == RESUME_BY_NAME and msg.run_name:
            async with self._by_name:  # two finders of one name must not both create
                found = await self._write(
                    self.experiments.latest_run_named, exp_id, msg.run_name, retry_for=5.0
                )
                if found is not None:
                    return await self._write(self.sink.resume_run, found, retry_for=5.0)
                return await self._create(msg, exp_id)
        return await self._create(msg, exp_id)

    async def _create(self, msg: p.StartRun, exp_id: str) -> RunHandle:
        start = msg.start_time or time.time_ns() // 1_000_000
        tags = dict(msg.tags)  # no tag of its own: PROTOCOL.md section 5.1, `tracker.offline_id`
        parent = await self.resolve(msg.parent_run_id) if msg.parent_run_id else None
        return await self._write(
            self.sink.create_run, exp_id, start, tags, msg.run_name, parent, retry_for=5.0
        )

    async def start(self, msg: p.StartRun) -> RunHandle:
        """Create or resume the run (once per creation key), record its owner. Raises
        SinkError."""
        key = start_key(msg)
        try:
            handle = self.created(key)
            if handle is not None:
                pass  # a retried request: answer with the run it already created
            elif msg.run_id is not None:
                handle = await self._write(self.sink.resume_run, msg.run_id, retry_for=5.0)
            else:
                check_start(msg)
                handle = await self._create_or_find(msg)
                if key:
                    await anyio.to_thread.run_sync(self.runbook.record_creation, key, handle)
        except SinkError as exc:
            if msg.offline_id:
                self.offline.failed(msg.offline_id, exc.message)
            raise
        finally:
            if msg.offline_id:
                self._offline_handled(msg.offline_id)
        await self.record_owner(handle, msg.client_id)
        if handle.params:
            self._seed_params(handle.run_id, handle.params)
        log.info("event=run_started run=%s experiment=%s", handle.run_id, handle.experiment_id)
        return handle

    def _offline_handled(self, offline_id: str) -> None:
        """Its start_run is handled (created, or failed): wake whoever waits for it."""
        if self.offline_run(offline_id) is not None:
            self.offline.created(offline_id)
        elif self.offline.in_flight(offline_id):  # ended without a SinkError (cancelled)
            self.offline.failed(offline_id, "its start_run was not completed")
        event = self._creating.pop(offline_id, None)
        if event is not None:
            event.set()
        self._on_offline(offline_id)

    async def record_owner(self, handle: RunHandle, client_id: str) -> ClientInfo | None:
        """Persist that ``client_id`` (with its pid, for liveness) has ``handle`` open; if its
        process is already gone, end the run once its records are committed."""
        owner = self._owner_of(client_id)
        await anyio.to_thread.run_sync(
            self.runbook.record_open,
            handle,
            client_id,
            owner.pid if owner else 0,
            owner.host if owner else "",
        )
        if owner is not None and owner.gone:
            self._owner_gone(owner)
        return owner

    async def end(self, run_id: str, status: str, end_time: int) -> None:
        run_id = await self.resolve(run_id)
        await self._write(self.sink.end_run, run_id, status, end_time, retry_for=30.0)
        await anyio.to_thread.run_sync(self.runbook.record_closed, run_id)
        self._release_run(run_id)  # bounded memory over thousands of runs
        log.info("event=run_ended run=%s status=%s", run_id, status)

    async def after_call(self, msg: p.Call, result: Any) -> None:
        """Keep run bookkeeping (ownership for liveness, idempotent create) for plugin calls.
        The runbook fsyncs: that runs in a worker thread, not on the event loop."""
        if msg.target != "tracking" or msg.method not in ("create_run", "update_run_info"):
            return
        info = getattr(result, "info", result)  # create_run: a Run; update_run_info: a RunInfo
        if not hasattr(info, "run_id") or not hasattr(info, "status"):
            return
        handle = RunHandle(
            info.run_id, str(info.experiment_id), info.artifact_uri, info.run_name, {}
        )
        key = creation_key(msg.client_id, msg.req)
        if msg.method == "create_run" and key not in self.runbook.created:
            await anyio.to_thread.run_sync(self.runbook.record_creation, key, handle)
        if info.status == "RUNNING":  # created, or resumed (mlflow.start_run(run_id=...))
            owner = await self.record_owner(handle, msg.client_id)
            if owner is not None:
                owner.runs.add(info.run_id)
        else:
            await anyio.to_thread.run_sync(self.runbook.record_closed, info.run_id)

    async def artifact_uri(self, run_id: str) -> str:
        run_id = await self.resolve(run_id)
        handle = self.runbook.handles.get(run_id)
        if handle is None:  # a run started elsewhere: read it (reads need no writer slot)
            handle = await anyio.to_thread.run_sync(self.sink.run_info, run_id)
            self.runbook.handles[run_id] = handle
        return handle.artifact_uri
