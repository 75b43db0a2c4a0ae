"""The scenarios with a server beside the daemon.

rest      ``mlflow server --workers 1`` on the daemon's own SQLite file, read every 100 ms
          over REST (runs/get + metrics/get-history of a probe run): p50/p99 idle, then while
          the daemon writes at full rate (``--workers`` producers); once with the daemon's
          SQLite in WAL mode (TRACKER_DAEMON_SQLITE_WAL=1) and once in rollback-journal mode
          (=0), same repeat; the daemon's committed/s in both modes.
postgres  a private PostgreSQL (``servers.postgres``): 2 daemons x ``--workers``/2 producers
          writing to it directly (default sink), against 2 daemons x ``--workers``/2 through
          ``mlflow server --workers 2`` on another database of the same server (REST); skipped,
          with the reason, when PostgreSQL or a driver is missing.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import tracker_client

from .harness import TS0, BenchError, Ctx, Procs, Skipped, daemon, send_line
from .load import run_load
from .report import pct
from .servers import mlflow_server, pg_bindir, pg_driver, postgres

__all__ = ["REST_MODES", "scenario_postgres", "scenario_rest"]

REST_MODES = (("wal", "1"), ("rollback", "0"))  # figure suffix, TRACKER_DAEMON_SQLITE_WAL
PROBE_STEPS = 200  # points of the run the REST reads fetch (a fixed size: the same read)
PERIOD_S = 0.1


def scenario_rest(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    if ctx.args.backend_store_uri:
        raise Skipped("rest reads the daemon's own SQLite store: not with --backend-store-uri")
    out: dict[str, float] = {}
    for mode, wal in REST_MODES:
        figures = rest_mode(ctx, rep, rep_dir / mode, mode, wal)
        out.update({f"{name}_{mode}": value for name, value in figures.items()})
    return out


def rest_mode(ctx: Ctx, rep: int, sub: Path, mode: str, wal: str) -> dict[str, float]:
    a, procs = ctx.args, ctx.procs
    with daemon(ctx, sub, env={"TRACKER_DAEMON_SQLITE_WAL": wal}) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run(ctx.experiment("rest-probe"))
            for step in range(PROBE_STEPS):
                run.log_metric("probe", step * 0.5, step, TS0 + step)
            run.end()  # a barrier: the probe run is in the store
        finally:
            tracker.close(5)
        with mlflow_server(procs, d.backend, sub / "artifacts", workers=1) as url:
            spec = {"url": url, "run_id": run.run_id, "key": "probe", "period": PERIOD_S}
            poller = procs.child("rest_poll", spec)
            procs.read_line(poller, 60, "rest poller")
            time.sleep(1.0)  # warm-up reads (the server's first requests), thrown away
            mark(procs, poller)
            time.sleep(a.rest_seconds)  # idle: nothing writes
            idle = mark(procs, poller)
            marks: list[dict[str, Any]] = []  # [reads while the producers start, while writing]
            load = run_load(
                ctx,
                [d],
                a.workers,
                rest_steps(ctx),
                a.keys,
                "rest",
                rep,
                mode,
                on_go=lambda: marks.append(mark(procs, poller)),
                on_done=lambda: marks.append(mark(procs, poller)),
            )
            busy = marks[1]
            send_line(poller, "exit")
            poller.wait(60)
    if len(idle["lat_ns"]) < 2 or not busy["lat_ns"]:
        raise BenchError(f"rest ({mode}): too few reads: {len(idle['lat_ns'])} idle, {busy}")
    idle_p99, busy_p99 = pct(idle["lat_ns"], 0.99) / 1e6, pct(busy["lat_ns"], 0.99) / 1e6
    return {
        "idle_p50_ms": pct(idle["lat_ns"], 0.5) / 1e6,
        "idle_p99_ms": idle_p99,
        "load_p50_ms": pct(busy["lat_ns"], 0.5) / 1e6,
        "load_p99_ms": busy_p99,
        "load_vs_idle": busy_p99 / idle_p99,
        "load_reads": float(len(busy["lat_ns"])),
        "errors": float(idle["errors"] + busy["errors"]),
        "daemon_metrics_per_s": load.rate,
    }


def rest_steps(ctx: Ctx) -> int:
    """Steps per producer: ``--rest-metrics``, or more when the default daemon's committed/s
    measured by ``throughput`` says the write would last less than ``--rest-seconds``."""
    a = ctx.args
    rates = ctx.results.get("throughput", {}).get("figures", {})
    rate = float(rates.get("daemon_metrics_per_s", {}).get("median", 0.0))
    seconds, per_step = float(a.rest_seconds), int(a.workers) * int(a.keys)
    return max(int(a.rest_metrics), math.ceil(rate * seconds / per_step))


def mark(procs: Procs, poller: Any) -> dict[str, Any]:
    """The reads the poller made since its last mark."""
    send_line(poller, "mark")
    doc: dict[str, Any] = json.loads(procs.read_line(poller, 120, "rest poller"))
    return doc


def scenario_postgres(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    a = ctx.args
    if pg_bindir() is None:
        raise Skipped("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    scheme = pg_driver()
    if scheme is None:
        raise Skipped("no PostgreSQL driver: neither psycopg2 nor psycopg (3) is importable")
    if scheme != "postgresql":
        ctx.note("postgres", f"psycopg2 is not importable: the URLs are {scheme}:// (psycopg 3)")
    per = max(1, a.workers // 2)
    with postgres(["direct", "server"]) as dbs:
        with ExitStack() as stack:
            ds = [
                stack.enter_context(daemon(ctx, rep_dir, dbs["direct"], state=f"direct-{h}"))
                for h in "ab"
            ]
            direct = run_load(ctx, ds, per, a.metrics, a.keys, "postgres", rep, "direct")
        artifacts = rep_dir / "server-artifacts"
        with mlflow_server(ctx.procs, dbs["server"], artifacts, workers=2) as url:
            with ExitStack() as stack:
                ds = [
                    stack.enter_context(daemon(ctx, rep_dir, url, state=f"server-{h}"))
                    for h in "ab"
                ]
                server = run_load(ctx, ds, per, a.metrics, a.keys, "postgres", rep, "server")
    return {
        "direct_metrics_per_s": direct.rate,
        "server_metrics_per_s": server.rate,
        "direct_vs_server": direct.rate / server.rate,
        "direct_cpu_us_per_record": direct.cpu_us_per_record,
        "server_cpu_us_per_record": server.cpu_us_per_record,
    }
