"""Differential test: the SQL writer against MLflow's own ``log_batch`` on one seeded workload.

One random workload (many runs; metrics with NaN, +/-inf, repeated identical points and
out-of-order steps and timestamps; params with same-value repeats and conflicting values; tags
with overwrites and ``mlflow.runName``; a run deleted half-way; a run that never existed) is
applied twice, each time to a fresh MLflow database:

(a) batch by batch through MLflow's ``store.log_batch`` with the daemon's rule for failures
    (``committer.Committer.commit``: a failing batch is bisected until the failing records are
    isolated; an error about the run itself fails the whole batch without splitting), errors
    classified by the daemon's own ``sink.classify``;
(b) through ``SqlWriter.write``, several runs' batches per transaction (and then once more: a
    replay of every transaction must change nothing).

Both must leave identical rows in metrics, latest_metrics, params, tags and runs (run ids mapped
by creation order) and report the same failures per record (code and message). On SQLite and
on a real PostgreSQL server (two databases on it). Metrics with a ``model_id`` are not part of
the workload: the writer refuses them (the caller routes them to ``log_batch``).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from tests.postgres import postgres
from tests.support.mlflow_tables import sql_store, sqlite_store, sqlite_template, table_rows
from tracker_client.protocol import Metric, Param, Record, Tag
from tracker_daemon.errors import RetryableSinkError, RunGone
from tracker_daemon.store.sink import classify
from tracker_daemon.store.sqlwriter import RunFailed, SqlWriter, schema_problem

pytestmark = [pytest.mark.integration, pytest.mark.compat]

SEED = int(os.environ.get("TRACKER_TEST_SEED", "1130"))
RUNS = 10
MISSING = "0badc0de" * 4  # a well-formed run id no database holds

Failures = dict[int, tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Batch:  # what the committer hands to log_batch: one run, records in arrival order
    run: int  # index into the created runs; -1: MISSING
    records: list[Record]


@dataclass(frozen=True, slots=True)
class Workload:
    transactions: list[list[Batch]]
    delete_after: int  # the deleted run is deleted after this many transactions
    deleted_run: int


def workload(seed: int) -> Workload:
    rnd = random.Random(seed)
    seen: dict[int, list[Metric]] = {}

    def metric(run: int) -> Metric:
        old = seen.setdefault(run, [])
        if old and rnd.random() < 0.1:
            return rnd.choice(old)  # a repeated identical point
        value = rnd.choice(
            [math.nan, math.inf, -math.inf, 0.0, 1.0, rnd.uniform(-1e6, 1e6), rnd.random()]
            if rnd.random() < 0.3
            else [rnd.random()]
        )
        mt = Metric(
            "",
            rnd.choice(["loss", "acc", "lr", "m/x"]),
            value,
            1000 + rnd.randrange(20),
            rnd.randrange(30),
        )
        old.append(mt)
        return mt

    def param() -> Param:
        value = rnd.choice(["a", "a", "b", "L" * (6000 + rnd.randrange(3))])
        return Param("", "bad*key" if rnd.random() < 0.03 else f"p{rnd.randrange(8)}", value)

    def tag() -> Tag:
        key = rnd.choice(
            ["t0", "t1", "t2", "mlflow.runName", "bad*tag" if rnd.random() < 0.3 else "t3"]
        )
        return Tag("", key, f"{key}-{rnd.randrange(5)}")

    transactions = []
    for _ in range(30):
        batches = []
        for _ in range(rnd.randrange(1, 7)):
            run = -1 if rnd.random() < 0.04 else rnd.randrange(RUNS)
            records: list[Record] = []
            for _ in range(rnd.randrange(1, 60)):
                kind = rnd.random()
                records.append(metric(run) if kind < 0.7 else param() if kind < 0.85 else tag())
            batches.append(Batch(run, records))
        transactions.append(batches)
    return Workload(transactions, delete_after=15, deleted_run=rnd.randrange(RUNS))


# ---------------------------------------------------------------------------- (a) MLflow


def log_batch_bisecting(store: Any, run_id: str, items: list[tuple[int, Record]]) -> Failures:
    """committer.Committer.commit with MLflow's log_batch as the backend write."""
    by_key: dict[str, Tag] = {}  # batcher.Batch.tags: one tag per key (first position, last value)
    for _, r in items:
        if isinstance(r, Tag):
            by_key[r.key] = r
    try:
        store.log_batch(
            run_id,
            [
                MlflowMetric(r.key, r.value, r.timestamp, r.step)
                for _, r in items
                if isinstance(r, Metric)
            ],
            [MlflowParam(r.key, r.value) for _, r in items if isinstance(r, Param)],
            [RunTag(t.key, t.value) for t in by_key.values()],
        )
    except MlflowException as exc:
        error = classify(exc)
        assert not isinstance(error, RetryableSinkError), error
        if len(items) > 1 and not isinstance(error, RunGone):
            mid = len(items) // 2
            return log_batch_bisecting(store, run_id, items[:mid]) | log_batch_bisecting(
                store, run_id, items[mid:]
            )
        return {i: (error.code, error.message) for i, _ in items}
    return {}


# ---------------------------------------------------------------------------- the comparison


def apply(work: Workload, store: Any, through_writer: bool) -> tuple[dict[str, Any], list[Any]]:
    ids = [
        str(store.create_run("0", "user", 1000 + i, [], f"run-{i}").info.run_id)
        for i in range(RUNS)
    ]
    names = {run_id: f"r{i}" for i, run_id in enumerate(ids)}
    writer = SqlWriter(store.engine)
    failures: list[list[tuple[int, str, str]]] = []
    for t, batches in enumerate(work.transactions):
        if t == work.delete_after:
            store.delete_run(ids[work.deleted_run])
        run_ids = [MISSING if b.run < 0 else ids[b.run] for b in batches]
        if through_writer:
            outcomes = writer.write([(r, b.records) for r, b in zip(run_ids, batches, strict=True)])
            per_batch: list[Failures] = []
            for b, out in zip(batches, outcomes, strict=True):
                if isinstance(out, RunFailed):
                    per_batch.append({i: (out.code, out.message) for i in range(len(b.records))})
                else:
                    per_batch.append(out or {})
        else:
            per_batch = [
                log_batch_bisecting(store, r, list(enumerate(b.records)))
                for r, b in zip(run_ids, batches, strict=True)
            ]
        for got in per_batch:
            failures.append(sorted((i, code, _named(msg, names)) for i, (code, msg) in got.items()))
    rows = table_rows(store.engine, names)
    if through_writer:  # a replay of every committed transaction (after a crash) changes nothing
        for batches in work.transactions:
            writer.write([(MISSING if b.run < 0 else ids[b.run], b.records) for b in batches])
        assert table_rows(store.engine, names) == rows, f"seed {SEED}: the replay changed rows"
    return rows, failures


def _named(message: str, names: dict[str, str]) -> str:
    for run_id, name in names.items():
        message = message.replace(run_id, name)
    return message


def check(work: Workload, mlflow_store: Any, writer_store: Any) -> None:
    hint = f"seed {SEED} (TRACKER_TEST_SEED)"
    try:
        theirs, their_failures = apply(work, mlflow_store, through_writer=False)
        ours, our_failures = apply(work, writer_store, through_writer=True)
    except BaseException as exc:
        exc.add_note(hint)
        raise
    assert sum(map(len, their_failures)) > 0, f"{hint}: a workload without failures tests little"
    assert sum(len(v) for v in theirs.values()) > 500, hint
    for table in theirs:
        assert ours[table] == theirs[table], f"{hint}: table {table} differs"
    for n, (a, b) in enumerate(zip(our_failures, their_failures, strict=True)):
        assert a == b, f"{hint}: failures of batch {n} differ"


@pytest.mark.timeout(120)
def test_sqlite(tmp_path: Path) -> None:
    template = sqlite_template(tmp_path / "template")
    a, b = sqlite_store(template, tmp_path / "a"), sqlite_store(template, tmp_path / "b")
    try:
        assert schema_problem(a.engine) is None
        check(workload(SEED), a, b)
    finally:
        a.engine.dispose()
        b.engine.dispose()


@contextmanager
def two_databases() -> Iterator[tuple[str, str]]:
    with postgres() as url:
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE mlflow_b")
        admin.dispose()
        yield url, url.rsplit("/", 1)[0] + "/mlflow_b"


@pytest.mark.timeout(300)
def test_postgresql(tmp_path: Path) -> None:
    with two_databases() as (url_a, url_b):
        a = sql_store(url_a, tmp_path / "artifacts-a")
        b = sql_store(url_b, tmp_path / "artifacts-b")
        try:
            assert schema_problem(a.engine) is None  # the guard passes MLflow's own PostgreSQL
            check(workload(SEED), a, b)
        finally:
            a.engine.dispose()
            b.engine.dispose()
