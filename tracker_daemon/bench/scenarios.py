"""The seven scenarios (rest and postgres live in ``remote``); each repeat returns its figures
(see ``report.FIGURES``) and records its committed == sent checks in the context."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tracker_client

from .everyday import scenario_everyday
from .harness import TS0, BenchError, Ctx, clean_env, count_metrics, daemon, send_line
from .load import run_load
from .procfs import CLK_TCK, cpu_ticks, proc_kb
from .remote import scenario_postgres, scenario_rest
from .report import pct
from .sampling import scenario_sampler

SCENARIOS = (
    "client",
    "throughput",
    "latency",
    "everyday",
    "drain",
    "memory",
    "rest",
    "postgres",
    "sampler",
)


def best_wall(cmd: list[str], env: dict[str, str], tries: int = 3) -> float:
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, timeout=60, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def import_ms(env: dict[str, str], *flags: str) -> float:
    """Wall time of ``import tracker_client`` in a fresh interpreter, minus a bare start."""
    py = [sys.executable, *flags, "-c"]
    return 1000 * (best_wall([*py, "import tracker_client"], env) - best_wall([*py, "pass"], env))


def scenario_client(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    with daemon(ctx, rep_dir) as d:
        spec = {"address": d.address, "calls": ctx.args.calls}
        res = ctx.procs.finish(ctx.procs.child("client", spec), 300, "client")
    # cached: bytecode in a private prefix, written by a first import (as after `pip install`)
    cached = clean_env({"PYTHONPYCACHEPREFIX": str(rep_dir / "pycache")})
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import tracker_client"], env=cached, timeout=60)
    return {
        **{f"log_metric_{k}_ns": float(v) for k, v in res.items()},
        "import_ms": import_ms(cached),
        "import_env_ms": import_ms(clean_env(), "-B"),
    }


def sink_path(ctx: Ctx, scen: str, status: dict[str, Any]) -> None:
    """Say in the report which path the default daemon's records took, and why: the figures
    of the SQL writer mean nothing when the schema guard turned it off."""
    ctx.note(scen, f"default daemon's sink: {status['sink']}")


def scenario_throughput(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    """The default daemon, the daemon with ``--sink mlflow`` (MLflow's log_batch), the raw
    sqlite3 ceiling, MLflow's log_batch ceiling and direct mlflow.log_metric: same workload."""
    a, procs = ctx.args, ctx.procs
    keys = [f"k{i}" for i in range(a.keys)]
    with daemon(ctx, rep_dir) as d:
        sink_path(ctx, "throughput", d.status())
        main = run_load(ctx, [d], a.workers, a.metrics, a.keys, "throughput", rep, "daemon")
    with daemon(ctx, rep_dir, state="state-mlflow", sink="mlflow") as d:
        ml = run_load(
            ctx, [d], a.workers, a.metrics, a.keys, "throughput", rep, "daemon --sink mlflow"
        )
    raw = run_raw(ctx, rep_dir, a.workers, a.metrics, rep)
    ceil, ceil_ms = run_ceiling(ctx, ctx.store(rep_dir, "ceiling.db"), a.workers, a.metrics, rep)
    spec = {
        "uri": ctx.store(rep_dir, "direct.db"),
        "experiment": ctx.experiment("direct"),
        "workers": a.workers,
        "steps": a.metrics,
        "keys": a.keys,
        "cap": a.cap,
    }
    direct = procs.finish(procs.child("direct", spec), a.cap + 600, "direct")
    ctx.check(
        "throughput",
        rep,
        "direct",
        direct["sent"],
        *count_metrics(ctx, spec["uri"], direct["runs"], keys),
    )
    rate, direct_rate = main.rate, direct["sent"] / direct["seconds"]
    return {
        "daemon_metrics_per_s": rate,
        "mlflow_sink_metrics_per_s": ml.rate,
        "raw_metrics_per_s": raw,
        "ceiling_metrics_per_s": ceil,
        "direct_metrics_per_s": direct_rate,
        "direct_errors": direct["errors"],
        "daemon_vs_raw": rate / raw,
        "daemon_vs_mlflow_sink": rate / ml.rate,
        "mlflow_sink_vs_raw": ml.rate / raw,
        "daemon_vs_ceiling": rate / ceil,
        "daemon_vs_direct": rate / max(direct_rate, 1e-9),
        "cpu_us_per_record": main.cpu_us_per_record,
        "mlflow_sink_cpu_us_per_record": ml.cpu_us_per_record,
        "worker_loop_s": main.worker_loop_s,
        "sink_batch_p50_ms": main.sink_p50_ms,
        "metrics_per_batch": main.sent / max(1, main.batches),
        "ceiling_batch_ms": ceil_ms,
        "main_cpu_us_per_record": main.main_cpu_s * 1e6 / main.sent,
    }


def run_raw(ctx: Ctx, rep_dir: Path, runs: int, steps: int, rep: int) -> float:
    """Metrics/s of the raw sqlite3 ceiling (``children.child_raw``) on a fresh SQLite file."""
    db = rep_dir / "raw.db"
    spec = {
        "db": str(db),
        "artifacts": str(rep_dir / "raw-artifacts"),
        "experiment": ctx.experiment("raw"),
        "runs": runs,
        "steps": steps,
        "keys": ctx.args.keys,
        "wal": True,
    }
    res = ctx.procs.finish(ctx.procs.child("raw", spec), 1800, "raw")
    keys = [f"k{i}" for i in range(ctx.args.keys)]
    got = count_metrics(ctx, f"sqlite:///{db}", res["runs"], keys)
    ctx.check("throughput", rep, "raw", res["sent"], *got)
    return float(res["sent"]) / float(res["seconds"])


def run_ceiling(ctx: Ctx, uri: str, runs: int, steps: int, rep: int) -> tuple[float, float]:
    """Metrics/s and ms per call of MlflowClient.log_batch (1,000 metrics) on a fresh store."""
    spec = {
        "uri": uri,
        "experiment": ctx.experiment("ceiling"),
        "runs": runs,
        "steps": steps,
        "keys": ctx.args.keys,
        "cap": ctx.args.cap,
    }
    res = ctx.procs.finish(ctx.procs.child("ceiling", spec), ctx.args.cap + 600, "ceiling")
    keys = [f"k{i}" for i in range(ctx.args.keys)]
    ctx.check(
        "throughput" if rep else "latency",
        rep,
        "ceiling",
        res["sent"],
        *count_metrics(ctx, uri, res["runs"], keys),
    )
    return res["sent"] / res["seconds"], res["seconds"] * 1000 / res["calls"]


def scenario_latency(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    a = ctx.args
    if not ctx.rate:  # half the default daemon's committed/s: from the throughput scenario, else
        tput = ctx.results.get("throughput", {}).get("figures", {})  # one load like it, now
        ceil = tput.get("daemon_metrics_per_s", {}).get("values")
        if not ceil and not a.rate:
            with daemon(ctx, rep_dir, state="state-estimate") as d:
                ceil = [
                    run_load(ctx, [d], a.workers, a.metrics, a.keys, "latency", 0, "estimate").rate
                ]
        ctx.rate = a.rate or statistics.median(ceil) / 2
    n = max(1, int(ctx.rate * a.duration))
    with daemon(ctx, rep_dir) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run(ctx.experiment("latency"))
            spec = {"uri": d.backend, "run_id": run.run_id, "n": n, "timeout": a.duration + 120}
            poller = ctx.procs.child("poll", spec)
            ctx.procs.read_line(poller, 120, "poller")
            sent, i, log, clock = [0] * n, 0, run.log_metric, time.monotonic_ns
            period, t0 = 1e9 / ctx.rate, clock()
            while i < n:
                due = min(n, int((clock() - t0) / period) + 1)
                while i < due:
                    sent[i] = clock()
                    log("latency", float(i), i, sent[i] // 1_000_000)
                    i += 1
                time.sleep(0.0005)
            offered = n / ((clock() - t0) / 1e9)
            run.end()
        finally:
            tracker.close(5)
        visible = ctx.procs.finish(poller, 180, "poller")["visible"]
        status = d.status()
        sink_path(ctx, "latency", status)
        ctx.check(
            "latency", rep, "daemon", n, *count_metrics(ctx, d.backend, [run.run_id], ["latency"])
        )
    lat = [v - s for v, s in zip(visible, sent, strict=True) if v > 0]
    ctx.check("latency", rep, "visible to the poller", n, len(lat), "poll")
    return {
        "offered_per_s": offered,
        "visible_p50_ms": pct(lat, 0.5) / 1e6,
        "visible_p99_ms": pct(lat, 0.99) / 1e6,
        "visible_max_ms": max(lat) / 1e6,
        "sink_batch_p50_ms": status["sink_latency_ms"]["p50"],
        "sink_batch_p99_ms": status["sink_latency_ms"]["p99"],
        "metrics_per_batch": n / max(1, status["batches"]),
    }


def scenario_drain(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    keys = [f"k{i}" for i in range(10)]
    steps = max(1, ctx.args.burst // len(keys))
    with daemon(ctx, rep_dir) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run(ctx.experiment("drain"))
            log, t0 = run.log_metric, time.perf_counter()
            for step in range(steps):
                for key in keys:
                    log(key, step * 0.5, step, TS0 + step)
            t1 = time.perf_counter()
            run.end()
            t2 = time.perf_counter()
        finally:
            tracker.close(5)
        ctx.check(
            "drain",
            rep,
            "daemon",
            steps * len(keys),
            *count_metrics(ctx, d.backend, [run.run_id], keys),
        )
    return {"burst_log_ms": (t1 - t0) * 1000, "end_s": t2 - t1}


def scenario_memory(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    a, procs = ctx.args, ctx.procs
    steps = a.backlog // a.producers // 10
    total = steps * 10 * a.producers
    exp = ctx.experiment("memory")
    db = rep_dir / "state" / "mlflow.db"  # always SQLite, whatever --backend-store-uri, to
    with daemon(ctx, rep_dir, f"sqlite:///{db}", graceful=False) as d:  # be paused (locked)
        prods = [
            procs.child(
                "producer",
                {
                    "address": d.address,
                    "experiment": exp,
                    "steps": steps,
                    "keys": 10,
                    "then": "hold",
                },
            )
            for _ in range(a.producers)
        ]
        runs = [json.loads(procs.read_line(w, 120, "producer"))["run_id"] for w in prods]
        lock = procs.child("lock", {"db": str(db)})
        try:
            if procs.read_line(lock, 120, "sqlite lock") != "locked":
                raise BenchError("could not lock the store")
            pid = d.proc.pid
            rss_max = base = proc_kb(pid, "VmRSS")
            main0, all0, t0 = cpu_ticks(pid, pid), cpu_ticks(pid), time.monotonic()
            for w in prods:
                send_line(w)
            received, polled = 0, 0.0
            while received < total:
                time.sleep(0.05)
                rss_max = max(rss_max, proc_kb(pid, "VmRSS"))
                if time.monotonic() - polled > 0.2:
                    received, polled = d.status()["received"], time.monotonic()
                if time.monotonic() > t0 + 1800:
                    raise BenchError(f"memory: the daemon received {received} of {total}")
            t1, main1, all1 = time.monotonic(), cpu_ticks(pid, pid), cpu_ticks(pid)
            peak = proc_kb(pid, "VmHWM")
            ctx.check("memory", rep, "received while paused", total, received, "status.received")
        finally:
            if lock.poll() is None:
                send_line(lock, "release")
                lock.wait(60)
        extra = {}
        if a.memory_drain:
            t2, committed = time.monotonic(), 0
            while committed < total and time.monotonic() < t2 + 3600:
                time.sleep(0.5)
                committed = d.status()["committed"]
            extra["drain_s"] = time.monotonic() - t2
            keys = [f"k{i}" for i in range(10)]
            ctx.check("memory", rep, "daemon", total, *count_metrics(ctx, d.backend, runs, keys))
        for w in prods:
            send_line(w, "exit")
    return {
        "baseline_rss_mb": base / 1024,
        "peak_rss_mb": peak / 1024,
        "sampled_rss_max_mb": rss_max / 1024,
        "log_s": t1 - t0,
        "records_per_s": total / (t1 - t0),
        "main_cpu_us_per_record": (main1 - main0) / CLK_TCK * 1e6 / total,
        "all_cpu_us_per_record": (all1 - all0) / CLK_TCK * 1e6 / total,
        **extra,
    }


RUNNERS: dict[str, Callable[[Ctx, int, Path], dict[str, float]]] = {
    "client": scenario_client,
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "everyday": scenario_everyday,
    "drain": scenario_drain,
    "memory": scenario_memory,
    "rest": scenario_rest,
    "postgres": scenario_postgres,
    "sampler": scenario_sampler,
}
