"""The figures the bench reports, their targets, and the table: min / median / max over the
repeats, targets judged on the median."""

from __future__ import annotations

import statistics
from typing import Any

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


def pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


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
