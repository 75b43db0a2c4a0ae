"""Fakes of the pure seams of the run service and control (no MLflow): the blocking sink calls
and the daemon's ``write`` (which runs them in a thread with retries) — a fake is the point of
these unit tests; the real sink is exercised by the integration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tracker_daemon.errors import SinkError
from tracker_daemon.intake.clients import ClientInfo
from tracker_daemon.runs.run_service import RunService
from tracker_daemon.runs.runs import RunBook
from tracker_daemon.store.sink import RunHandle

T = TypeVar("T")


class FakeSink:
    """Records every call; creates runs ``run-1``, ``run-2``, ...; ``fail_create`` is raised by
    the next create_run, ``fail_log_batch`` by the next log_batch."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_create: SinkError | None = None
        self.fail_log_batch: SinkError | None = None
        self.params: dict[str, dict[str, str]] = {}
        self._runs = 0

    def get_or_create_experiment(self, name: str) -> str:
        self.calls.append(("get_or_create_experiment", (name,)))
        return f"exp-{name}"

    def create_run(
        self,
        experiment_id: str,
        start_time: int,
        tags: dict[str, str],
        run_name: str | None,
        parent_run_id: str | None,
    ) -> RunHandle:
        self.calls.append(
            ("create_run", (experiment_id, start_time, tags, run_name, parent_run_id))
        )
        if self.fail_create is not None:
            exc, self.fail_create = self.fail_create, None
            raise exc
        self._runs += 1
        rid = f"run-{self._runs}"
        return RunHandle(rid, experiment_id, f"file:///art/{rid}", run_name or rid, {})

    def resume_run(self, run_id: str) -> RunHandle:
        self.calls.append(("resume_run", (run_id,)))
        return RunHandle(run_id, "0", f"file:///art/{run_id}", run_id, self.params.get(run_id, {}))

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        self.calls.append(("end_run", (run_id, status, end_time)))

    def run_info(self, run_id: str) -> RunHandle:
        self.calls.append(("run_info", (run_id,)))
        return RunHandle(run_id, "0", f"file:///elsewhere/{run_id}", run_id, {})

    def log_batch(
        self, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]
    ) -> None:
        if self.fail_log_batch is not None:
            exc, self.fail_log_batch = self.fail_log_batch, None
            raise exc
        self.calls.append(("log_batch", (run_id, metrics, params, tags)))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


class FakeExperiments:
    """experiments.Experiments: experiments ``exp-<name>``; ``named`` maps (experiment, run
    name) to the run ``latest_run_named`` finds."""

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink  # calls are recorded in the sink's log
        self.named: dict[tuple[str, str], str] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.current: dict[str, str | None] = {}  # name -> id the store has now (a rename)

    def find(self, name: str) -> str | None:
        """An experiment the fakes got or created before (none is ever renamed here)."""
        self.sink.calls.append(("experiments.find", (name,)))
        if name in self.current:
            return self.current[name]
        made = {"experiments.get_or_create", "get_or_create_experiment"}
        known = any(n in made and args[0] == name for n, args in self.sink.calls)
        return f"exp-{name}" if known else None

    def get_or_create(self, name: str, artifact_location: str | None) -> str:
        self.sink.calls.append(("experiments.get_or_create", (name, artifact_location)))
        return f"exp-{name}"

    def set_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        self.sink.calls.append(("experiments.set_tags", (experiment_id, tags)))
        self.tags.setdefault(experiment_id, {}).update(tags)

    def latest_run_named(self, experiment_id: str, run_name: str) -> str | None:
        self.sink.calls.append(("experiments.latest_run_named", (experiment_id, run_name)))
        return self.named.get((experiment_id, run_name))


class FakeWrite:
    """The daemon's ``write``: here it calls ``fn`` at once and records its name and retry_for."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float | None]] = []

    async def __call__(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None) -> T:
        inner = getattr(fn, "func", fn)  # a functools.partial: the function it calls
        name = str(getattr(inner, "__name__", "?"))
        self.log.append((name, retry_for))
        return fn(*args)


class Wiring:
    """A RunService on a real RunBook in ``tmp_path`` with fakes around it, and what it did."""

    def __init__(self, tmp_path: Path, **kw: Any) -> None:
        self.sink = FakeSink()
        self.experiments = FakeExperiments(self.sink)
        self.write = FakeWrite()
        self.clients: dict[str, ClientInfo] = {}
        self.gone: list[str] = []
        self.seeded: list[tuple[str, dict[str, str]]] = []
        self.released: list[str] = []
        self.runbook = RunBook(tmp_path / "runs.log")
        self.runbook.load()
        self.runs = RunService(
            self.runbook,
            self.sink,
            experiments=self.experiments,
            write=self.write,
            owner_of=self.clients.get,
            owner_gone=lambda info: self.gone.append(info.client_id),
            seed_params=lambda rid, params: self.seeded.append((rid, params)),
            release_run=self.released.append,
            **kw,
        )
