"""The everyday scenario: what the daemon costs at the rates training hosts log at for hours,
not at saturation. For each total rate of ``--rates`` (default 1k, 5k and 20k points/s) and each
sink (the default SQL writer, and ``--sink mlflow``: MLflow's log_batch), a fresh daemon and
``--paced-workers`` producer processes, each logging its share of the rate as bursts of
``CHUNK`` points on a fixed schedule (e.g. 8 workers x 625/s: 25 points every 40 ms) for
``--duration`` seconds, then flushing. Figures per rate and sink:

* daemon CPU per point (all threads: utime + stime of ``/proc/PID/stat``, from "go" until every
  point is committed) and that CPU as a share of one core over the same span;
* log -> visible in the store, p50 / p99: worker 0 logs one more metric ("latency") per burst and
  a poller (``children.child_poll``) records when each step shows up;
* fsyncs per second: the journal's group fsyncs and mark writes plus the sink's commits (each
  SQLite commit is a WAL fsync), from the status document;
* frames per second the daemon received (what the clients' coalescing leaves);
* committed == sent, in the store and in the daemon's status.

And the idle cost: a daemon with ``IDLE_CLIENTS`` connected clients (each with an open run) and
no data, CPU as a share of one core over ``--idle-seconds``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import tracker_client

from .harness import TS0, BenchDaemon, BenchError, Ctx, count_metrics, daemon, send_line
from .procfs import CLK_TCK, cpu_ticks
from .report import pct

__all__ = [
    "CHUNK",
    "EVERYDAY_RATES",
    "IDLE_CLIENTS",
    "child_idle",
    "child_paced",
    "rate_label",
    "scenario_everyday",
]

EVERYDAY_RATES = (1000, 5000, 20000)  # total points/s
CHUNK = 25  # points per burst of one worker
IDLE_CLIENTS = 50
IDLE_PER_PROCESS = 10  # the daemon allows max_clients_per_process (16) client ids per process
SINKS = (("", None), ("mlflow_sink_", "mlflow"))  # (figure prefix, --sink)


def rate_label(rate: float) -> str:
    """``5000`` -> ``"5k"``, ``1500`` -> ``"1.5k"``, ``800`` -> ``"800"`` (figure names)."""
    if rate >= 1000:
        return f"{rate / 1000:g}k"
    return f"{rate:g}"


def scenario_everyday(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    a, out = ctx.args, dict[str, float]()
    for rate in a.rates:
        for prefix, sink in SINKS:
            state = f"state-{sink or 'default'}-{rate_label(rate)}"
            with daemon(ctx, rep_dir, state=state, sink=sink) as d:
                if sink is None:
                    ctx.note("everyday", f"default daemon's sink: {d.status()['sink']}")
                what = f"{rate_label(rate)}/s {'--sink mlflow' if sink else 'default sink'}"
                figs = paced_load(ctx, d, rate, rep, what)
            out.update({f"{prefix}{k}_{rate_label(rate)}": v for k, v in figs.items()})
    with daemon(ctx, rep_dir, state="state-idle") as d:
        out["idle_core_pct"] = idle_share(ctx, d, a.idle_seconds)
    return out


def paced_load(ctx: Ctx, d: BenchDaemon, rate: float, rep: int, what: str) -> dict[str, float]:
    """``ctx.args.paced_workers`` paced producers on ``d`` at ``rate`` points/s in total."""
    a, procs = ctx.args, ctx.procs
    workers = a.paced_workers
    period = CHUNK * workers / rate  # seconds between one worker's bursts
    ticks = max(1, round(a.duration / period))
    spec = {
        "address": d.address,
        "experiment": ctx.experiment("everyday"),
        "ticks": ticks,
        "period": period,
        "chunk": CHUNK,
        "keys": 10,
    }
    prods = [procs.child("paced", {**spec, "latency": i == 0}) for i in range(workers)]
    runs = [json.loads(procs.read_line(w, 120, "paced worker"))["run_id"] for w in prods]
    poll = {"uri": d.backend, "run_id": runs[0], "n": ticks, "timeout": a.duration + 120}
    poller = procs.child("poll", poll)
    procs.read_line(poller, 120, "poller")
    deadline = time.monotonic() + 300
    while "not opened" in d.status()["sink"]:  # its start-up (schema, migrations) is not timed
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: the sink did not open")
        time.sleep(0.1)
    pid, before = d.proc.pid, d.status()
    cpu0, t0 = cpu_ticks(pid), time.monotonic()
    for w in prods:
        send_line(w)
    res = [procs.finish(w, a.duration + 600, "paced worker") for w in prods]
    sent = sum(r["sent"] for r in res)
    deadline, status = time.monotonic() + 120, d.status()
    while status["committed"] - before["committed"] < sent:  # flush returned: a moment at most
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: committed {status['committed']} of {sent}")
        time.sleep(0.05)
        status = d.status()
    cpu1, t1 = cpu_ticks(pid), time.monotonic()
    visible = procs.finish(poller, 180, "poller")["visible"]
    ctx.check("everyday", rep, what, sent, status["committed"] - before["committed"], "status")
    names = [f"k{i}" for i in range(spec["keys"])] + ["latency"]
    ctx.check("everyday", rep, what, sent, *count_metrics(ctx, d.backend, runs, names))
    lat = [v - s for v, s in zip(visible, res[0]["latency_ns"], strict=True) if v > 0]
    ctx.check("everyday", rep, f"{what}: visible to the poller", ticks, len(lat), "poll")
    seconds, cpu_s = t1 - t0, (cpu1 - cpu0) / CLK_TCK
    first_ns = min(r["first_ns"] for r in res)

    def per_s(key: str) -> float:
        return float(status.get(key, 0) - before.get(key, 0)) / seconds

    return {
        "offered_per_s": sent * 1e9 / (max(r["last_ns"] for r in res) - first_ns),
        "cpu_us_per_point": cpu_s * 1e6 / sent,
        "core_pct": 100 * cpu_s / seconds,
        "visible_p50_ms": pct(lat, 0.5) / 1e6,
        "visible_p99_ms": pct(lat, 0.99) / 1e6,
        "fsyncs_per_s": per_s("fsyncs") + per_s("mark_writes") + per_s("batches"),
        "sink_commits_per_s": per_s("batches"),
        "frames_per_s": per_s("frames"),
    }


def idle_share(ctx: Ctx, d: BenchDaemon, seconds: float) -> float:
    """Percent of one core the daemon uses over ``seconds`` with IDLE_CLIENTS idle clients."""
    spec = {"address": d.address, "clients": IDLE_PER_PROCESS}
    holders = [ctx.procs.child("idle", spec) for _ in range(IDLE_CLIENTS // IDLE_PER_PROCESS)]
    for holder in holders:
        ctx.procs.read_line(holder, 120, "idle clients")
    deadline = time.monotonic() + 60
    while len(d.status()["clients"]) < IDLE_CLIENTS:
        if time.monotonic() > deadline:
            raise BenchError(f"idle: fewer than {IDLE_CLIENTS} clients connected")
        time.sleep(0.1)
    time.sleep(1.0)  # the start-up's tail (runs.log, the mark) is not idle cost
    pid = d.proc.pid
    cpu0, t0 = cpu_ticks(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = cpu_ticks(pid), time.monotonic()
    for holder in holders:
        send_line(holder, "exit")
        ctx.procs.finish(holder, 60, "idle clients")
    return 100 * (cpu1 - cpu0) / CLK_TCK / (t1 - t0)


# ------------------------------------------------------------------ child processes


def _say(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def child_paced(spec: dict[str, Any]) -> None:
    """After "go": ``ticks`` bursts of ``chunk`` points, one every ``period`` s on a fixed
    schedule (a late burst does not shift the later ones), then flush and end. With ``latency``
    one more point of the metric "latency" per burst, its send time recorded."""
    tracker = tracker_client.connect(spec["address"], policy="block", offline=False)
    run = tracker.start_run(spec["experiment"])
    _say({"run_id": run.run_id})
    sys.stdin.readline()
    keys, chunk, period = [f"k{i}" for i in range(spec["keys"])], spec["chunk"], spec["period"]
    nkeys, log, clock = len(keys), run.log_metric, time.monotonic_ns
    latency, sent_at = spec["latency"], [0] * spec["ticks"]
    first = clock()
    i = 0
    for tick in range(spec["ticks"]):
        due = first + int(tick * period * 1e9)
        wait = due - clock()
        if wait > 0:
            time.sleep(wait / 1e9)
        for _ in range(chunk):
            log(keys[i % nkeys], i * 0.5, i // nkeys, TS0 + i)
            i += 1
        if latency:
            sent_at[tick] = clock()
            log("latency", float(tick), tick, sent_at[tick] // 1_000_000)
    last = clock()
    run.flush()
    done = clock()
    run.end()
    tracker.close(5)
    sent = i + (spec["ticks"] if latency else 0)
    doc = {"sent": sent, "first_ns": first, "last_ns": last, "done_ns": done}
    _say({**doc, "latency_ns": sent_at if latency else []})


def child_idle(spec: dict[str, Any]) -> None:
    """``clients`` connections, each with an open run, idle until a line on stdin."""
    trackers = [
        tracker_client.connect(spec["address"], policy="block", offline=False)
        for _ in range(spec["clients"])
    ]
    sampled = bool(spec.get("system_metrics"))  # the sampler scenario (sampling.py)
    runs = [t.start_run("tracker-daemon-bench-idle", system_metrics=sampled) for t in trackers]
    _say({"runs": len(runs)})
    sys.stdin.readline()
    _say({"done": True})
    os._exit(0)  # no end_run: idle clients that go away (the daemon's orphan path, not timed)
