"""Tags in arrival order: every value of a tag key is applied in turn, with MLflow's rules for
``mlflow.runName``, on both write paths — compared with MLflow's own SqlAlchemyStore on a real
SQLite store, never with expectations written down here.

MLflow's result for a sequence of values is what separate ``set_tag`` calls leave (the daemon
batches separate calls together): the SQL writer (``sqlrules.Decisions``) must leave the same
rows for the sequence in one entry and spread over several entries of one transaction, and the
log_batch path (``Batcher`` -> ``Batch.tags`` -> MLflow's ``log_batch``) the same rows too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import RunTag

from tests.support.mlflow_tables import sqlite_store, sqlite_template, table_rows
from tracker_client.protocol import Tag
from tracker_daemon.commit.batcher import Batcher, Origin
from tracker_daemon.store.sqlwriter import SqlWriter

NAME = "mlflow.runName"

# (key, value) sequences logged one after the other on a run created with the name "orig"
SEQUENCES: list[list[tuple[str, str]]] = [
    [(NAME, "renamed"), (NAME, "")],
    [(NAME, ""), (NAME, "x")],
    [(NAME, "a"), (NAME, "b"), (NAME, "a")],
    [(NAME, "")],
    [(NAME, ""), (NAME, "")],
    [(NAME, "r1"), ("t", "1"), (NAME, ""), ("t", "2"), ("t", "")],
    [("t", "1"), ("t", ""), ("u", "x"), ("t", "3")],
    [(NAME, "n1"), (NAME, "n2"), (NAME, ""), ("t", "v")],
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def stores(template: Path, tmp_path: Path) -> Iterator[Any]:
    made: list[Any] = []

    def make(name: str) -> Any:
        store = sqlite_store(template, tmp_path / name)
        made.append(store)
        return store

    yield make
    for store in made:
        store.engine.dispose()


def _run(store: Any) -> str:
    return str(store.create_run("0", "user", 1000, [], "orig").info.run_id)


def _state(store: Any, run_id: str) -> tuple[Any, ...]:
    rows = table_rows(store.engine, {run_id: "run"})
    return (store.get_run(run_id).info.run_name, rows["tags"])


def _mlflow_set_tag(store: Any, seq: list[tuple[str, str]]) -> tuple[Any, ...]:
    run = _run(store)
    for key, value in seq:
        store.set_tag(run, RunTag(key, value))
    return _state(store, run)


@pytest.mark.parametrize("seq", SEQUENCES, ids=[str(i) for i in range(len(SEQUENCES))])
def test_mlflow_log_batch_of_the_sequence_equals_separate_set_tags(stores: Any, seq: Any) -> None:
    """The premise of the log_batch path: MLflow's log_batch applies duplicate tag keys in
    order with set_tag's run-name rule, so one call of the whole sequence equals the calls."""
    expected = _mlflow_set_tag(stores("a"), seq)
    store = stores("b")
    run = _run(store)
    store.log_batch(run, [], [], [RunTag(k, v) for k, v in seq])
    assert _state(store, run) == expected


@pytest.mark.parametrize("seq", SEQUENCES, ids=[str(i) for i in range(len(SEQUENCES))])
def test_sql_writer_applies_every_value_in_order(stores: Any, seq: Any) -> None:
    expected = _mlflow_set_tag(stores("mlflow"), seq)
    # the whole sequence in one entry
    store = stores("one")
    run = _run(store)
    assert SqlWriter(store.engine).write([(run, [Tag("", k, v) for k, v in seq])]) == [None]
    assert _state(store, run) == expected
    # one entry per value, all in one transaction
    store = stores("many")
    run = _run(store)
    entries = [(run, [Tag("", k, v)]) for k, v in seq]
    assert SqlWriter(store.engine).write(entries) == [None] * len(seq)
    assert _state(store, run) == expected


@pytest.mark.parametrize("seq", SEQUENCES, ids=[str(i) for i in range(len(SEQUENCES))])
def test_log_batch_path_passes_every_value_in_order(stores: Any, seq: Any) -> None:
    expected = _mlflow_set_tag(stores("mlflow"), seq)
    store = stores("batch")
    run = _run(store)
    b = Batcher()
    for i, (k, v) in enumerate(seq):  # separate calls (frames), batched together
        b.add(Origin("c", i + 1), [Tag(run, k, v)], 0.0)
    batch = b.pop_ready(10.0)
    assert batch is not None and b.pop_ready(10.0) is None
    assert [(x.key, x.value) for x in batch.tags] == seq
    store.log_batch(run, [], [], [RunTag(x.key, x.value) for x in batch.tags])
    assert _state(store, run) == expected
