"""A full-rate write load through one or more running daemons: ``workers`` producer processes per
daemon, each logging ``steps`` x ``keys`` metrics to its own run and flushing. Measures the
committed rate (first send -> last commit, over every producer) and the daemons' CPU: all
threads of each daemon process (utime + stime of ``/proc/PID/stat``), from before the producers
start until every daemon's ``status["committed"]`` has grown by what was sent to it; and records the
committed == sent checks (in the store and in each daemon's status)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from .harness import BenchDaemon, BenchError, Ctx, count_metrics, send_line
from .procfs import CLK_TCK, cpu_ticks

__all__ = ["Load", "run_load"]


@dataclass(frozen=True, slots=True)
class Load:
    sent: int
    seconds: float  # first send -> last commit
    cpu_s: float  # every daemon, all threads: go -> all committed
    main_cpu_s: float  # every daemon's main thread, same span
    worker_loop_s: float  # the slowest producer's logging loop
    batches: int  # sink batches, every daemon
    sink_p50_ms: float  # the first daemon's sink latency p50
    runs: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_s * 1e6 / self.sent


def run_load(
    ctx: Ctx,
    daemons: list[BenchDaemon],
    workers: int,
    steps: int,
    keys: int,
    scen: str,
    rep: int,
    what: str,
    on_go: Callable[[], object] | None = None,
    on_done: Callable[[], object] | None = None,
) -> Load:
    """``workers`` producers on each daemon; ``what`` names the checks it records. ``on_go`` is
    called just before the producers start logging, ``on_done`` as soon as the last one's
    flush returned (everything committed): the write window, e.g. for a reader's figures."""
    procs, exp = ctx.procs, ctx.experiment(scen)
    spec = {"experiment": exp, "steps": steps, "keys": keys, "then": "flush"}
    prods = [
        (d, procs.child("producer", {**spec, "address": d.address}))
        for d in daemons
        for _ in range(workers)
    ]
    runs = [json.loads(procs.read_line(w, 120, "producer"))["run_id"] for _, w in prods]
    pids, before = [d.proc.pid for d in daemons], [d.status()["committed"] for d in daemons]
    cpu0, main0 = sum(cpu_ticks(p) for p in pids), sum(cpu_ticks(p, p) for p in pids)
    if on_go is not None:
        on_go()
    for _, w in prods:
        send_line(w)
    res = [procs.finish(w, 1800, "producer") for _, w in prods]
    if on_done is not None:
        on_done()
    statuses = []
    for d, base in zip(daemons, before, strict=True):
        mine = sum(r["sent"] for (owner, _), r in zip(prods, res, strict=True) if owner is d)
        deadline, status = time.monotonic() + 120, d.status()
        while status["committed"] - base < mine:  # flush returned: this is at most a moment
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: committed {status['committed'] - base} of {mine}")
            time.sleep(0.05)
            status = d.status()
        statuses.append(status)
        ctx.check(scen, rep, what, mine, status["committed"] - base, "status.committed")
    cpu1, main1 = sum(cpu_ticks(p) for p in pids), sum(cpu_ticks(p, p) for p in pids)
    sent = sum(r["sent"] for r in res)
    names = [f"k{i}" for i in range(keys)]
    ctx.check(scen, rep, what, sent, *count_metrics(ctx, daemons[0].backend, runs, names))
    return Load(
        sent=sent,
        seconds=(max(r["done_ns"] for r in res) - min(r["first_ns"] for r in res)) / 1e9,
        cpu_s=(cpu1 - cpu0) / CLK_TCK,
        main_cpu_s=(main1 - main0) / CLK_TCK,
        worker_loop_s=max(r["logged_ns"] - r["first_ns"] for r in res) / 1e9,
        batches=sum(s["batches"] for s in statuses),
        sink_p50_ms=float(statuses[0]["sink_latency_ms"]["p50"]),
        runs=tuple(runs),
    )
