"""Micro-benchmark: the SQL writer against MLflow's ``log_batch`` on SQLite (same machine, run).

    python -m tracker_daemon.bench.sqlwriter [--transactions 10] [--runs 16] [--per-run 1000]
                                             [--postgres postgresql://user@host:port/db]

Each transaction is ``runs`` entries of ``per-run`` metrics (10 keys, increasing steps). The SQL
writer commits a transaction with one ``write``; MLflow gets the same entries as one
``store.log_batch`` per entry. The raw ceiling is plain ``sqlite3``
``executemany`` of the same metric rows plus a ``latest_metrics`` upsert, one transaction each.
Reported: process CPU per record (SQLite runs in-process, so this is all the work, SQLite's
included), committed rows per second (wall clock), each path on a fresh database, and the
writer's own overhead (its CPU minus the raw path's).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracker_client.protocol import Metric


def _workload(
    run_ids: Sequence[str], transactions: int, per_run: int
) -> list[list[tuple[str, list[Metric]]]]:
    out = []
    for t in range(transactions):
        entries = []
        for run_id in run_ids:
            base = t * per_run
            entries.append(
                (
                    run_id,
                    [
                        Metric(run_id, f"key{i % 10}", i * 0.5, 1_700_000_000_000 + i, base + i)
                        for i in range(per_run)
                    ],
                )
            )
        out.append(entries)
    return out


_RAW_METRICS = (
    "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_RAW_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_uuid, key) DO UPDATE SET value = excluded.value,"
    " timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan"
)


def _raw_row(m: Metric, run_id: str) -> tuple[str, float, int, int, int, str]:
    return (m.key, m.value, m.timestamp, m.step, 0, run_id)


def _store(root: Path, runs: int, uri: str | None = None) -> tuple[Any, list[str]]:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store: Any = SqlAlchemyStore  # untyped
    store = store(uri or f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    ids = [store.create_run("0", "bench", 0, [], f"r{i}").info.run_id for i in range(runs)]
    return store, ids


def _measure(fn: Any, work: list[Any]) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for entries in work:
        fn(entries)
    return time.process_time() - cpu0, time.perf_counter() - wall0


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--transactions", type=int, default=10)
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--per-run", type=int, default=1000)
    ap.add_argument(
        "--postgres",
        metavar="URL",
        help="also measure on PostgreSQL: a database URL whose user may CREATE DATABASE "
        "(two scratch databases are created and dropped); CPU is this process only",
    )
    args = ap.parse_args(argv)
    from mlflow.entities import Metric as MlflowMetric

    from tracker_daemon.store.sqlwriter import SqlWriter

    records = args.transactions * args.runs * args.per_run
    with tempfile.TemporaryDirectory(prefix="sqlw-bench-") as tmp:
        store, ids = _store(Path(tmp) / "writer", args.runs)
        writer = SqlWriter(store.engine)
        w_cpu, w_wall = _measure(writer.write, _workload(ids, args.transactions, args.per_run))

        store, ids = _store(Path(tmp) / "mlflow", args.runs)

        def log_batches(entries: list[tuple[str, list[Metric]]]) -> None:
            for run_id, metrics in entries:
                store.log_batch(
                    run_id,
                    [MlflowMetric(m.key, m.value, m.timestamp, m.step) for m in metrics],
                    [],
                    [],
                )

        m_cpu, m_wall = _measure(log_batches, _workload(ids, args.transactions, args.per_run))

        store, ids = _store(Path(tmp) / "raw", args.runs)
        con = sqlite3.connect(str(Path(tmp) / "raw" / "mlflow.db"))

        def raw(entries: list[tuple[str, list[Metric]]]) -> None:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(_RAW_METRICS, [_raw_row(m, r) for r, ms in entries for m in ms])
            con.executemany(_RAW_LATEST, [_raw_row(ms[-1], r) for r, ms in entries])
            con.commit()

        r_cpu, r_wall = _measure(raw, _workload(ids, args.transactions, args.per_run))
        con.close()
    result = {
        "records": float(records),
        "writer_cpu_us_per_record": w_cpu / records * 1e6,
        "writer_rows_per_s": records / w_wall,
        "log_batch_cpu_us_per_record": m_cpu / records * 1e6,
        "log_batch_rows_per_s": records / m_wall,
        "raw_sqlite3_cpu_us_per_record": r_cpu / records * 1e6,
        "raw_sqlite3_rows_per_s": records / r_wall,
        "writer_overhead_cpu_us_per_record": (w_cpu - r_cpu) / records * 1e6,
        "writer_vs_log_batch_rows_per_s": m_wall / w_wall,
        "writer_vs_raw_rows_per_s": r_wall / w_wall,
    }
    if args.postgres:
        result |= _postgres(args.postgres, args.transactions, args.runs, args.per_run)
    print(json.dumps({k: round(v, 2) for k, v in result.items()}, indent=2))
    return result


def _postgres(url: str, transactions: int, runs: int, per_run: int) -> dict[str, float]:
    import os

    import sqlalchemy as sa
    from mlflow.entities import Metric as MlflowMetric

    from tracker_daemon.store.sqlwriter import SqlWriter

    records = transactions * runs * per_run
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    names = [f"sqlw_bench_{kind}_{os.getpid()}" for kind in ("writer", "mlflow")]
    out: dict[str, float] = {}
    try:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        with tempfile.TemporaryDirectory(prefix="sqlw-bench-") as tmp:
            base = url.rsplit("/", 1)[0]
            store, ids = _store(Path(tmp), runs, f"{base}/{names[0]}")
            writer = SqlWriter(store.engine)
            cpu, wall = _measure(writer.write, _workload(ids, transactions, per_run))
            store.engine.dispose()
            out["pg_writer_cpu_us_per_record"] = cpu / records * 1e6
            out["pg_writer_rows_per_s"] = records / wall
            store, ids = _store(Path(tmp), runs, f"{base}/{names[1]}")

            def log_batches(entries: list[tuple[str, list[Metric]]]) -> None:
                for run_id, metrics in entries:
                    store.log_batch(
                        run_id,
                        [MlflowMetric(m.key, m.value, m.timestamp, m.step) for m in metrics],
                        [],
                        [],
                    )

            cpu, wall = _measure(log_batches, _workload(ids, transactions, per_run))
            store.engine.dispose()
            out["pg_log_batch_cpu_us_per_record"] = cpu / records * 1e6
            out["pg_log_batch_rows_per_s"] = records / wall
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()
    return out


if __name__ == "__main__":
    main()
