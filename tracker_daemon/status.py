"""Counters the daemon keeps, its health rule, and the status document built from them
(``tracker-daemon status``, the Prometheus endpoint).

Health (``healthy`` / ``unhealthy_reasons`` in the status document; ``tracker-daemon status`` exits
1 when unhealthy or unreachable). The daemon is unhealthy when any holds:

* ``journal_full``: the journal refused the most recent frame it was offered (``journal_max_bytes``
  reached, or the disk is full) and has not accepted one since. Clients keep the refused data and
  offer it again every second, so this clears by itself once there is room.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LIMIT_KINDS", "RATE_WINDOW_S", "Counters", "format_status", "health"]

# status["limit_rejections"] keys: the config key of each limit
LIMIT_KINDS = (
    "max_frame_bytes",
    "max_records_per_frame",
    "max_open_runs_per_client",
    "max_clients",
    "max_clients_per_process",
    "client_id_in_use",
)
RATE_WINDOW_S = 10.0  # commit_rate is measured over about this many seconds
CLIENT_ROWS = 50  # at most this many clients in the human-readable table


@dataclass(slots=True)
class Counters:
    started_at: float = field(default_factory=time.time)
    frames: int = 0
    duplicate_frames: int = 0
    received: int = 0
    committed: int = 0
    failed: int = 0
    batches: int = 0
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
        ("address", f"{s.get('address')}  (auth: {s.get('auth', 'none')})"),
        ("metrics", s.get("metrics_address") or "off"),
        ("clients", len(clients)),
        ("open runs", s.get("open_runs")),
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
