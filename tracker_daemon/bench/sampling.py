"""The sampler scenario: what the system-metrics sampler costs at ``SAMPLED_RUNS`` open runs that
asked for it (``start_run(system_metrics=True)``), each owned by a live client process on ipc.
A daemon sampling every ``INTERVAL_S`` (a tenth of the default, so the cost is ten times the
default's) and ``SAMPLED_RUNS // RUNS_PER_PROCESS`` idle holder processes; over
``--idle-seconds``:

* ``core_pct``: the sampler's own CPU (its status ``system_metrics.cpu_s``: reads in the worker
  thread and building the records) as a share of one core, at INTERVAL_S;
* ``default_core_pct``: the same scaled to the default interval (10 s);
* ``daemon_core_pct``: the whole daemon's CPU (committing the samples included);
* ``tick_ms``: the last sample's wall time; ``records_per_s`` written.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from .everyday import IDLE_PER_PROCESS
from .harness import BenchError, Ctx, daemon, send_line
from .procfs import CLK_TCK, cpu_ticks

__all__ = ["INTERVAL_S", "SAMPLED_RUNS", "scenario_sampler"]

SAMPLED_RUNS = 100
INTERVAL_S = 1.0


def scenario_sampler(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    env = {"TRACKER_DAEMON_SYSTEM_METRICS_INTERVAL_S": str(INTERVAL_S)}
    with daemon(ctx, rep_dir, env=env) as d:
        spec = {"address": d.address, "clients": IDLE_PER_PROCESS, "system_metrics": True}
        holders = [ctx.procs.child("idle", spec) for _ in range(SAMPLED_RUNS // IDLE_PER_PROCESS)]
        for holder in holders:
            ctx.procs.read_line(holder, 120, "sampled runs")
        deadline = time.monotonic() + 60
        while d.status()["system_metrics"]["runs"] < SAMPLED_RUNS:
            if time.monotonic() > deadline:
                raise BenchError(f"sampler: fewer than {SAMPLED_RUNS} runs sampled")
            time.sleep(0.2)
        time.sleep(2 * INTERVAL_S)  # the first samples (readers made, tags written) are start-up
        pid = d.proc.pid
        s0, cpu0, t0 = d.status()["system_metrics"], cpu_ticks(pid), time.monotonic()
        time.sleep(max(ctx.args.idle_seconds, 5 * INTERVAL_S))
        s1, cpu1, t1 = d.status()["system_metrics"], cpu_ticks(pid), time.monotonic()
        for holder in holders:
            send_line(holder, "exit")
            ctx.procs.finish(holder, 60, "sampled runs")
    span = t1 - t0
    core = 100 * (s1["cpu_s"] - s0["cpu_s"]) / span
    ctx.note("sampler", f"{s1['runs']} runs sampled every {INTERVAL_S:g} s")
    return {
        "core_pct": core,
        "default_core_pct": core * INTERVAL_S / Config().system_metrics_interval_s,
        "daemon_core_pct": 100 * (cpu1 - cpu0) / CLK_TCK / span,
        "tick_ms": float(s1["last_tick_ms"]),
        "records_per_s": (s1["records"] - s0["records"]) / span,
    }
