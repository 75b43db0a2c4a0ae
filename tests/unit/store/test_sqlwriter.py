"""The SQL writer (sqlwriter.py) on a real MLflow SQLite store made by MLflow.

Each rule of MLflow's ``log_batch`` the writer reproduces, checked on the exact rows it leaves;
where MLflow reports an error, the expected code and message are taken from MLflow itself (the
same call through ``store.log_batch``), not written down here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from tests.support.mlflow_tables import sqlite_store, sqlite_template, table_rows
from tests.support.store import sqlite_locked
from tracker_client.protocol import Metric, Param, Record, Tag
from tracker_daemon.store.sqlwriter import RunFailed, SqlWriter

MAX = 1.7976931348623157e308
PROVISIONAL = "provisional-id"  # what record.run_id may hold; the writer must use the entry's


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Iterator[Any]:
    s = sqlite_store(template, tmp_path / "store")
    yield s
    s.engine.dispose()


def new_run(store: Any, name: str = "run") -> str:
    return str(store.create_run("0", "user", 1000, [], name).info.run_id)


def m(key: str, value: float, ts: int = 100, step: int = 0) -> Metric:
    return Metric(PROVISIONAL, key, value, ts, step)


def rows(store: Any, *run_ids: str) -> dict[str, list[tuple[Any, ...]]]:
    return table_rows(store.engine, {r: f"run{i}" for i, r in enumerate(run_ids)})


def mlflow_error(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(MlflowException) as info:
        fn(*args)
    return str(info.value.error_code), str(info.value.message)


def test_metrics_nan_and_inf_are_stored_as_mlflow_does(store: Any) -> None:
    run = new_run(store)
    out = SqlWriter(store.engine).write(
        [(run, [m("a", math.nan), m("b", math.inf), m("c", -math.inf), m("d", 1.5, step=3)])]
    )
    assert out == [None]
    got = rows(store, run)
    # columns sorted: is_nan, key, run_uuid, step, timestamp, value
    assert got["metrics"] == [
        (False, "b", "run0", 0, 100, MAX),
        (False, "c", "run0", 0, 100, -MAX),
        (False, "d", "run0", 3, 100, 1.5),
        (True, "a", "run0", 0, 100, 0.0),
    ]
    assert got["latest_metrics"] == got["metrics"]
    history = store.get_metric_history(run, "a")
    assert len(history) == 1 and math.isnan(history[0].value)


def test_duplicates_and_a_replayed_transaction_are_no_ops(store: Any) -> None:
    a, b = new_run(store, "a"), new_run(store, "b")
    entries: list[tuple[str, list[Record]]] = [
        (a, [m("x", 1.0), m("x", 1.0), m("x", math.nan), m("x", math.nan), Param("", "p", "v")]),
        (b, [m("x", 2.0, step=1), Tag(PROVISIONAL, "t", "1")]),
        (a, [m("x", 1.0), m("x", 3.0, step=2)]),
    ]
    writer = SqlWriter(store.engine)
    assert writer.write(entries) == [None, None, None]
    first = rows(store, a, b)
    assert len(first["metrics"]) == 4  # a: 1.0, NaN, 3.0@2; b: 2.0@1
    assert writer.write(entries) == [None, None, None]  # replay after a crash
    assert rows(store, a, b) == first


def test_latest_metrics_follow_step_timestamp_value_in_arrival_order(store: Any) -> None:
    run = new_run(store)
    writer = SqlWriter(store.engine)
    writer.write([(run, [m("k", 5.0, ts=10, step=2), m("k", 9.0, ts=99, step=1)])])
    assert rows(store, run)["latest_metrics"] == [(False, "k", "run0", 2, 10, 5.0)]
    # an older step never replaces; same step, later timestamp does; (entries of one transaction)
    writer.write(
        [
            (run, [m("k", 100.0, ts=1, step=0), m("k", 1.0, ts=11, step=2)]),
            (run, [m("k", 0.5, ts=11, step=2)]),  # same step and timestamp, lower value: keeps
        ]
    )
    assert rows(store, run)["latest_metrics"] == [(False, "k", "run0", 2, 11, 1.0)]
    # NaN compares as value 0: a tie with a stored 0.0 keeps the older row
    writer.write([(run, [m("z", 0.0, ts=5, step=5), m("z", math.nan, ts=5, step=5)])])
    assert (False, "z", "run0", 5, 5, 0.0) in rows(store, run)["latest_metrics"]
    writer.write([(run, [m("z", math.nan, ts=6, step=5)])])
    assert (True, "z", "run0", 5, 6, 0.0) in rows(store, run)["latest_metrics"]


def test_latest_metrics_match_mlflow_for_the_same_sequence(store: Any) -> None:
    ours, theirs = new_run(store, "ours"), new_run(store, "theirs")
    seq = [(3, 7, 1.0), (3, 7, 0.5), (2, 9, 8.0), (3, 8, -1.0), (3, 8, math.nan), (4, 1, -MAX)]
    writer = SqlWriter(store.engine)
    for step, ts, value in seq:
        writer.write([(ours, [m("k", value, ts=ts, step=step)])])
        store.log_batch(theirs, [MlflowMetric("k", value, ts, step)], [], [])
    got = table_rows(store.engine, {ours: "r", theirs: "r"})
    assert got["latest_metrics"][0] == got["latest_metrics"][1]
    assert got["metrics"][::2] == got["metrics"][1::2]


def test_params_insert_once_and_conflicts_fail_with_mlflows_message(store: Any) -> None:
    run, ref = new_run(store), new_run(store, "ref")
    writer = SqlWriter(store.engine)
    assert writer.write([(run, [Param("", "p", "1"), Param("", "q", "x")])]) == [None]
    out = writer.write(
        [
            (run, [Param("", "p", "1"), Param("", "p", "2"), Param("", "r", "a"), m("k", 1.0)]),
            (run, [Param("", "r", "b"), Param("", "r", "a")]),  # first in the transaction wins
        ]
    )
    store.log_batch(ref, [], [MlflowParam("p", "1")], [])
    expected = mlflow_error(store.log_batch, ref, [], [MlflowParam("p", "2")], [])
    assert out == [{1: (expected[0], expected[1].replace(ref, run))}, {0: out[1][0]}]  # type: ignore[index]
    assert out[1][0][1] == (  # type: ignore[index]
        "Changing param values is not allowed. Params were already logged="
        f"'[{{'key': 'r', 'old_value': 'a', 'new_value': 'b'}}]' for run ID='{run}'."
    )
    got = rows(store, run)
    assert got["params"] == [("p", "run0", "1"), ("q", "run0", "x"), ("r", "run0", "a")]
    assert len(got["metrics"]) == 1  # the rest of the entry committed


def test_params_and_tags_go_through_mlflows_validation(store: Any) -> None:
    run, ref = new_run(store), new_run(store, "ref")
    long = "v" * 7000  # truncated to 6000 (params) / kept (tags, limit 8000)
    out = SqlWriter(store.engine).write(
        [
            (
                run,
                [
                    Param("", "long", long),
                    Param("", "bad*key", "1"),
                    Tag("", "bad*tag", "1"),
                    Tag("", "t", "x" * 9000),
                ],
            )
        ]
    )
    bad_param = mlflow_error(store.log_batch, ref, [], [MlflowParam("bad*key", "1")], [])
    bad_tag = mlflow_error(store.log_batch, ref, [], [], [RunTag("bad*tag", "1")])
    assert out == [{1: bad_param, 2: bad_tag}]
    got = rows(store, run)
    assert ("long", "run0", "v" * 6000) in got["params"]
    assert ("t", "run0", "x" * 8000) in got["tags"]
    # the same long value again compares equal after truncation: a no-op, not a conflict
    assert SqlWriter(store.engine).write([(run, [Param("", "long", long + "w")])]) == [None]


def test_tags_upsert_last_value_wins_and_run_name_sets_the_run(store: Any) -> None:
    run = new_run(store, "before")
    writer = SqlWriter(store.engine)
    writer.write([(run, [Tag("", "t", "1"), Tag("", "u", "1")])])
    out = writer.write(
        [
            (run, [Tag("", "t", "2"), Tag("", "mlflow.runName", "mid"), Tag("", "t", "3")]),
            (run, [Tag("", "mlflow.runName", "after"), Tag("", "v", "new")]),
        ]
    )
    assert out == [None, None]
    got = rows(store, run)
    assert got["tags"] == [
        ("mlflow.runName", "run0", "after"),
        ("t", "run0", "3"),
        ("u", "run0", "1"),
        ("v", "run0", "new"),
    ]
    assert got["runs"][0][1] == "after"
    assert store.get_run(run).info.run_name == "after"
    # an empty run name changes nothing, as set_tag -> update_run_info(run_name="")
    assert writer.write([(run, [Tag("", "mlflow.runName", "")])]) == [None]
    assert rows(store, run) == got


def test_missing_and_deleted_runs_fail_whole_next_to_a_committed_run(store: Any) -> None:
    good, gone = new_run(store, "good"), new_run(store, "gone")
    missing = "f" * 32
    store.delete_run(gone)
    out = SqlWriter(store.engine).write(
        [
            (missing, [m("k", 1.0), Param("", "p", "1")]),
            (good, [m("k", 1.0), Param("", "p", "1"), Tag("", "t", "1")]),
            (gone, [m("k", 1.0)]),
        ]
    )
    batch: tuple[list[Any], ...] = ([MlflowMetric("k", 1.0, 100, 0)], [], [])
    assert out == [
        RunFailed(*mlflow_error(store.log_batch, missing, *batch)),
        None,
        RunFailed(*mlflow_error(store.log_batch, gone, *batch)),
    ]
    assert out[0] == RunFailed("RESOURCE_DOES_NOT_EXIST", f"Run with id={missing} not found")
    got = rows(store, good, gone)
    assert [r[2] for r in got["metrics"]] == ["run0"]
    assert got["params"] == [("p", "run0", "1")]


def test_a_metric_with_a_model_id_is_refused_before_anything_is_written(store: Any) -> None:
    run = new_run(store)
    before = rows(store, run)
    with pytest.raises(ValueError, match="model_id"):
        SqlWriter(store.engine).write(
            [(run, [m("k", 1.0)]), (run, [Metric(run, "k", 2.0, 1, 1, model_id="m-1")])]
        )
    assert rows(store, run) == before


@pytest.mark.timeout(60)
def test_a_locked_database_raises_and_rolls_back(store: Any, tmp_path: Path) -> None:
    run = new_run(store)
    before = rows(store, run)
    # a short busy timeout, so the real lock held by another process fails fast
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", connect_args={"timeout": 0.2}
    )
    with sqlite_locked(tmp_path / "store" / "mlflow.db"):
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            SqlWriter(engine).write([(run, [m("k", 1.0)])])
    assert rows(store, run) == before
    assert SqlWriter(engine).write([(run, [m("k", 1.0)])]) == [None]
    engine.dispose()


def test_on_a_missing_run_an_invalid_record_fails_with_its_own_error(store: Any) -> None:
    """log_batch validates the records before it looks the run up: bisected down, an invalid
    record reports its validation error, the others the run's."""
    missing = "e" * 32
    out = SqlWriter(store.engine).write([(missing, [m("k", 1.0), Param("", "bad*key", "1")])])
    gone = mlflow_error(store.log_batch, missing, [MlflowMetric("k", 1.0, 100, 0)], [], [])
    bad = mlflow_error(store.log_batch, missing, [], [MlflowParam("bad*key", "1")], [])
    assert out == [{0: gone, 1: bad}]
    assert bad[1].startswith("Invalid value") and gone[0] == "RESOURCE_DOES_NOT_EXIST"


def test_an_engine_that_begins_its_own_sqlite_transactions(store: Any, tmp_path: Path) -> None:
    """SQLAlchemy's recipe for pysqlite (driver autocommit, BEGIN from the "begin" event), as a
    daemon may configure for WAL: the writer neither begins twice nor leaves it open."""
    run = new_run(store)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    begun: list[str] = []

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        begun.append("begin")

    writer = SqlWriter(engine)
    assert writer.write([(run, [m("k", 1.0), Param("", "p", "1")])]) == [None]
    assert writer.write([(run, [m("k", 2.0, step=1)])]) == [None]
    assert begun == ["begin", "begin"]
    got = rows(store, run)  # another connection sees both commits
    assert len(got["metrics"]) == 2 and got["params"] == [("p", "run0", "1")]
    engine.dispose()


def test_one_transaction_one_select_per_table_and_executemany(store: Any) -> None:
    runs = [new_run(store, f"r{i}") for i in range(4)]
    statements: list[tuple[str, str, bool]] = []  # (verb, table, executemany)

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        words = sql.replace('"', "").split()
        verb = " ".join(words[:2]) if words[0] == "BEGIN" else words[0]
        after = {"SELECT": "FROM", "INSERT": "INTO", "UPDATE": "UPDATE"}.get(verb)
        statements.append((verb, words[words.index(after) + 1] if after else "", many))

    entries = [
        (r, [m(f"k{j % 3}", float(j), step=j) for j in range(50)] + [Param("", "p", "1")])
        for r in runs
    ] + [(runs[0], [Tag("", "t", "1"), Tag("", "mlflow.runName", "renamed")])]
    assert SqlWriter(store.engine).write(entries) == [None] * 5
    sa.event.remove(store.engine, "before_cursor_execute", _seen)
    assert statements == [
        ("BEGIN IMMEDIATE", "", False),
        ("SELECT", "runs", False),
        ("SELECT", "params", False),
        ("SELECT", "latest_metrics", False),
        ("SELECT", "tags", False),
        ("INSERT", "metrics", True),  # 200 rows: one executemany
        ("INSERT", "latest_metrics", True),  # 12 new (run, key) rows
        ("INSERT", "params", True),
        ("INSERT", "tags", False),  # t is new
        ("UPDATE", "tags", False),  # mlflow.runName exists since create_run
        ("UPDATE", "runs", False),
    ]
