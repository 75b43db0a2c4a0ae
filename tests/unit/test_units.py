"""Units (PROTOCOL.md 5.2, 11.1): the records of one ``tracker://`` ``log_batch`` call commit
all-or-nothing. Pure layers, one by one: the wire (the feature's fields reach only a peer that
announced the feature), the client session (an older daemon's refusal of a hello with features),
the frame maker (a unit is never split; plain records for an older daemon), the batcher (a unit
is one batch of its own, in its run's order; a changed param fails it whole at once) and the SQL
writer on a real SQLite store (a unit decided as MLflow's ``log_batch`` decides one call, errors
taken from MLflow itself)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from tests.support.mlflow_tables import sqlite_store, sqlite_template, table_rows
from tracker_client import protocol as p
from tracker_client.delivery.outbox import FrameMaker, UnitRecords
from tracker_client.delivery.session import Rehello, Session, Welcomed
from tracker_daemon.commit.batcher import Batcher, Origin
from tracker_daemon.store.sqlwriter import SqlWriter, UnitFailed

CID = "c" * 32
RUN = "r" * 32
TS = 1_700_000_000_000
O1 = Origin("c1", 1)
O2 = Origin("c1", 2)


def body(frame: bytes) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(frame, raw=False)[2]
    return out


def m(i: int, run: str = RUN, key: str = "loss") -> p.Metric:
    return p.Metric(run, key, float(i), TS + i, i)


def wire(rec: p.Record) -> list[Any]:
    return p.record_to_wire(rec)


# ------------------------------------------------------------------------------ the wire


def test_feature_fields_are_left_out_when_empty_so_an_old_peer_never_sees_them() -> None:
    hello = p.Hello(1, CID, 1, "h", "v")
    welcome = p.Welcome(1, "v", 0, "/s", 4096, "/sp")
    data = p.Data(CID, 1, (m(0), m(1)))
    assert "features" not in body(p.encode(hello))
    assert "features" not in body(p.encode(welcome))
    assert "units" not in body(p.encode(data))
    assert "units" not in body(p.encode_data(CID, 1, [wire(m(0))]))
    # and an old peer's messages (no field) decode as empty
    assert p.decode(p.encode(hello)) == hello and p.decode(p.encode(data)) == data


def test_feature_fields_round_trip() -> None:
    hello = p.Hello(1, CID, 1, "h", "v", 0, p.FEATURES)
    welcome = p.Welcome(1, "v", 0, "/s", 4096, "/sp", ("units", "later"))
    data = p.Data(CID, 1, (m(0), m(1), m(2), m(3)), units=((0, 2), (3, 1)))
    for msg in (hello, welcome, data):
        assert p.decode(p.encode(msg)) == msg
    assert body(p.encode(data))["units"] == [[0, 2], [3, 1]]
    raw = p.encode_data(CID, 1, [wire(m(0)), wire(m(1))], [[0, 2]])
    assert p.decode(raw) == p.Data(CID, 1, (m(0), m(1)), units=((0, 2),))


@pytest.mark.parametrize(
    ("units", "where"),
    [
        ([[0, 0]], "data.units[0]"),  # empty
        ([[2, 3]], "data.units[0]"),  # beyond the records
        ([[0, 2], [1, 2]], "data.units[1]"),  # overlapping
        ([[2, 1], [0, 1]], "data.units[1]"),  # not ascending
        ([[-1, 2]], "data.units[0]"),
        ([[0, 4]], "data.units[0]"),  # two runs in one unit
        ([[0]], "data.units[0]"),
        ([[0, "2"]], "data.units[0]"),
        ({"0": 2}, "data.units"),
    ],
)
def test_malformed_units_refuse_the_frame(units: Any, where: str) -> None:
    records = [wire(m(0)), wire(m(1)), wire(m(2)), wire(m(3, run="s" * 32))]
    frame = msgpack.packb(
        [1, "data", {"client_id": CID, "seq": 1, "records": records, "units": units}]
    )
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frame)
    assert info.value.code == "bad_field" and info.value.message.startswith(where)


# ------------------------------------------------------------------------------ the session


def test_hello_announces_features_and_falls_back_when_an_old_daemon_refuses_them() -> None:
    s = Session(CID, pid=1, host="h", version="v")
    first = p.decode(s.hello(resend=True))
    assert isinstance(first, p.Hello) and first.features == p.FEATURES
    # an old daemon: unknown field -> bad_field with the hello's req
    refusal = p.ErrorReply(first.req, "bad_field", "hello: unknown field(s) 'features'")
    events = s.receive(refusal)
    assert len(events) == 1 and isinstance(events[0], Rehello)
    plain = events[0].frame
    assert "features" not in body(plain)
    second = p.decode(plain)
    assert isinstance(second, p.Hello) and second.req != first.req
    assert s.resend_req == second.req  # its welcome triggers the resend the first one would have
    (welcomed,) = s.receive(p.Welcome(second.req, "old", 0, "/s", 4096, "/sp"))
    assert isinstance(welcomed, Welcomed) and s.features == frozenset()
    # the next connection tries features again (it may be another daemon)
    s.disconnected()
    third = p.decode(s.hello(resend=True))
    assert isinstance(third, p.Hello) and third.features == p.FEATURES
    (welcomed,) = s.receive(p.Welcome(third.req, "new", 0, "/s", 4096, "/sp", p.FEATURES))
    assert s.features == frozenset(p.FEATURES)


def test_other_errors_about_a_hello_are_not_a_fallback() -> None:
    s = Session(CID, pid=1, host="h", version="v")
    hello = p.decode(s.hello(resend=False))
    assert isinstance(hello, p.Hello)
    events = s.receive(p.ErrorReply(hello.req, "limit_exceeded", "max_clients"))
    assert not any(isinstance(e, Rehello) for e in events) and not s.plain_hello


# ------------------------------------------------------------------------------ the frame maker


def maker(queue: deque[Any], *, units: bool, max_records: int = 1000) -> FrameMaker:
    fm = FrameMaker(queue, lambda: CID, max_records=max_records)
    fm.units = units
    return fm


def test_for_a_daemon_without_units_a_unit_goes_as_plain_records() -> None:
    q: deque[Any] = deque([wire(m(0)), UnitRecords([wire(m(1)), wire(m(2))]), wire(m(3))])
    unit = maker(q, units=False).take(1, lambda: 1)
    assert unit is not None and "units" not in body(unit.frame)
    assert unit.records == [wire(m(i)) for i in range(4)] and not q


def test_a_unit_is_marked_and_never_split_across_frames() -> None:
    q: deque[Any] = deque([wire(m(0)), wire(m(1)), UnitRecords([wire(m(i)) for i in range(2, 6)])])
    fm = maker(q, units=True, max_records=4)
    first = fm.take(1, lambda: 1)
    second = fm.take(2, lambda: 1)
    assert first is not None and second is not None and not q
    assert "units" not in body(first.frame) and len(first.records) == 2
    assert p.decode(second.frame) == p.Data(CID, 2, tuple(m(i) for i in range(2, 6)), ((0, 4),))
    fm.give_back(second)  # back as the unit it was
    assert len(q) == 1 and isinstance(q[0], UnitRecords)


def test_a_unit_larger_than_a_frame_goes_as_plain_records() -> None:
    big = [["p", RUN, f"k{i}", "v" * 500] for i in range(20)]
    q: deque[Any] = deque([UnitRecords(big)])
    fm = maker(q, units=True)
    fm.max_bytes = 4000
    frames = []
    while (unit := fm.take(len(frames) + 1, lambda: 1)) is not None:
        frames.append(unit)
    assert len(frames) > 1 and all("units" not in body(u.frame) for u in frames)
    assert [r for u in frames for r in u.records] == big


# ------------------------------------------------------------------------------ the batcher


def test_a_unit_is_one_batch_between_the_records_before_and_after_it() -> None:
    b = Batcher(max_age=0.0)
    b.add(O1, [m(0), p.Param(RUN, "a", "1"), p.Tag(RUN, "t", "0")], 0.0)
    unit = [p.Param(RUN, "b", "2"), m(1), p.Tag(RUN, "t", "1")]
    assert b.add_unit(O1, unit, 0.0) == []
    b.add(O2, [m(2), p.Tag(RUN, "t", "2")], 0.0)
    batches = []
    while (batch := b.pop_ready(1.0)) is not None:
        batches.append(batch)
    assert [(x.unit, [r for r, _ in x.items]) for x in batches] == [
        (False, [m(0), p.Param(RUN, "a", "1"), p.Tag(RUN, "t", "0")]),
        (True, unit),
        (False, [m(2), p.Tag(RUN, "t", "2")]),
    ]
    assert b.pending == 0 and b.runs == 0
    with pytest.raises(ValueError, match="never split"):
        batches[1].split()


def test_a_unit_changing_a_known_param_fails_whole_at_once_reported_once() -> None:
    b = Batcher()
    b.add(O1, [p.Param(RUN, "a", "1")], 0.0)
    unit = [m(0), p.Param(RUN, "a", "2"), p.Param(RUN, "newp", "x"), p.Tag(RUN, "t", "v")]
    settled = b.add_unit(O2, unit, 0.0)
    assert [s.record for s in settled] == unit
    assert all(
        s.failure is not None and s.failure.code == "INVALID_PARAMETER_VALUE" for s in settled
    )
    assert [s.reported for s in settled] == [False, True, False, False]
    reported = settled[1].failure
    assert reported is not None and reported.message == (
        "Changing param values is not allowed. Params were already logged="
        f"'[{{'key': 'a', 'old_value': '1', 'new_value': '2'}}]' for run ID='{RUN}'."
    )
    assert b.pending == 1  # only the first param; newp is not known
    b.add(O2, [p.Param(RUN, "newp", "y")], 0.0)
    assert b.pending == 2


def test_a_unit_leaves_out_params_known_with_the_same_value() -> None:
    b = Batcher()
    b.add(O1, [p.Param(RUN, "a", "1")], 0.0)
    settled = b.add_unit(O2, [p.Param(RUN, "a", "1"), p.Param(RUN, "b", "2")], 0.0)
    assert [(s.record.key, s.failure) for s in settled] == [("a", None)]
    assert b.pending == 2


# ------------------------------------------------------------------------------ the SQL writer


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def stores(template: Path, tmp_path: Path) -> Iterator[Any]:
    made: list[Any] = []

    def make(name: str) -> Any:
        made.append(sqlite_store(template, tmp_path / name))
        return made[-1]

    yield make
    for store in made:
        store.engine.dispose()


def _mlflow_args(records: list[p.Record]) -> tuple[list[Any], list[Any], list[Any]]:
    return (
        [MlflowMetric(r.key, r.value, r.timestamp, r.step) for r in records if type(r) is p.Metric],
        [MlflowParam(r.key, r.value) for r in records if type(r) is p.Param],
        [RunTag(r.key, r.value) for r in records if type(r) is p.Tag],
    )


UNITS: dict[str, list[p.Record]] = {
    "changed_param": [m(0), p.Param("", "a", "2"), p.Param("", "newp", "x"), p.Tag("", "t", "v")],
    "two_changed": [p.Param("", "newp", "x"), p.Param("", "a", "2"), p.Param("", "b", "3")],
    "bad_metric_name": [p.Param("", "p", "1"), m(1), p.Metric("", "bad//k", 1.0, TS, 0)],
    "negative_timestamp": [m(0), p.Metric("", "neg", 1.0, -5, 0), p.Tag("", "t", "x")],
    "bad_tag_after_bad_param": [p.Tag("", "bad//t", "x"), p.Param("", "bad//p", "1")],
    "duplicate_param_keys": [p.Param("", "d", "1"), m(0), p.Param("", "d", "1")],
    "too_many_params": [p.Param("", f"k{i}", "v") for i in range(101)],
    "valid": [m(0), m(1), p.Param("", "a", "1"), p.Param("", "c", "3"), p.Tag("", "t", "1")],
}


@pytest.mark.parametrize("case", sorted(UNITS))
def test_writer_decides_a_unit_as_mlflow_log_batch_decides_the_call(stores: Any, case: str) -> None:
    records = UNITS[case]
    results = []
    for name in ("mlflow", "writer"):
        store = stores(name)
        run = str(store.create_run("0", "u", 1000, [], "orig").info.run_id)
        store.log_batch(run, [], [MlflowParam("a", "1"), MlflowParam("b", "2")], [])
        if name == "mlflow":
            try:
                store.log_batch(run, *_mlflow_args(records))
                outcome: Any = None
            except MlflowException as exc:
                outcome = (str(exc.error_code), exc.message)
        else:
            other = str(store.create_run("0", "u", 1000, [], "other").info.run_id)
            out = SqlWriter(store.engine).write(
                [(other, [m(5)]), (run, records), (other, [m(6)])], units=frozenset({1})
            )
            assert out[0] is None and out[2] is None  # the rest of the transaction commits
            failed = out[1]
            assert failed is None or isinstance(failed, UnitFailed)
            outcome = None if failed is None else (failed.code, failed.message)
            if failed is not None:
                assert 0 <= failed.index < len(records)
        if outcome is not None:  # the run ids differ between the two stores
            outcome = (outcome[0], outcome[1].replace(run, "<run>"))
        results.append((outcome, table_rows(store.engine, {run: "run"})))
    assert results[0] == results[1]


def test_writer_reports_the_failing_element_of_a_unit(stores: Any) -> None:
    store = stores("w")
    run = str(store.create_run("0", "u", 1000, [], "orig").info.run_id)
    store.log_batch(run, [], [MlflowParam("a", "1")], [])
    (out,) = SqlWriter(store.engine).write([(run, UNITS["changed_param"])], units=frozenset({0}))
    assert isinstance(out, UnitFailed) and out.index == 1
    (out,) = SqlWriter(store.engine).write([(run, UNITS["bad_metric_name"])], units=frozenset({0}))
    assert isinstance(out, UnitFailed) and out.index == 2
