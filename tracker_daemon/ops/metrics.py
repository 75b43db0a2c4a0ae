"""Prometheus metrics (``metrics_address``, off by default): the figures of the status document.

A custom collector builds every metric from one status document per scrape, so the endpoint and
``tracker-daemon status`` always agree. The HTTP server is prometheus_client's own, in a thread;
the status document is built on the daemon's event loop (``get_status`` crosses over), never by
the HTTP thread reading the daemon's state while the loop changes it. The address is not
restricted: bind it to loopback, or protect the port, if the figures (backend URI without its
password, client pids and hosts) should not be public.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..errors import AlreadyRunning, ConfigError

__all__ = ["MetricsServer", "StatusCollector", "metric_families"]

PREFIX = "tracker_daemon_"

# (metric name without prefix and _total, status key, help)
COUNTERS = (
    ("records_received", "received", "Records accepted from clients (journaled)."),
    ("records_committed", "committed", "Records committed to the MLflow backend."),
    ("records_failed", "failed", "Records the backend refused (reported to their client)."),
    ("records_dead_lettered", "dead_lettered", "Failed records written to deadletter.jsonl."),
    ("records_replayed", "replayed", "Records found in the journal at start and replayed."),
    ("frames", "frames", "Sequenced frames (data, artifact) received."),
    ("duplicate_frames", "duplicate_frames", "Resent frames the daemon already had."),
    ("rejected_frames", "rejected_frames", "Frames refused because they could not be decoded."),
    (
        "peers_dropped",
        "peers_dropped",
        "Connections dropped for not reading their replies (a full reply queue).",
    ),
    ("dropped_frames", "dropped_frames", "Frames of dropped connections, dropped unread."),
    ("batches", "batches", "Backend commits that succeeded (SQL transactions or log_batch calls)."),
    (
        "sql_fallbacks",
        "sql_fallbacks",
        "SQL transactions the database refused as a whole, then committed with log_batch.",
    ),
    ("sink_retries", "sink_retries", "Retries of backend writes after transient errors."),
    ("artifacts", "artifacts", "Artifacts uploaded."),
    ("orphaned_runs", "orphaned_runs", "Runs ended by the daemon because their process died."),
    ("ends_applied", "ends_applied", "end_run requests applied (status set) since the start."),
    ("spools_imported", "spools_imported", "Spool files of dead clients imported."),
    ("fsyncs", "fsyncs", "Journal fsyncs."),
    ("mark_writes", "mark_writes", "Journal marks written (each with its fsyncs)."),
    (
        "journal_full_rejections",
        "journal_full_rejections",
        "Frames refused because the journal was full.",
    ),
    ("auth_denied", "auth_denied", "CURVE connections refused: client key not allowed."),
    ("task_restarts", "task_restarts", "Background loops restarted after an unexpected error."),
    ("task_failures", "task_failures", "Request tasks dropped after an unexpected error."),
)
# (metric name without prefix, status key, help)
GAUGES = (
    ("uptime_seconds", "uptime_s", "Seconds since the daemon started."),
    ("open_runs", "open_runs", "Runs started through the daemon and not yet ended."),
    (
        "ends_pending",
        "ends_pending",
        "end_run requests held (journaled), waiting for their run's records to be committed.",
    ),
    ("queue_depth", "queue_depth", "Records buffered in memory, waiting for the backend."),
    (
        "requests_in_progress",
        "requests_in_progress",
        "start_run/end_run/flush/call requests received and not answered yet.",
    ),
    ("artifacts_pending", "artifacts_pending", "Artifacts waiting to be uploaded."),
    (
        "artifacts_retrying",
        "artifacts_retrying",
        "Artifacts waiting to retry an upload after a retryable failure (at most 5 minutes).",
    ),
    ("journal_bytes", "journal_bytes", "Bytes in the journal's segment files."),
    ("journal_max_bytes", "journal_max_bytes", "The journal's size limit (journal_max_bytes)."),
    ("journal_segments", "journal_segments", "Journal segment files."),
    (
        "disk_full",
        "disk_full",
        "1 while the daemon cannot write its own files (journal, mark, runs.log): disk full.",
    ),
    (
        "journal_uncommitted_entries",
        "journal_outstanding_entries",
        "Journal entries (frames) not yet fully committed.",
    ),
    (
        "oldest_uncommitted_age_seconds",
        "oldest_uncommitted_age_s",
        "Seconds since the oldest journal entry that is not yet committed was written.",
    ),
    (
        "commit_rate_records_per_second",
        "commit_rate",
        "Records committed per second over the last ~10 s.",
    ),
    (
        "last_sink_error_timestamp_seconds",
        "last_sink_error_at",
        "Unix time of the last backend error (0: none since start).",
    ),
)


def metric_families(s: dict[str, Any]) -> Iterator[Metric]:
    """Prometheus metric families for one status document."""
    info = GaugeMetricFamily(
        PREFIX + "info",
        "The daemon's version, backend, address and authentication (value 1).",
        labels=["version", "backend", "address", "auth"],
    )
    info.add_metric(
        [str(s.get("version")), str(s.get("backend")), str(s.get("address")), str(s.get("auth"))],
        1,
    )
    yield info
    yield GaugeMetricFamily(
        PREFIX + "healthy",
        "1 when healthy, 0 when not (see unhealthy_reasons in `tracker-daemon status`).",
        value=1 if s.get("healthy") else 0,
    )
    yield GaugeMetricFamily(
        PREFIX + "journal_full",
        "1 while the journal refuses new data (full or disk full).",
        value=1 if s.get("journal_full") else 0,
    )
    yield GaugeMetricFamily(
        PREFIX + "clients", "Clients known to the daemon.", value=len(s.get("clients", []))
    )
    for name, key, doc in COUNTERS:
        yield CounterMetricFamily(PREFIX + name, doc, value=float(s.get(key) or 0))
    for name, key, doc in GAUGES:
        yield GaugeMetricFamily(PREFIX + name, doc, value=float(s.get(key) or 0))
    latency = GaugeMetricFamily(
        PREFIX + "sink_latency_seconds",
        "Latency of log_batch calls over the last 2048 batches, by quantile.",
        labels=["quantile"],
    )
    lat = s.get("sink_latency_ms", {})
    latency.add_metric(["0.5"], float(lat.get("p50", 0.0)) / 1000)
    latency.add_metric(["0.99"], float(lat.get("p99", 0.0)) / 1000)
    yield latency
    yield from _call_families(s.get("calls", {}))
    rejections = CounterMetricFamily(
        PREFIX + "limit_rejections",
        "Messages refused because a limit was reached, by limit (its config key).",
        labels=["limit"],
    )
    for limit, n in sorted(s.get("limit_rejections", {}).items()):
        rejections.add_metric([limit], float(n))
    yield rejections
    limits = GaugeMetricFamily(
        PREFIX + "limit", "The configured limits, by config key.", labels=["limit"]
    )
    for limit, n in sorted(s.get("limits", {}).items()):
        limits.add_metric([limit], float(n))
    yield limits


def _call_families(calls: dict[str, Any]) -> Iterator[Metric]:
    """The ``calls`` section (call_stats.py): plugin store calls by kind (read / write)."""
    total = CounterMetricFamily(
        PREFIX + "calls", "Store calls of the tracker:// plugin answered, by kind.", labels=["kind"]
    )
    failures = CounterMetricFamily(
        PREFIX + "call_failures",
        "Store calls of the tracker:// plugin answered with an error, by kind.",
        labels=["kind"],
    )
    latency = GaugeMetricFamily(
        PREFIX + "call_latency_seconds",
        "Latency of the last 2048 store calls of each kind (barrier included), by quantile.",
        labels=["kind", "quantile"],
    )
    for kind, k in sorted(calls.items()):
        total.add_metric([kind], float(k.get("calls", 0)))
        failures.add_metric([kind], float(k.get("failures", 0)))
        lat = k.get("latency_ms", {})
        latency.add_metric([kind, "0.5"], float(lat.get("p50", 0.0)) / 1000)
        latency.add_metric([kind, "0.99"], float(lat.get("p99", 0.0)) / 1000)
    yield total
    yield failures
    yield latency


class StatusCollector(Collector):
    """Builds the metrics from ``get_status()`` on every scrape."""

    def __init__(self, get_status: Callable[[], dict[str, Any]]) -> None:
        self.get_status = get_status

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.get_status())


class MetricsServer:
    """prometheus_client's HTTP server in a daemon thread, on its own registry (our collector
    and the process collector: CPU, memory, open fds)."""

    def __init__(self, host: str, port: int, get_status: Callable[[], dict[str, Any]]) -> None:
        registry = CollectorRegistry()
        registry.register(StatusCollector(get_status))
        ProcessCollector(registry=registry)
        shown = f"[{host}]" if ":" in host else host
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyRunning(
                    f"metrics_address {shown}:{port} is already in use by another process"
                ) from None
            raise ConfigError(
                f"metrics_address = '{shown}:{port}': cannot listen there: {exc.strerror or exc}"
            ) from None
        self.address = f"{shown}:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5.0)
