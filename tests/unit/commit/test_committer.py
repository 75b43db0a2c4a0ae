"""The committer (committer.py) against a FakeBackend: bisection of a poison batch, errors about
a whole run, which lanes wake, which runs a barrier expedites, and batches of offline ids not
decided yet parked off the lane (never waited for)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from tests.support.fakes import FakeBackend
from tracker_client import protocol as p
from tracker_daemon.commit.batcher import Origin
from tracker_daemon.commit.committer import Committer
from tracker_daemon.commit.lanes import Lanes
from tracker_daemon.commit.offline_ids import Waiting
from tracker_daemon.errors import PermanentSinkError, RetryableSinkError, RunGone
from tracker_daemon.ops.status import Counters

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def log_batch(*args: Any) -> None:  # the sink method the committer is given (never run here)
    raise AssertionError("FakeBackend answers instead")


class Settled:
    """Records what the committer settles (the Settles protocol)."""

    def __init__(self) -> None:
        self.ok: Counter[Origin] = Counter()
        self.failed: list[tuple[Origin, p.Record | None, p.Failure]] = []

    def committed(self, per_origin: Mapping[Origin, int]) -> None:
        self.ok.update(per_origin)

    def settle(
        self, origin: Origin, run_id: str | None, record: p.Record | None, failure: p.Failure | None
    ) -> None:
        if failure is None:
            self.ok[origin] += 1
        else:
            self.failed.append((origin, record, failure))


def metric(run: str, step: int, key: str = "loss") -> p.Metric:
    return p.Metric(run, key, float(step), 1_700_000_000_000 + step, step)


def identity(run_id: str, replayed: bool = False) -> str:
    return run_id


def make(
    lanes: Lanes,
    backend: FakeBackend,
    runs: Mapping[str, Iterable[str]] | None = None,
) -> tuple[Committer, Settled, Counters]:
    settled = Settled()
    counters = Counters()
    runs_of: Callable[[str], Iterable[str]] = lambda cid: (runs or {}).get(cid, ())  # noqa: E731
    committer = Committer(
        lanes,
        backend,
        settled,
        counters,
        log_batch=log_batch,
        lookup=identity,
        runs_of=runs_of,
        clock=lambda: 0.0,
    )
    return committer, settled, counters


def poison_handler(bad_step: int) -> Callable[[Callable[..., Any], tuple[Any, ...]], None]:
    def handler(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        _run, metrics, _params, _tags = args
        if any(m.step == bad_step for m in metrics):
            raise PermanentSinkError("INVALID_PARAMETER_VALUE", f"step {bad_step} is poison")

    return handler


async def test_a_poison_record_is_isolated_by_bisection() -> None:
    backend = FakeBackend(poison_handler(bad_step=5))
    lanes = Lanes(1, max_age=1.0)
    committer, settled, counters = make(lanes, backend)
    origin = Origin("c1", 1)
    committer.add(origin, [metric("r", s) for s in range(8)])
    batch = lanes.pop_ready(0, now=10.0)
    assert batch is not None and len(batch) == 8
    await committer.commit(batch)
    # depth first, in order: [0..7] fails, [0..3] ok, [4..7] fails, [4,5] fails, [4] ok,
    # [5] fails (settled as failed), [6,7] ok
    steps = [[m.step for m in args[1]] for _, args in backend.calls]
    assert steps == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]
    assert settled.ok == Counter({origin: 7})
    assert len(settled.failed) == 1
    f_origin, record, failure = settled.failed[0]
    assert f_origin == origin and record == metric("r", 5)
    assert failure.code == "INVALID_PARAMETER_VALUE" and "poison" in failure.message
    assert counters.batches == 3  # the successful log_batch calls
    assert len(backend.errors) == 4  # each failed call noted once (health)
    assert lanes.pending == 0


async def test_an_error_about_the_whole_run_fails_the_batch_without_bisecting() -> None:
    def gone(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        raise RunGone("RESOURCE_DOES_NOT_EXIST", "no such run")

    backend = FakeBackend(gone)
    lanes = Lanes(1, max_age=1.0)
    committer, settled, _ = make(lanes, backend)
    committer.add(Origin("c1", 1), [metric("r", s) for s in range(6)])
    committer.add(Origin("c1", 2), [p.Param("r", "lr", "0.1")])
    batch = lanes.pop_ready(0, now=10.0)
    assert batch is not None
    await committer.commit(batch)
    assert len(backend.calls) == 1
    assert sum(settled.ok.values()) == 0
    assert [(o.seq, type(r).__name__) for o, r, _ in settled.failed] == [(1, "Metric")] * 6 + [
        (2, "Param")
    ]
    # the failed param is forgotten: logging it again is not a no-op
    committer.add(Origin("c1", 3), [p.Param("r", "lr", "0.1")])
    assert lanes.pending == 1


async def test_retryable_errors_are_the_backends_business() -> None:
    # a RetryableSinkError that escapes the backend (its retry_for ran out) is not settled:
    # the lane loop's supervisor restarts it; the records stay accounted as uncommitted
    def down(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        raise RetryableSinkError("TEMPORARILY_UNAVAILABLE", "down")

    backend = FakeBackend(down)
    lanes = Lanes(1, max_age=1.0)
    committer, settled, _ = make(lanes, backend)
    committer.add(Origin("c1", 1), [metric("r", 0)])
    batch = lanes.pop_ready(0, now=10.0)
    assert batch is not None
    with pytest.raises(RetryableSinkError):
        await committer.commit(batch)
    assert sum(settled.ok.values()) == 0 and settled.failed == []


async def test_add_wakes_only_the_lanes_that_got_records() -> None:
    lanes = Lanes(3, max_age=1.0)
    committer, _, _ = make(lanes, FakeBackend())
    for run in ("a", "b", "c"):
        lanes.lane_of(run)  # one run per lane
    committer.add(Origin("c1", 1), [metric("b", 0), metric("b", 1)])
    woken = [w.is_set for w in committer.wakes]
    assert woken == [lane == lanes.lane_of("b") for lane in range(3)]
    assert woken.count(True) == 1
    committer.add(Origin("c1", 2), [metric("a", 0), metric("c", 0)])
    assert [w.is_set for w in committer.wakes] == [True, True, True]


async def test_a_barrier_expedites_only_the_runs_of_the_client_that_asked() -> None:
    lanes = Lanes(2, max_age=60.0)
    runs = {"c1": {"r1", "r3"}, "c2": {"r2"}}
    committer, _, _ = make(lanes, FakeBackend(), runs)
    for run in ("r1", "r2", "r3"):  # the least loaded lane: r1 -> 0, r2 -> 1, r3 -> 0
        lanes.lane_of(run)
    assert lanes.lane_of("r1") == lanes.lane_of("r3") != lanes.lane_of("r2")
    committer.add(Origin("c1", 1), [metric("r1", 0), metric("r3", 0)])
    committer.add(Origin("c2", 1), [metric("r2", 0)])
    for w in committer.wakes:
        w.set()
        await w.wait(0)  # consume: start from no pending wake-ups
    assert lanes.pop_ready(0, now=1.0) is None and lanes.pop_ready(1, now=1.0) is None

    committer.expedite_client("c1")
    lane1 = lanes.lane_of("r1")
    assert [w.is_set for w in committer.wakes] == [lane == lane1 for lane in range(2)]
    got = []
    while (batch := lanes.pop_ready(lane1, now=1.0)) is not None:
        got.append(batch.run_id)
    assert sorted(got) == ["r1", "r3"]
    assert lanes.pop_ready(lanes.lane_of("r2"), now=1.0) is None  # c2's run keeps batching
    assert lanes.pending == 1

    committer.expedite_client("nobody")  # no runs: nothing happens, nothing is assigned
    assert lanes.pending == 1
    committer.expedite_all()
    batch = lanes.pop_ready(lanes.lane_of("r2"), now=1.0)
    assert batch is not None and batch.run_id == "r2"


async def test_expediting_a_released_run_assigns_it_no_lane() -> None:
    lanes = Lanes(2, max_age=60.0)
    committer, _, _ = make(lanes, FakeBackend(), {"c1": {"gone"}})
    committer.expedite_client("c1")
    assert lanes._assigned == {}  # noqa: SLF001 - the load accounting stays exact
    assert [w.is_set for w in committer.wakes] == [False, False]


# ---------------------------------------------------------------------- the SQL writer's path


def write_entries(*args: Any) -> list[Any]:  # the sink method given (never run here)
    raise AssertionError("FakeBackend answers instead")


def sql_committer(lanes: Lanes, backend: FakeBackend) -> tuple[Committer, Settled, Counters]:
    committer, settled, counters = make(lanes, backend)
    committer.write_entries = write_entries
    return committer, settled, counters


async def take_and_commit(committer: Committer, lanes: Lanes) -> None:
    lanes.expedite(None)
    batches = committer._take(0)  # noqa: SLF001 - what run_lane does, without its loop
    assert batches
    await committer.commit_all(batches)


async def test_the_batches_of_many_runs_commit_in_one_transaction() -> None:
    from tracker_daemon.store.sqlwriter import RunFailed

    def answer(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        assert fn is write_entries
        entries, units = args
        assert [run for run, _ in entries] == ["a", "b", "c"] and units == frozenset()
        # a: all committed; b: its second record failed; c: the run is gone
        return [None, {1: ("INVALID_PARAMETER_VALUE", "b's param")}, RunFailed("X", "c is gone")]

    backend = FakeBackend(answer)
    lanes = Lanes(1, max_age=60.0)
    committer, settled, counters = sql_committer(lanes, backend)
    committer.add(Origin("c1", 1), [metric("a", 0), metric("a", 1)])
    committer.add(Origin("c2", 1), [metric("b", 0), p.Param("b", "lr", "2"), metric("b", 1)])
    committer.add(Origin("c3", 1), [metric("c", 0), metric("c", 1), metric("c", 2)])
    await take_and_commit(committer, lanes)
    assert len(backend.calls) == 1 and counters.batches == 1
    assert settled.ok == Counter({Origin("c1", 1): 2, Origin("c2", 1): 2})
    failed = [(o, r, f.code, f.message) for o, r, f in settled.failed]
    assert failed[0] == (
        Origin("c2", 1),
        p.Param("b", "lr", "2"),
        "INVALID_PARAMETER_VALUE",
        "b's param",
    )
    assert [(o, f) for o, _, f, _ in failed[1:]] == [(Origin("c3", 1), "X")] * 3
    # the failed param is forgotten: logging it again is buffered, not settled as a no-op
    committer.add(Origin("c2", 2), [p.Param("b", "lr", "2")])
    assert lanes.pending == 1


async def test_a_logged_model_metric_goes_to_log_batch_in_its_place() -> None:
    seen: list[tuple[str, list[str]]] = []

    def answer(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if fn is write_entries:
            seen.append(("sql", [run for run, _ in args[0]]))
            return [None] * len(args[0])
        seen.append(("log_batch", [args[0]]))
        return None

    backend = FakeBackend(answer)
    lanes = Lanes(1, max_age=60.0)
    committer, settled, _ = sql_committer(lanes, backend)
    committer.add(Origin("c1", 1), [metric("a", 0)])
    model_metric = p.Metric("m", "acc", 0.5, 1_700_000_000_000, 0, model_id="m-123")
    committer.add(Origin("c1", 2), [model_metric])
    committer.add(Origin("c1", 3), [metric("b", 0)])
    # pop order follows the oldest record: a, m, b
    await take_and_commit(committer, lanes)
    assert seen == [("sql", ["a"]), ("log_batch", ["m"]), ("sql", ["b"])]
    assert sum(settled.ok.values()) == 3 and settled.failed == []


async def test_a_transaction_the_database_refuses_falls_back_to_log_batch() -> None:
    def answer(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if fn is write_entries:
            raise PermanentSinkError("INTERNAL_ERROR", "IntegrityError: UNIQUE constraint failed")
        return None

    backend = FakeBackend(answer)
    lanes = Lanes(1, max_age=60.0)
    committer, settled, counters = sql_committer(lanes, backend)
    committer.add(Origin("c1", 1), [metric("a", 0), metric("b", 0)])
    await take_and_commit(committer, lanes)
    assert [fn for fn, _ in backend.calls] == [write_entries, log_batch, log_batch]
    assert counters.sql_fallbacks == 1 and len(backend.errors) == 1
    assert settled.ok == Counter({Origin("c1", 1): 2}) and settled.failed == []


async def test_one_transaction_takes_at_most_txn_records() -> None:
    from tracker_daemon.commit.committer import TXN_RECORDS

    lanes = Lanes(1, max_age=60.0)
    committer, _, _ = sql_committer(lanes, FakeBackend())
    runs = TXN_RECORDS // 1000 + 5
    for r in range(runs):  # 1,000 metrics per run: one full batch each
        committer.add(Origin("c1", r + 1), [metric(f"r{r}", s) for s in range(1000)])
    first = committer._take(0)  # noqa: SLF001
    assert sum(len(b) for b in first) == TXN_RECORDS
    rest = committer._take(0)  # noqa: SLF001
    assert sum(len(b) for b in rest) == 5000 and lanes.pending == 0
    committer.write_entries = None  # log_batch: one batch at a time
    committer.add(Origin("c1", 999), [metric("x", s) for s in range(2000)])
    assert len(committer._take(0)) == 1  # noqa: SLF001


# ---------------------------------------------------------------------- offline ids


class Offline:
    """RunService.lookup for offline ids, driven by the test: ``verdicts[run_id]``."""

    def __init__(self) -> None:
        self.verdicts: dict[str, str | Waiting | RunGone] = {}
        self.asked: list[tuple[str, bool]] = []

    def lookup(self, run_id: str, replayed: bool = False) -> str | Waiting | RunGone:
        self.asked.append((run_id, replayed))
        return self.verdicts.get(run_id, run_id)


def offline_committer(
    lanes: Lanes, backend: FakeBackend, clock: list[float], replayed: set[Origin] | None = None
) -> tuple[Committer, Settled, Offline]:
    settled, offline = Settled(), Offline()
    committer = Committer(
        lanes,
        backend,
        settled,
        Counters(),
        log_batch=log_batch,
        lookup=offline.lookup,
        replayed=lambda origin: origin in (replayed or set()),
        runs_of=lambda cid: (),
        clock=lambda: clock[0],
    )
    committer.write_entries = write_entries
    return committer, settled, offline


async def test_a_waiting_offline_run_is_parked_and_the_lane_goes_on() -> None:
    committed: list[list[str]] = []

    def answer(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[None]:
        committed.append([run for run, _ in args[0]])
        return [None] * len(args[0])

    backend = FakeBackend(answer)
    lanes, clock = Lanes(1, max_age=0.0), [100.0]
    committer, settled, offline = offline_committer(lanes, backend, clock)
    offline.verdicts["offline-w"] = Waiting(130.0)
    committer.add(Origin("bad", 1), [metric("offline-w", 0)])
    committer.add(Origin("good", 1), [metric("good-run", 0)])
    batches = committer._take(0)  # noqa: SLF001 - what run_lane does, without its loop
    assert [b.run_id for b in batches] == ["good-run"]  # nobody waits for offline-w
    assert committer.parked_records == 1 and committer.pending == 1 and committer.busy
    assert committer._next_deadline(0) == 130.0  # noqa: SLF001
    # later records of the parked run are parked behind it (its order is kept)
    committer.add(Origin("bad", 2), [metric("offline-w", 1)])
    assert committer._take(0) == [] and committer.parked_records == 2  # noqa: SLF001
    # its start_run is handled: both batches come back, in order, committed under the run
    offline.verdicts["offline-w"] = "mlflow-run"
    committer.offline_handled("offline-w")
    assert committer.wakes[0].is_set
    batches = committer._take(0)  # noqa: SLF001
    assert [[m.step for m in b.metrics] for b in batches] == [[0], [1]]
    await committer.commit_all(batches)
    assert committed == [["mlflow-run", "mlflow-run"]]
    assert committer.parked_records == 0 and not committer.busy
    assert settled.ok == Counter({Origin("bad", 1): 1, Origin("bad", 2): 1})


async def test_a_parked_run_past_its_deadline_fails_with_the_reason() -> None:
    backend = FakeBackend(lambda fn, args: [None] * len(args[0]))
    lanes, clock = Lanes(1, max_age=0.0), [100.0]
    committer, settled, offline = offline_committer(lanes, backend, clock)
    offline.verdicts["offline-z"] = Waiting(130.0)
    committer.add(Origin("bad", 1), [metric("offline-z", 0), metric("offline-z", 1)])
    assert committer._take(0) == []  # noqa: SLF001
    clock[0] = 129.0
    assert committer._take(0) == []  # noqa: SLF001 - not due yet
    clock[0] = 130.0
    why = "offline run offline-z was never created (its start_run did not reach the daemon)"
    offline.verdicts["offline-z"] = RunGone("RESOURCE_DOES_NOT_EXIST", why)
    batches = committer._take(0)  # noqa: SLF001
    await committer.commit_all(batches)
    assert backend.calls == []  # nothing reached the store
    assert [(o, f.code, f.message) for o, _, f in settled.failed] == [
        (Origin("bad", 1), "RESOURCE_DOES_NOT_EXIST", why)
    ] * 2
    assert not committer.busy


async def test_a_never_started_offline_run_fails_at_once_and_replay_is_told() -> None:
    backend = FakeBackend(lambda fn, args: [None] * len(args[0]))
    lanes, clock = Lanes(1, max_age=0.0), [100.0]
    committer, settled, offline = offline_committer(lanes, backend, clock, {Origin("old", 1)})
    offline.verdicts["offline-n"] = RunGone("RESOURCE_DOES_NOT_EXIST", "offline run offline-n …")
    committer.add(Origin("old", 1), [metric("offline-n", 0)])
    committer.add(Origin("new", 1), [metric("offline-n", 1)])
    committer.add(Origin("new", 2), [metric("plain", 1)])
    await committer.commit_all(committer._take(0))  # noqa: SLF001
    assert [o for o, _, _ in settled.failed] == [Origin("old", 1), Origin("new", 1)]
    assert settled.ok == Counter({Origin("new", 2): 1})
    # an offline run's batch holding a replayed frame is looked up as replayed; plain ids never
    assert ("offline-n", True) in offline.asked and all(r != "plain" for r, _ in offline.asked)
