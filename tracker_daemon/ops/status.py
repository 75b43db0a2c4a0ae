"""Counters the daemon keeps, its health rule, and the status document built from them
(``tracker-daemon status``, the Prometheus endpoint).

Health (``healthy`` / ``unhealthy_reasons`` in the status document; ``tracker-daemon status`` exits
1 when unhealthy or unreachable). The daemon is unhealthy when any holds:

* ``journal_full``: the journal refused a frame (``journal_max_bytes`` reached, or the disk is full)
  and there is still no room for it: a smaller frame accepted meanwhile does not clear it, an
  accepted write after a disk error does. Clients keep the refused data and offer it again every
  second, so this clears by itself once there is room.
* ``sink_stalled``: the MLflow backend is failing — a sink error happened within the last
  ``health_stall_s`` seconds, or no write has succeeded since the last one — **and** the oldest
  journal entry not yet committed was written more than ``health_stall_s`` seconds ago. A failure
  that the daemon gets past (a rejected record, a retry that then succeeds) does not make it
  unhealthy; data that stays uncommitted because the backend keeps failing does.
* ``disk_full``: the daemon cannot write one of its own files (the journal's ``mark.json``, its
  fsync, ``runs.log``, the pid in ``daemon.lock``) for lack of space or an I/O error. It keeps
  serving from memory and writes them again by itself once there is room.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

__all__ = [
    "LIMIT_KINDS",
    "RATE_WINDOW_S",
    "Counters",
    "Section",
    "StatusReporter",
    "format_status",
    "health",
]

# status["limit_rejections"] keys: the config key of each limit
LIMIT_KINDS = (
    "max_frame_bytes",
    "max_records_per_frame",
    "max_open_runs_per_client",
    "max_clients",
    "max_clients_per_process",
    "client_id_in_use",
    "max_requests_per_client",
    "max_requests",
)
RATE_WINDOW_S = 10.0  # commit_rate is measured over about this many seconds
RATE_SAMPLE_S = 1.0  # how often the committed count is sampled for commit_rate
CLIENT_ROWS = 50  # at most this many clients in the human-readable table


@dataclass(slots=True)
class Counters:
    started_at: float = field(default_factory=time.time)
    frames: int = 0
    duplicate_frames: int = 0
    received: int = 0
    committed: int = 0
    failed: int = 0
    batches: int = 0  # sink commits: log_batch calls, or SQL transactions
    sql_fallbacks: int = 0  # SQL transactions the database refused, then committed by log_batch
    sink_retries: int = 0
    artifacts: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    orphaned_runs: int = 0
    spills: int = 0
    spools_imported: int = 0
    journal_full_rejections: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    mark_writes: int = 0  # journal marks written (each fsyncs the journal and the mark file)
    last_sink_error: str = ""
    last_sink_error_at: float = 0.0  # time.time() of the last sink error, 0 if none
    last_sink_ok_at: float = 0.0  # time.time() of the last successful sink write
    sink_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    limit_rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LIMIT_KINDS, 0))
    # (monotonic time, committed) once a second, for commit_rate
    rate_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=32))

    def sink_latency_ms(self) -> dict[str, float]:
        lat = sorted(self.sink_latencies)
        if not lat:
            return {"p50": 0.0, "p99": 0.0}
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return {"p50": round(statistics.median(lat) * 1000, 3), "p99": round(p99 * 1000, 3)}

    def sample_rate(self, now: float) -> None:
        self.rate_samples.append((now, self.committed))

    async def sample_rates(self, period: float = RATE_SAMPLE_S) -> None:
        """Sample the committed count every ``period`` s, for ``commit_rate`` (a loop)."""
        while True:
            self.sample_rate(time.monotonic())
            await anyio.sleep(period)

    def commit_rate(self, now: float) -> float:
        """Records committed per second over the last ~RATE_WINDOW_S (from the samples)."""
        oldest = next((s for s in self.rate_samples if s[0] >= now - RATE_WINDOW_S - 0.5), None)
        if oldest is None or now - oldest[0] < 0.2:
            return 0.0
        return round((self.committed - oldest[1]) / (now - oldest[0]), 1)

    def sink_error_age(self, now_wall: float) -> float | None:
        return None if not self.last_sink_error_at else max(0.0, now_wall - self.last_sink_error_at)

    @property
    def sink_failing_now(self) -> bool:
        """The most recent sink outcome was an error (no successful write since)."""
        return self.last_sink_error_at > self.last_sink_ok_at

    def status(self, now: float, now_wall: float) -> dict[str, Any]:
        """The counters' part of the status document (``now``: monotonic, ``now_wall``: wall)."""
        error_age = self.sink_error_age(now_wall)
        return {
            "uptime_s": round(now_wall - self.started_at, 3),
            "frames": self.frames,
            "duplicate_frames": self.duplicate_frames,
            "received": self.received,
            "replayed": self.replayed,
            "committed": self.committed,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "orphaned_runs": self.orphaned_runs,
            "spools_imported": self.spools_imported,
            "artifacts": self.artifacts,
            "batches": self.batches,
            "sql_fallbacks": self.sql_fallbacks,
            "sink_retries": self.sink_retries,
            "sink_latency_ms": self.sink_latency_ms(),
            "fsyncs": self.fsyncs,
            "fsync_ms_avg": (
                round(self.fsync_seconds / self.fsyncs * 1000, 3) if self.fsyncs else 0.0
            ),
            "mark_writes": self.mark_writes,
            "commit_rate": self.commit_rate(now),
            "last_sink_error": self.last_sink_error,
            "last_sink_error_at": round(self.last_sink_error_at, 3),
            "last_sink_error_age_s": None if error_age is None else round(error_age, 3),
            "journal_full_rejections": self.journal_full_rejections,
        }


def health(
    *,
    journal_full: str,
    disk_problems: Sequence[str] = (),
    sink_error_age_s: float | None,
    sink_failing_now: bool,
    last_sink_error: str,
    oldest_uncommitted_age_s: float,
    stall_s: float,
) -> list[str]:
    """The reasons the daemon is unhealthy (empty: healthy). See the module docstring."""
    reasons = []
    if journal_full:
        reasons.append(f"journal_full: the journal refuses new data: {journal_full}")
    reasons += [f"disk_full: {problem}" for problem in disk_problems]
    failing = sink_error_age_s is not None and (sink_error_age_s <= stall_s or sink_failing_now)
    if failing and oldest_uncommitted_age_s > stall_s:
        assert sink_error_age_s is not None
        reasons.append(
            f"sink_stalled: the MLflow backend is failing (last error {sink_error_age_s:.0f} s "
            f"ago: {last_sink_error[:200]}) and the oldest uncommitted record was written "
            f"{oldest_uncommitted_age_s:.0f} s ago (health_stall_s = {stall_s:g})"
        )
    return reasons


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _calls(calls: dict[str, Any]) -> str:
    """One line for the ``calls`` section (call_stats.py): per kind, calls, failures, latency."""
    parts = []
    for kind in ("read", "write"):
        k = calls.get(kind, {})
        lat = k.get("latency_ms", {})
        parts.append(
            f"{kind} {k.get('calls', 0)} ({k.get('failures', 0)} failed, "
            f"p50 {lat.get('p50', 0.0)} ms p99 {lat.get('p99', 0.0)} ms)"
        )
    return "  ".join(parts)


def format_status(s: dict[str, Any]) -> str:
    """A human-readable table of a status document."""
    lat = s.get("sink_latency_ms", {})
    err_age = s.get("last_sink_error_age_s")
    last_error = (
        f"{s.get('last_sink_error')}  ({err_age:.0f} s ago)"
        if s.get("last_sink_error") and err_age is not None
        else "-"
    )
    hits = {k: v for k, v in s.get("limit_rejections", {}).items() if v}
    limits = ", ".join(f"{k} {v}" for k, v in hits.items()) or "none"
    clients = s.get("clients", [])
    health_word = "healthy" if s.get("healthy", True) else "UNHEALTHY"
    rows = [
        ("backend", s.get("backend")),
        ("sink", s.get("sink", "-")),
        ("address", f"{s.get('address')}  (auth: {s.get('auth', 'none')})"),
        ("metrics", s.get("metrics_address") or "off"),
        ("clients", len(clients)),
        ("open runs", f"{s.get('open_runs')}  (ends held {s.get('ends_pending', 0)})"),
        ("received", s.get("received")),
        ("committed", s.get("committed")),
        ("failed", f"{s.get('failed')}  (dead-lettered {s.get('dead_lettered')})"),
        ("queue depth", s.get("queue_depth")),
        ("commit rate", f"{s.get('commit_rate', 0.0):.1f} records/s (last {RATE_WINDOW_S:g} s)"),
        (
            "sink latency",
            f"p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms  "
            f"({s.get('batches')} batches, {s.get('sink_retries')} retries)",
        ),
        ("calls", _calls(s.get("calls", {}))),
        (
            "journal",
            f"{_bytes(s.get('journal_bytes', 0))} in {s.get('journal_segments')} segment(s), "
            f"{s.get('journal_outstanding_entries')} uncommitted entries",
        ),
        ("oldest uncommitted", f"{s.get('oldest_uncommitted_age_s', 0.0):.1f} s ago"),
        ("last error", last_error),
        ("rejected frames", s.get("rejected_frames")),
        ("limits hit", limits),
    ]
    if s.get("journal_full"):
        rows.append(("journal full", s["journal_full"]))
    if s.get("task_restarts") or s.get("task_failures"):
        rows.append(
            (
                "task failures",
                f"{s.get('task_restarts')} loop restarts, {s.get('task_failures')} requests "
                f"dropped; last: {s.get('last_task_error')}",
            )
        )
    rows += [("unhealthy", reason) for reason in s.get("unhealthy_reasons", [])]
    lines = [
        f"tracker-daemon {s.get('version', '?')}  pid {s.get('pid')}  "
        f"up {_duration(s.get('uptime_s', 0))}  {health_word}",
        *(f"  {label:<19} {value}" for label, value in rows),
    ]
    if clients:
        lines.append(f"  {'PID':>8}  {'RUNS':>5}  {'LAST SEEN':>9}  {'HOST':<20} CLIENT")
        for c in clients[:CLIENT_ROWS]:
            lines.append(
                f"  {c['pid']:>8}  {c['runs']:>5}  {c['last_seen_s']:>7.1f} s  "
                f"{c['host'][:20]:<20} {c['client_id'][:12]}"
            )
        if len(clients) > CLIENT_ROWS:
            lines.append(f"  ... and {len(clients) - CLIENT_ROWS} more (see --json)")
    return "\n".join(lines)


class Section(Protocol):
    """A component that reports its own part of the status document."""

    def status(self) -> dict[str, Any]: ...


class StatusReporter:
    """Builds the status document from each component's own ``status()`` (the keys are listed
    in docs/operations.md, "Status, metrics and logs"), and the health verdict over them."""

    def __init__(
        self,
        static: dict[str, Any],
        counters: Counters,
        *,
        clients: Callable[[float], dict[str, Any]],
        sections: Sequence[Section],
        pipeline: Callable[[float], dict[str, Any]],
        limits: dict[str, int],
        rejections: Callable[[], dict[str, int]],
        disk_problems: Callable[[], list[str]],
        disk_full: Callable[[], bool],
        head: Callable[[], dict[str, Any]],
    ) -> None:
        self.static = static  # configuration: backend, address, health_stall_s, ...
        self.counters = counters
        self._clients = clients  # the client table's part, at a monotonic time
        self._sections = sections  # server, liveness, runs, artifacts, journal, supervisor
        self._pipeline = pipeline  # queue_depth, spilled, artifacts_pending, oldest age
        self.limits = limits
        self._rejections = rejections  # limit_rejections the counters do not hold
        self._disk_problems = disk_problems
        self._disk_full = disk_full
        self._head = head  # version, pid, metrics_address

    def document(self, now: float, now_wall: float) -> dict[str, Any]:
        c = self.counters
        doc: dict[str, Any] = {**self._head(), **self.static}
        doc["limits"] = dict(self.limits)
        doc["limit_rejections"] = {**c.limit_rejections, **self._rejections()}
        doc.update(self._clients(now))
        doc.update(c.status(now, now_wall))
        doc.update(self._pipeline(now))
        for section in self._sections:
            doc.update(section.status())
        problems = self._disk_problems()
        oldest = doc["oldest_uncommitted_age_s"]
        reasons = health(
            journal_full=doc["journal_full"],
            disk_problems=problems,
            sink_error_age_s=c.sink_error_age(now_wall),
            sink_failing_now=c.sink_failing_now,
            last_sink_error=c.last_sink_error,
            oldest_uncommitted_age_s=oldest,
            stall_s=self.static["health_stall_s"],
        )
        doc["oldest_uncommitted_age_s"] = round(oldest, 3)
        doc["disk_full"] = self._disk_full()
        doc["disk_problems"] = sorted(problems)
        doc["healthy"] = not reasons
        doc["unhealthy_reasons"] = reasons
        return doc
