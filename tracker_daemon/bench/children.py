"""The bench's child processes, one mode each: ``python -m tracker_daemon.bench MODE SPEC`` (SPEC is
JSON); each prints JSON lines on stdout (``say``) and reads "go"-style lines on stdin."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

import tracker_client

from .everyday import child_idle, child_paced
from .harness import TS0, sqlite_path
from .report import pct


def say(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def child_client(spec: dict[str, Any]) -> None:
    tracker = tracker_client.connect(spec["address"], policy="block", offline=False)
    run = tracker.start_run("tracker-daemon-bench-client")
    n, clock, log = spec["calls"], time.perf_counter_ns, run.log_metric
    for i in range(1000):  # warm up
        log("warmup", 0.5, i)
    t0 = clock()  # untimed first: the I/O thread's work for it spills into the timed loop
    for i in range(n):
        log("acc", 0.5, i)
    mean = (clock() - t0) / n
    costs = [0] * n
    for i in range(n):
        t0 = clock()
        log("loss", 0.5, i)
        costs[i] = clock() - t0
    say(
        {
            "p50": pct(costs, 0.5),
            "p99": pct(costs, 0.99),
            "max": max(costs),
            "timed_mean": sum(costs) / n,
            "mean": mean,
        }
    )
    os._exit(0)  # the daemon is stopped without committing all this: skip the exit flush


def child_producer(spec: dict[str, Any]) -> None:
    """Log ``steps`` x ``keys`` metrics after "go"; then flush and end (``then`` = "flush") or
    wait for a line and leave without flushing ("hold": the memory backlog)."""
    tracker = tracker_client.connect(spec["address"], policy="block", offline=False)
    run = tracker.start_run(spec["experiment"])
    say({"run_id": run.run_id})
    sys.stdin.readline()
    keys, log = [f"k{i}" for i in range(spec["keys"])], run.log_metric
    first = time.monotonic_ns()  # CLOCK_MONOTONIC: comparable across processes
    for step in range(spec["steps"]):
        for key in keys:
            log(key, step * 0.5, step, TS0 + step)
    logged = time.monotonic_ns()
    if spec["then"] == "hold":
        sys.stdin.readline()
        os._exit(0)
    run.flush()  # returns once everything above is committed
    done = time.monotonic_ns()
    run.end()
    tracker.close(5)
    say(
        {"sent": spec["steps"] * len(keys), "first_ns": first, "logged_ns": logged, "done_ns": done}
    )


def child_ceiling(spec: dict[str, Any]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=spec["uri"])
    exp = client.create_experiment(spec["experiment"])
    runs = [client.create_run(exp).info.run_id for _ in range(spec["runs"])]
    keys, steps = [f"k{i}" for i in range(spec["keys"])], spec["steps"]
    per = max(1, 1000 // len(keys))  # steps per call: 1,000 metrics per log_batch
    sent, calls, t0 = 0, 0, time.perf_counter()
    for s0 in range(0, steps, per):
        for run_id in runs:
            batch = [
                Metric(k, s * 0.5, TS0 + s, s)
                for s in range(s0, min(steps, s0 + per))
                for k in keys
            ]
            client.log_batch(run_id, metrics=batch)
            sent, calls = sent + len(batch), calls + 1
        if time.perf_counter() - t0 > spec["cap"]:
            break
    say({"sent": sent, "calls": calls, "seconds": time.perf_counter() - t0, "runs": runs})


RAW_TXN_ROWS = 16_000
RAW_METRICS = (
    "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
RAW_LATEST = (  # MLflow's order: the newest by (step, timestamp, value) is the latest
    "INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET "
    "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, "
    "is_nan = excluded.is_nan WHERE (excluded.step, excluded.timestamp, excluded.value) > "
    "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)


def child_raw(spec: dict[str, Any]) -> None:
    """The raw ceiling: the throughput workload written with plain ``sqlite3`` into a fresh
    MLflow-schema database. MLflow's SqlAlchemyStore creates the schema, the experiment and the
    runs and is closed; then ``executemany`` of the metrics rows plus the ``latest_metrics``
    upsert (one row per (run, key) of each transaction), one transaction per 16,000 rows
    (``txn_rows``), rows interleaved across runs as the daemon's lanes see them. Timed: the
    transactions only (the rows are built before); WAL + synchronous=NORMAL when ``wal``, as
    the daemon's default."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{spec['db']}", spec["artifacts"])  # type: ignore[no-untyped-call]
    exp = store.create_experiment(spec["experiment"])  # type: ignore[no-untyped-call]
    runs = []
    for i in range(spec["runs"]):
        run = store.create_run(exp, "bench", TS0, [], f"raw-{i}")  # type: ignore[no-untyped-call]
        runs.append(run.info.run_id)
    store.engine.dispose()
    keys, steps = [f"k{i}" for i in range(spec["keys"])], spec["steps"]
    per = max(1, 1000 // len(keys))
    rows = [
        (k, s * 0.5, TS0 + s, run_id, s, 0)
        for s0 in range(0, steps, per)
        for run_id in runs
        for s in range(s0, min(steps, s0 + per))
        for k in keys
    ]
    con = sqlite3.connect(spec["db"], isolation_level=None, timeout=60)
    if spec["wal"]:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    size, txns, t0 = spec.get("txn_rows", RAW_TXN_ROWS), 0, time.perf_counter()
    for i in range(0, len(rows), size):
        chunk, latest = rows[i : i + size], dict[tuple[str, str], tuple[Any, ...]]()
        for row in chunk:
            old = latest.get((row[3], row[0]))
            if old is None or (row[4], row[2], row[1]) > (old[4], old[2], old[1]):
                latest[(row[3], row[0])] = row
        con.execute("BEGIN")
        con.executemany(RAW_METRICS, chunk)
        con.executemany(RAW_LATEST, list(latest.values()))
        con.execute("COMMIT")
        txns += 1
    seconds = time.perf_counter() - t0
    con.close()
    say({"sent": len(rows), "seconds": seconds, "transactions": txns, "runs": runs})


def child_rest_poll(spec: dict[str, Any]) -> None:
    """Read one run through ``mlflow server``'s REST API every ``period`` s (runs/get and
    metrics/get-history on one keep-alive connection); the wall time of each read, in ns. A
    "mark" line on stdin prints the reads since the last mark and their errors; EOF or any
    other line ends it."""
    import http.client
    import select
    from urllib.parse import urlsplit

    url, run_id, key = urlsplit(spec["url"]), spec["run_id"], spec["key"]
    host, port = url.hostname or "127.0.0.1", url.port or 80
    paths = (
        f"/api/2.0/mlflow/runs/get?run_id={run_id}",
        f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}",
    )
    conn = http.client.HTTPConnection(host, port, timeout=60)
    lat, errors, due = list[int](), 0, time.monotonic()
    say("ready")
    while True:
        if select.select([sys.stdin], [], [], max(0.0, due - time.monotonic()))[0]:
            if sys.stdin.readline().strip() != "mark":
                return
            say({"lat_ns": lat, "errors": errors})
            lat, errors = [], 0
            continue
        t0 = time.monotonic_ns()
        for path in paths:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                errors += resp.status != 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                errors += 1
        lat.append(time.monotonic_ns() - t0)
        due = max(due + spec["period"], time.monotonic())


def child_direct(spec: dict[str, Any]) -> None:
    """N forked workers (MLflow imported once, before the forks) call mlflow.log_metric."""
    os.environ["MLFLOW_TRACKING_URI"] = spec["uri"]
    import mlflow

    setup_r, setup_w = os.pipe()
    if os.fork() == 0:  # the store is opened in children only, never before a fork
        client = mlflow.MlflowClient()
        exp = client.create_experiment(spec["experiment"])
        ids = [client.create_run(exp).info.run_id for _ in range(spec["workers"])]
        os.write(setup_w, json.dumps(ids).encode())
        os._exit(0)
    os.close(setup_w)
    os.wait()
    runs = json.loads(os.read(setup_r, 1 << 20))
    (go_r, go_w), (res_r, res_w) = os.pipe(), os.pipe()
    pids = []
    for run_id in runs:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mlflow.get_run(run_id)  # opens the store (schema check): not part of the rate
                os.read(go_r, 1)
                deadline, sent, errors = time.monotonic() + spec["cap"], 0, 0
                for step in range(spec["steps"]):
                    for k in range(spec["keys"]):
                        try:
                            mlflow.log_metric(
                                f"k{k}", step * 0.5, step=step, timestamp=TS0 + step, run_id=run_id
                            )
                            sent += 1
                        except Exception:
                            errors += 1
                    if time.monotonic() > deadline:
                        break
                doc = {"sent": sent, "errors": errors, "end_ns": time.monotonic_ns()}
                os.write(res_w, (json.dumps(doc) + "\n").encode())  # < PIPE_BUF: atomic
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(res_w)
    t0 = time.monotonic_ns()
    os.write(go_w, b"g" * len(runs))
    for pid in pids:
        os.waitpid(pid, 0)
    docs = [json.loads(x) for x in os.read(res_r, 1 << 20).decode().splitlines()]
    say(
        {
            "sent": sum(x["sent"] for x in docs),
            "errors": sum(x["errors"] for x in docs),
            "seconds": (max(x["end_ns"] for x in docs) - t0) / 1e9,
            "runs": runs,
        }
    )


def child_poll(spec: dict[str, Any]) -> None:
    """Record when each step of the metric "latency" of one run becomes visible in the store."""
    n, run_id = spec["n"], spec["run_id"]
    db = sqlite_path(spec["uri"])
    fetch: Callable[[int], list[int]]
    if db is not None:  # a read-only connection; the index (run_uuid, key, step) covers it
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        sql = "SELECT step FROM metrics WHERE run_uuid=? AND key='latency' AND step > ?"
        fetch = lambda low: [r[0] for r in con.execute(sql, (run_id, low))]  # noqa: E731
    else:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=spec["uri"])
        fetch = lambda low: [m.step for m in client.get_metric_history(run_id, "latency")]  # noqa: E731
    seen, low, count = [0] * n, -1, 0
    deadline = time.monotonic() + spec["timeout"]
    say("ready")
    while count < n and time.monotonic() < deadline:
        steps = fetch(low)
        now = time.monotonic_ns()
        for s in steps:
            if 0 <= s < n and not seen[s]:
                seen[s], count = now, count + 1
        while low + 1 < n and seen[low + 1]:
            low += 1
        time.sleep(0.005)
    say({"visible": seen})


def child_lock(spec: dict[str, Any]) -> None:
    con = sqlite3.connect(spec["db"], isolation_level=None, timeout=60)
    con.execute("BEGIN EXCLUSIVE")  # every writer (the daemon's sink) now waits and retries
    print("locked", flush=True)
    sys.stdin.readline()
    con.execute("ROLLBACK")


def child_count(spec: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=spec["uri"])
    say(
        {"n": sum(len(client.get_metric_history(r, k)) for r in spec["runs"] for k in spec["keys"])}
    )


CHILDREN: dict[str, Callable[[dict[str, Any]], None]] = {
    "client": child_client,
    "producer": child_producer,
    "ceiling": child_ceiling,
    "raw": child_raw,
    "direct": child_direct,
    "rest_poll": child_rest_poll,
    "poll": child_poll,
    "lock": child_lock,
    "count": child_count,
    "paced": child_paced,
    "idle": child_idle,
}
