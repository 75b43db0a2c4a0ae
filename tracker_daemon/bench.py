"""``tracker-daemon bench``: benchmark the client, the daemon and the MLflow backend.

Each repeat of a scenario starts its own daemon on a fresh temporary state dir (removed unless
``--keep``) and SQLite store (or ``--backend-store-uri``). Figures are min / median / max over
``--repeat`` repeats; targets are judged on the median. Committed metrics are counted in the store
(SQL on SQLite, else ``get_metric_history``); the bench fails unless committed == sent.

  client      cost of Run.log_metric in a tight loop (own process); import tracker_client
  throughput  N workers through the daemon, vs. the ceiling (1 process, MlflowClient.log_batch of
              1,000 metrics) and direct (N processes calling mlflow.log_metric, time-capped)
  latency     log -> visible in the store at an offered load (default: half the ceiling)
  drain       Run.end() after a burst of 10k metrics
  memory      daemon RSS and CPU/record while a 5M-record backlog is held with the sink paused
              (another process holds an exclusive lock on the SQLite store)

Exit status 0 when every scenario ran and every count matched (a missed target is reported, not
fatal), else 1. ``--json``: the JSON document on stdout, the table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tracker_client

from . import __version__

__all__ = ["add_parser", "run_bench"]

SCENARIOS = ("client", "throughput", "latency", "drain", "memory")
TS0 = 1_700_000_000_000  # timestamp (ms) of step 0 in the synthetic workloads
CLK_TCK = os.sysconf("SC_CLK_TCK")
# "scenario/figure": (label, unit, comparison, target); comparison "" = informational
FIGURES: dict[str, tuple[str, str, str, float]] = {
    "client/log_metric_p50_ns": ("log_metric p50", "ns", "<=", 2000),
    "client/log_metric_p99_ns": ("log_metric p99", "ns", "<=", 50_000),
    "client/log_metric_max_ns": ("log_metric max", "ns", "", 0),
    "client/log_metric_timed_mean_ns": ("log_metric mean of the timed calls", "ns", "", 0),
    "client/log_metric_mean_ns": ("log_metric mean, untimed loop (total/N)", "ns", "", 0),
    "client/import_ms": ("import tracker_client (bytecode cached)", "ms", "<=", 100),
    "client/import_env_ms": ("import tracker_client (this env, -B)", "ms", "", 0),
    "throughput/daemon_metrics_per_s": ("daemon: first send -> last commit", "metrics/s", "", 0),
    "throughput/ceiling_metrics_per_s": ("ceiling: log_batch x1000, 1 process", "metrics/s", "", 0),
    "throughput/direct_metrics_per_s": ("direct: mlflow.log_metric, N procs", "metrics/s", "", 0),
    "throughput/direct_errors": ("direct: calls that raised", "calls", "", 0),
    "throughput/daemon_vs_ceiling": ("daemon / ceiling", "ratio", ">=", 0.95),
    "throughput/daemon_vs_direct": ("daemon / direct", "ratio", "", 0),
    "throughput/worker_loop_s": ("slowest worker's logging loop", "s", "", 0),
    "throughput/sink_batch_p50_ms": ("daemon log_batch p50", "ms", "", 0),
    "throughput/metrics_per_batch": ("daemon metrics per log_batch", "metrics", "", 0),
    "throughput/ceiling_batch_ms": ("ceiling log_batch mean", "ms", "", 0),
    "throughput/main_cpu_us_per_record": ("daemon main-thread CPU / record", "us", "", 0),
    "latency/offered_per_s": ("offered load", "metrics/s", "", 0),
    "latency/visible_p50_ms": ("log -> visible p50", "ms", "", 0),
    "latency/visible_p99_ms": ("log -> visible p99", "ms", "<=", 250),
    "latency/visible_max_ms": ("log -> visible max", "ms", "", 0),
    "latency/sink_batch_p50_ms": ("daemon log_batch p50", "ms", "", 0),
    "latency/sink_batch_p99_ms": ("daemon log_batch p99", "ms", "", 0),
    "latency/metrics_per_batch": ("daemon metrics per log_batch", "metrics", "", 0),
    "drain/burst_log_ms": ("logging the burst", "ms", "", 0),
    "drain/end_s": ("Run.end() after the burst", "s", "<=", 3),
    "memory/baseline_rss_mb": ("daemon RSS before the backlog", "MB", "", 0),
    "memory/peak_rss_mb": ("daemon peak RSS (VmHWM)", "MB", "<=", 300),
    "memory/sampled_rss_max_mb": ("daemon RSS, max sampled (VmRSS)", "MB", "", 0),
    "memory/log_s": ("until the daemon holds the backlog", "s", "", 0),
    "memory/records_per_s": ("records received", "records/s", "", 0),
    "memory/main_cpu_us_per_record": ("daemon CPU/record excl. sink (main)", "us", "<=", 10),
    "memory/all_cpu_us_per_record": ("daemon CPU/record, all threads", "us", "", 0),
    "memory/drain_s": ("drain once the sink resumes", "s", "", 0),
}


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- processes


class Procs:
    """Every child of the bench, each in its own session (``kill_all`` ends what is left), its
    stderr in a log file (a pipe nobody reads could fill up and block the child)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.items: list[subprocess.Popen[bytes]] = []
        self.log_of: dict[int, Path] = {}

    def spawn(
        self, cmd: list[str], env: dict[str, str], name: str, pipe: bool = True
    ) -> subprocess.Popen[bytes]:
        """``pipe``: stdout is a pipe to read; else it goes to the log file too."""
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{len(self.items):03d}-{name}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
                bufsize=0,
                env=env,
                start_new_session=True,
            )
        self.items.append(proc)
        self.log_of[proc.pid] = path
        return proc

    def child(self, mode: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tracker_daemon.bench", mode, json.dumps(spec)]
        return self.spawn(cmd, clean_env(), mode)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        path = self.log_of.get(proc.pid)
        return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""

    def read_line(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
        """One line from a child's stdout (unbuffered), or BenchError with its log."""
        assert proc.stdout is not None
        deadline, buf = time.monotonic() + timeout, b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise BenchError(f"{what}: no answer within {timeout:g} s")
            byte = proc.stdout.read(1)
            if not byte:
                raise BenchError(f"{what}: exited with {proc.wait(10)}:\n{self.log(proc)}")
            buf += byte
        return buf.decode().strip()

    def finish(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> Any:
        """Wait for a child; return the JSON document it printed last."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            raise BenchError(f"{what}: exited with {proc.returncode}:\n{self.log(proc)}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def kill_all(self) -> None:
        for proc in self.items:
            if proc.poll() is None:  # the group leader is alive: kill its whole group
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self.items.clear()


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_DAEMON_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **(extra or {})}


def send_line(proc: subprocess.Popen[bytes], line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")


def say(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    address: str
    backend: str

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = tracker_client.query_status(self.address, timeout=30)
        return status


@contextmanager
def daemon(
    ctx: Ctx, rep_dir: Path, backend: str | None = None, graceful: bool = True
) -> Iterator[Daemon]:
    """``tracker-daemon run`` on ``rep_dir/state``; stopped at the end: SIGTERM (no drain), or
    SIGKILL when not ``graceful`` or on an error (its state is thrown away anyway)."""
    backend = backend or ctx.args.backend_store_uri
    state, sock_dir = rep_dir / "state", Path(tempfile.mkdtemp(prefix="tdb-", dir="/tmp"))
    address = f"ipc://{sock_dir / 'd.sock'}"  # AF_UNIX paths are short: not under rep_dir
    cmd = [
        sys.executable,
        "-m",
        "tracker_daemon.cli",
        "run",
        "--state-dir",
        str(state),
        "--address",
        address,
        "--log-level",
        "WARNING",
    ]
    cmd += ["--backend-store-uri", backend] if backend else []
    env = clean_env({"TRACKER_DAEMON_DRAIN_TIMEOUT_S": "0"})  # all is verified before the stop
    proc = ctx.procs.spawn(cmd, env, "daemon", pipe=False)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise BenchError(f"daemon exited with {proc.returncode}:\n{ctx.procs.log(proc)}")
            try:
                tracker_client.query_status(address, timeout=0.5)
                break
            except tracker_client.DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise BenchError(f"daemon not ready:\n{ctx.procs.log(proc)}") from None
        yield Daemon(proc, address, backend or f"sqlite:///{state / 'mlflow.db'}")
    except BaseException:
        graceful = False
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(sock_dir, ignore_errors=True)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def count_metrics(ctx: Ctx, uri: str, runs: list[str], keys: list[str]) -> tuple[int, str]:
    """How many metric points the store holds for ``runs``, and how that was counted."""
    db = sqlite_path(uri)
    if db is None:
        child = ctx.procs.child("count", {"uri": uri, "runs": runs, "keys": keys})
        return int(ctx.procs.finish(child, 600, "count")["n"]), "get_metric_history"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        sql = f"SELECT COUNT(*) FROM metrics WHERE run_uuid IN ({','.join('?' * len(runs))})"
        return int(con.execute(sql, runs).fetchone()[0]), "sql-count"
    finally:
        con.close()


def cpu_ticks(pid: int, tid: int | None = None) -> int:
    """utime + stime (clock ticks) of a process, or of one of its threads."""
    with open(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_kb(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next((int(x.split()[1]) for x in fh if x.startswith(name + ":")), 0)


def pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


# --------------------------------------------------------------------------- scenarios


@dataclass
class Ctx:
    args: argparse.Namespace
    procs: Procs
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    rate: float = 0.0  # the latency scenario's offered load, once known

    def experiment(self, scenario: str) -> str:
        return f"tracker-daemon-bench-{scenario}-{uuid.uuid4().hex[:8]}"

    def store(self, rep_dir: Path, name: str) -> str:
        """A fresh store for the ceiling / direct baselines (or the user's backend)."""
        return self.args.backend_store_uri or f"sqlite:///{rep_dir / name}"

    def check(self, scen: str, rep: int, what: str, sent: int, got: int, method: str) -> None:
        self.results.setdefault(scen, {}).setdefault("checks", []).append(
            {
                "repeat": rep,
                "what": what,
                "sent": sent,
                "committed": got,
                "method": method,
                "ok": sent == got,
            }
        )
        if sent != got:
            print(
                f"bench: {scen} {rep}: {what}: sent {sent}, found {got} ({method})", file=sys.stderr
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


def scenario_throughput(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    a, procs = ctx.args, ctx.procs
    keys = [f"k{i}" for i in range(a.keys)]
    exp = ctx.experiment("throughput")
    with daemon(ctx, rep_dir) as d:
        workers = [
            procs.child(
                "producer",
                {
                    "address": d.address,
                    "experiment": exp,
                    "steps": a.metrics,
                    "keys": a.keys,
                    "then": "flush",
                },
            )
            for _ in range(a.workers)
        ]
        runs = [json.loads(procs.read_line(w, 120, "worker"))["run_id"] for w in workers]
        cpu0 = cpu_ticks(d.proc.pid, d.proc.pid)
        for w in workers:
            send_line(w)
        res = [procs.finish(w, 1800, "worker") for w in workers]
        cpu1 = cpu_ticks(d.proc.pid, d.proc.pid)
        status = d.status()
        sent = sum(r["sent"] for r in res)
        ctx.check("throughput", rep, "daemon", sent, *count_metrics(ctx, d.backend, runs, keys))
        ctx.check("throughput", rep, "daemon", sent, status["committed"], "status.committed")
    wall = (max(r["done_ns"] for r in res) - min(r["first_ns"] for r in res)) / 1e9
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
    rate, direct_rate = sent / wall, direct["sent"] / direct["seconds"]
    return {
        "daemon_metrics_per_s": rate,
        "ceiling_metrics_per_s": ceil,
        "direct_metrics_per_s": direct_rate,
        "direct_errors": direct["errors"],
        "daemon_vs_ceiling": rate / ceil,
        "daemon_vs_direct": rate / max(direct_rate, 1e-9),
        "worker_loop_s": max(r["logged_ns"] - r["first_ns"] for r in res) / 1e9,
        "sink_batch_p50_ms": status["sink_latency_ms"]["p50"],
        "metrics_per_batch": sent / max(1, status["batches"]),
        "ceiling_batch_ms": ceil_ms,
        "main_cpu_us_per_record": (cpu1 - cpu0) / CLK_TCK * 1e6 / sent,
    }


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
    if not ctx.rate:  # half the ceiling: as measured by the throughput scenario, else estimated
        tput = ctx.results.get("throughput", {}).get("figures", {})
        ceil = tput.get("ceiling_metrics_per_s", {}).get("values") or [
            run_ceiling(ctx, ctx.store(rep_dir, "estimate.db"), 1, 2000, 0)[0]
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
    "drain": scenario_drain,
    "memory": scenario_memory,
}


# --------------------------------------------------------------------------- children


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
    "direct": child_direct,
    "poll": child_poll,
    "lock": child_lock,
    "count": child_count,
}


# --------------------------------------------------------------------------- report


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def summarize(name: str, values: list[float]) -> dict[str, Any]:
    label, unit, op, target = FIGURES[name]
    med = statistics.median(values)
    return {
        "label": label,
        "unit": unit,
        "values": values,
        "min": min(values),
        "median": med,
        "max": max(values),
        "target": f"{op} {target:g}" if op else None,
        "pass": None if not op else med <= target if op == "<=" else med >= target,
    }


def table(doc: dict[str, Any]) -> str:
    load = [" ".join(f"{x:.1f}" for x in doc[k]) for k in ("loadavg_start", "loadavg_end")]
    lines = [
        f"tracker-daemon bench {doc['version']}  python {doc['python']}  {doc['cpus']} CPUs  "
        f"repeat {doc['repeat']}  backend {doc['backend']}  {doc['elapsed_s']:.0f} s  "
        f"load avg 1/5/15 min: {load[0]} at start, {load[1]} at end",
        f"{'scenario':<11}{'figure':<42}{'min':>11}{'median':>11}{'max':>11}  {'unit':<10}"
        f"{'target':<10}result",
    ]
    for scen, res in doc["scenarios"].items():
        for f in res.get("figures", {}).values():
            verdict = {None: "", True: "PASS", False: "MISS"}[f["pass"]]
            lines.append(
                f"{scen:<11}{f['label']:<42}{fmt(f['min']):>11}{fmt(f['median']):>11}"
                f"{fmt(f['max']):>11}  {f['unit']:<10}{f['target'] or '-':<10}{verdict}"
            )
        checks = res.get("checks", [])
        if checks:
            ok = sum(c["ok"] for c in checks)
            kinds = ", ".join(sorted({f"{c['what']} ({c['method']})" for c in checks}))
            lines.append(f"{'':<11}committed == sent: {ok}/{len(checks)} checks OK: {kinds}")
        if res.get("error"):
            lines.append(f"{scen:<11}ERROR: {res['error']}")
    lines.append(
        "verdict: " + ("OK: every scenario ran, every count matched" if doc["ok"] else "FAILED")
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry points

DEFAULTS = {  # option: (default, --quick)
    "calls": (200_000, 20_000),
    "workers": (16, 2),
    "metrics": (250, 200),
    "keys": (10, 10),
    "cap": (20.0, 5.0),
    "rate": (0.0, 500.0),
    "duration": (10.0, 2.0),
    "burst": (10_000, 10_000),
    "backlog": (5_000_000, 300_000),
    "producers": (4, 2),
}


def add_parser(sub: Any) -> None:
    """Register ``tracker-daemon bench`` on the CLI's subparsers."""
    ap = sub.add_parser(
        "bench",
        help="benchmark the client, the daemon and the backend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="repeats per scenario (default 3)")
    ap.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dirs and logs")
    ap.add_argument("--quick", action="store_true", help="small sizes, for tests")
    ap.add_argument("--backend-store-uri", help="use this backend instead of fresh SQLite stores")
    for name, kind, text in (
        ("calls", int, "client: log_metric calls"),
        ("workers", int, "throughput: processes"),
        ("metrics", int, "throughput: steps per worker"),
        ("keys", int, "throughput: keys/step"),
        ("cap", float, "throughput: time cap (s) of the ceiling and direct runs"),
        ("rate", float, "latency: offered metrics/s (0: half the ceiling)"),
        ("duration", float, "latency: seconds of load"),
        ("burst", int, "drain: metrics"),
        ("backlog", int, "memory: records held"),
        ("producers", int, "memory: processes"),
    ):
        ap.add_argument(f"--{name}", type=kind, help=f"{text} (default {DEFAULTS[name][0]:g})")
    ap.add_argument("--memory-drain", action="store_true", help="memory: also time the drain")
    ap.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    scenarios = args.scenarios or list(SCENARIOS)
    if set(scenarios) - set(SCENARIOS) or args.repeat < 1:
        print(
            f"tracker-daemon bench: scenarios are {', '.join(SCENARIOS)}; --repeat >= 1",
            file=sys.stderr,
        )
        return 2
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    root = Path(tempfile.mkdtemp(prefix="tracker-daemon-bench-"))
    ctx = Ctx(args, Procs(root / "logs"))
    started, load0 = time.monotonic(), os.getloadavg()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for scen in [s for s in SCENARIOS if s in scenarios]:
            res, values = ctx.results.setdefault(scen, {}), dict[str, list[float]]()
            try:
                for rep in range(1, args.repeat + 1):
                    rep_dir, t0 = root / scen / f"r{rep}", time.monotonic()
                    rep_dir.mkdir(parents=True)
                    for k, v in RUNNERS[scen](ctx, rep, rep_dir).items():
                        values.setdefault(k, []).append(v)
                    print(
                        f"bench: {scen} {rep}/{args.repeat}: {time.monotonic() - t0:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            except (BenchError, tracker_client.TrackerError, OSError, KeyError) as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                ctx.procs.kill_all()
            res["figures"] = {k: summarize(f"{scen}/{k}", v) for k, v in values.items()}
    finally:
        signal.signal(signal.SIGTERM, previous)
        ctx.procs.kill_all()
        if args.keep:
            print(f"bench: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    doc: dict[str, Any] = {
        "tool": "tracker-daemon bench",
        "version": __version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "scenarios_run": scenarios,
        "backend": args.backend_store_uri or "sqlite (fresh per repeat)",
        "settings": {k: getattr(args, k) for k in DEFAULTS},
        "loadavg_start": list(load0),
        "loadavg_end": list(os.getloadavg()),
        "elapsed_s": time.monotonic() - started,
        "scenarios": ctx.results,
    }
    doc["ok"] = all(
        not r.get("error") and all(c["ok"] for c in r.get("checks", []))
        for r in ctx.results.values()
    )
    print(table(doc), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0 if doc["ok"] else 1


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind, so that every child is killed


if __name__ == "__main__":  # a child process of the bench: python -m tracker_daemon.bench MODE SPEC
    CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))
