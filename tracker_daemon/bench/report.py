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
    "throughput/daemon_metrics_per_s": ("daemon, default sink: send -> commit", "metrics/s", "", 0),
    "throughput/mlflow_sink_metrics_per_s": (
        "daemon --sink mlflow (log_batch)",
        "metrics/s",
        "",
        0,
    ),
    "throughput/raw_metrics_per_s": ("raw: sqlite3 executemany, 16k rows/txn", "metrics/s", "", 0),
    "throughput/ceiling_metrics_per_s": ("log_batch: MLflow x1000, 1 process", "metrics/s", "", 0),
    "throughput/direct_metrics_per_s": ("direct: mlflow.log_metric, N procs", "metrics/s", "", 0),
    "throughput/direct_errors": ("direct: calls that raised", "calls", "", 0),
    "throughput/daemon_vs_raw": ("daemon / raw", "ratio", ">=", 0.33),
    "throughput/daemon_vs_mlflow_sink": ("daemon / daemon --sink mlflow", "ratio", ">=", 4),
    "throughput/mlflow_sink_vs_raw": ("daemon --sink mlflow / raw", "ratio", "", 0),
    "throughput/daemon_vs_ceiling": ("daemon / log_batch", "ratio", "", 0),
    "throughput/daemon_vs_direct": ("daemon / direct", "ratio", "", 0),
    "throughput/cpu_us_per_record": ("daemon CPU / committed record, all threads", "us", "<=", 20),
    "throughput/mlflow_sink_cpu_us_per_record": (
        "--sink mlflow CPU / record, all threads",
        "us",
        "",
        0,
    ),
    "throughput/worker_loop_s": ("slowest worker's logging loop", "s", "", 0),
    "throughput/sink_batch_p50_ms": ("daemon sink batch p50", "ms", "", 0),
    "throughput/metrics_per_batch": ("daemon metrics per sink batch", "metrics", "", 0),
    "throughput/ceiling_batch_ms": ("log_batch ceiling: mean per call", "ms", "", 0),
    "throughput/main_cpu_us_per_record": ("daemon main-thread CPU / record", "us", "", 0),
    "latency/offered_per_s": ("offered load", "metrics/s", "", 0),
    "latency/visible_p50_ms": ("log -> visible p50", "ms", "", 0),
    "latency/visible_p99_ms": ("log -> visible p99", "ms", "<=", 100),
    "latency/visible_max_ms": ("log -> visible max", "ms", "", 0),
    "latency/sink_batch_p50_ms": ("daemon sink batch p50", "ms", "", 0),
    "latency/sink_batch_p99_ms": ("daemon sink batch p99", "ms", "", 0),
    "latency/metrics_per_batch": ("daemon metrics per sink batch", "metrics", "", 0),
    "drain/burst_log_ms": ("logging the burst", "ms", "", 0),
    "drain/end_s": ("Run.end() after the burst", "s", "<=", 2),
    "memory/baseline_rss_mb": ("daemon RSS before the backlog", "MB", "", 0),
    "memory/peak_rss_mb": ("daemon peak RSS (VmHWM)", "MB", "<=", 300),
    "memory/sampled_rss_max_mb": ("daemon RSS, max sampled (VmRSS)", "MB", "", 0),
    "memory/log_s": ("until the daemon holds the backlog", "s", "", 0),
    "memory/records_per_s": ("records received", "records/s", "", 0),
    "memory/main_cpu_us_per_record": ("daemon CPU/record excl. sink (main)", "us", "<=", 10),
    "memory/all_cpu_us_per_record": ("daemon CPU/record, all threads", "us", "", 0),
    "memory/drain_s": ("drain once the sink resumes", "s", "", 0),
    "sampler/core_pct": ("sampler, 100 runs every 1 s: share of a core", "%", "", 0),
    "sampler/default_core_pct": ("sampler, 100 runs every 10 s: share of a core", "%", "<=", 2),
    "sampler/daemon_core_pct": ("daemon, 100 sampled runs every 1 s: share", "%", "", 0),
    "sampler/tick_ms": ("sampler: one sample of 100 runs", "ms", "", 0),
    "sampler/records_per_s": ("sampler: records written", "/s", "", 0),
    "postgres/direct_metrics_per_s": ("2 daemons -> PostgreSQL", "metrics/s", "", 0),
    "postgres/server_metrics_per_s": ("2 daemons -> mlflow server (REST)", "metrics/s", "", 0),
    "postgres/direct_vs_server": ("direct / mlflow server", "ratio", "", 0),
    "postgres/direct_cpu_us_per_record": ("direct: daemons' CPU / record", "us", "", 0),
    "postgres/server_cpu_us_per_record": ("REST: daemons' CPU / record", "us", "", 0),
}
for _mode, _name in (("wal", "WAL"), ("rollback", "rollback journal")):
    FIGURES.update(
        {
            f"rest/idle_p50_ms_{_mode}": (f"REST p50, idle ({_name})", "ms", "", 0),
            f"rest/idle_p99_ms_{_mode}": (f"REST p99, idle ({_name})", "ms", "", 0),
            f"rest/load_p50_ms_{_mode}": (f"REST p50, writing ({_name})", "ms", "", 0),
            f"rest/load_p99_ms_{_mode}": (f"REST p99, writing ({_name})", "ms", "", 0),
            f"rest/load_vs_idle_{_mode}": (f"REST p99 write / idle ({_name})", "ratio", "<=", 1.5),
            f"rest/load_reads_{_mode}": (f"REST reads during the write ({_name})", "reads", "", 0),
            f"rest/errors_{_mode}": (f"REST reads that failed ({_name})", "reads", "", 0),
            f"rest/daemon_metrics_per_s_{_mode}": (
                f"daemon committed ({_name})",
                "metrics/s",
                "",
                0,
            ),
        }
    )


EVERYDAY_TARGET_RATE = "5k"  # the rate the everyday targets are set at (issue: 5,000 points/s)


def everyday_figures(label: str) -> dict[str, tuple[str, str, str, float]]:
    """The everyday scenario's figures at one total rate (``label``: "1k", "5k", "20k", ...);
    CPU targets at EVERYDAY_TARGET_RATE, the visibility target (the default sink) at every rate."""
    at = label == EVERYDAY_TARGET_RATE
    figs: dict[str, tuple[str, str, str, float]] = {}
    for prefix, path in (("", "writer"), ("mlflow_sink_", "--sink mlflow")):
        writer = not prefix
        figs.update(
            {
                f"{prefix}offered_per_s": (f"{label}/s {path}: offered", "points/s", "", 0),
                f"{prefix}cpu_us_per_point": (
                    f"{label}/s {path}: daemon CPU / point",
                    "us",
                    "<=" if at and writer else "",
                    20,
                ),
                f"{prefix}core_pct": (
                    f"{label}/s {path}: share of one core",
                    "%",
                    "<=" if at else "",
                    10 if writer else 50,
                ),
                f"{prefix}visible_p50_ms": (f"{label}/s {path}: log -> visible p50", "ms", "", 0),
                f"{prefix}visible_p99_ms": (
                    f"{label}/s {path}: log -> visible p99",
                    "ms",
                    "<=" if writer else "",
                    1000,
                ),
                f"{prefix}fsyncs_per_s": (f"{label}/s {path}: fsyncs (journal+sink)", "/s", "", 0),
                f"{prefix}sink_commits_per_s": (f"{label}/s {path}: sink commits", "/s", "", 0),
                f"{prefix}frames_per_s": (f"{label}/s {path}: frames received", "/s", "", 0),
            }
        )
    return {f"everyday/{k}_{label}": v for k, v in figs.items()}


for _label in ("1k", "5k", "20k"):
    FIGURES.update(everyday_figures(_label))
FIGURES["everyday/idle_core_pct"] = ("idle: 50 clients, no data: share of a core", "%", "<=", 1)


def figure(name: str) -> tuple[str, str, str, float]:
    """FIGURES[name]; an everyday figure at a rate not listed there is made for its rate."""
    if name not in FIGURES and name.startswith("everyday/"):
        return everyday_figures(name.rsplit("_", 1)[1])[name]
    return FIGURES[name]


def pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def judge(op: str, target: float, value: float) -> bool | None:
    """Whether ``value`` meets the target ``op target`` (None: informational, no target)."""
    if not op:
        return None
    return value <= target if op == "<=" else value >= target


def summarize(name: str, values: list[float]) -> dict[str, Any]:
    label, unit, op, target = figure(name)
    med = statistics.median(values)
    return {
        "label": label,
        "unit": unit,
        "values": values,
        "min": min(values),
        "median": med,
        "max": max(values),
        "target": f"{op} {target:g}" if op else None,
        "pass": judge(op, target, med),
    }


def verdicts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure with a target, in table order: its median and whether the target is met."""
    return [
        {
            "figure": f"{scen}/{name}",
            "label": fig["label"],
            "median": fig["median"],
            "unit": fig["unit"],
            "target": fig["target"],
            "met": fig["pass"],
        }
        for scen, res in doc["scenarios"].items()
        for name, fig in res.get("figures", {}).items()
        if fig["pass"] is not None
    ]


def table(doc: dict[str, Any]) -> str:
    load = [" ".join(f"{x:.1f}" for x in doc[k]) for k in ("loadavg_start", "loadavg_end")]
    lines = [
        f"tracker-daemon bench {doc['version']}  python {doc['python']}  {doc['cpus']} CPUs  "
        f"repeat {doc['repeat']}  backend {doc['backend']}  {doc['elapsed_s']:.0f} s  "
        f"load avg 1/5/15 min: {load[0]} at start, {load[1]} at end",
        f"{'scenario':<11}{'figure':<46}{'min':>11}{'median':>11}{'max':>11}  {'unit':<10}"
        f"{'target':<10}result",
    ]
    for scen, res in doc["scenarios"].items():
        for f in res.get("figures", {}).values():
            verdict = {None: "", True: "PASS", False: "MISS"}[f["pass"]]
            lines.append(
                f"{scen:<11}{f['label']:<46}{fmt(f['min']):>11}{fmt(f['median']):>11}"
                f"{fmt(f['max']):>11}  {f['unit']:<10}{f['target'] or '-':<10}{verdict}"
            )
        checks = res.get("checks", [])
        if checks:
            ok = sum(c["ok"] for c in checks)
            kinds = ", ".join(sorted({f"{c['what']} ({c['method']})" for c in checks}))
            lines.append(f"{'':<11}committed == sent: {ok}/{len(checks)} checks OK: {kinds}")
        for note in res.get("notes", []):
            lines.append(f"{scen:<11}note: {note}")
        if res.get("skipped"):
            lines.append(f"{scen:<11}skipped: {res['skipped']}")
        if res.get("error"):
            lines.append(f"{scen:<11}ERROR: {res['error']}")
    targets = doc.get("targets", [])
    missed = [t for t in targets if not t["met"]]
    lines.append(
        f"targets (on the median): {len(targets) - len(missed)}/{len(targets)} met"
        + "".join(
            f"; MISSED {t['figure']} {fmt(t['median'])} {t['unit']} (target {t['target']})"
            for t in missed
        )
    )
    lines.append(
        "verdict: " + ("OK: every scenario ran, every count matched" if doc["ok"] else "FAILED")
    )
    return "\n".join(lines)
