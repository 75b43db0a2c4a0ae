"""Counters the daemon keeps and the status document built from them (``tracker-daemon status``)."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counters", "format_status"]


@dataclass(slots=True)
class Counters:
    started_at: float = field(default_factory=time.time)
    frames: int = 0
    duplicate_frames: int = 0
    rejected_frames: int = 0
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
    last_sink_error_at: float = 0.0
    sink_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def sink_latency_ms(self) -> dict[str, float]:
        lat = sorted(self.sink_latencies)
        if not lat:
            return {"p50": 0.0, "p99": 0.0}
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return {"p50": round(statistics.median(lat) * 1000, 3), "p99": round(p99 * 1000, 3)}


def format_status(s: dict[str, Any]) -> str:
    """A human-readable table of a status document."""
    lines = [
        f"tracker-daemon {s.get('version', '?')}  up {s.get('uptime_s', 0):.0f} s  pid {s.get('pid')}",
        f"  backend        {s.get('backend')}",
        f"  address        {s.get('address')}",
        f"  clients        {len(s.get('clients', []))}",
        f"  open runs      {s.get('open_runs')}",
        f"  received       {s.get('received')}",
        f"  committed      {s.get('committed')}",
        f"  failed         {s.get('failed')}",
        f"  rejected       {s.get('rejected_frames')} frame(s)",
        f"  queue depth    {s.get('queue_depth')}",
        f"  batches        {s.get('batches')}  (sink p50 {s.get('sink_latency_ms', {}).get('p50')} ms,"
        f" p99 {s.get('sink_latency_ms', {}).get('p99')} ms)",
        f"  last error     {s.get('last_sink_error') or '-'}",
    ]
    for c in s.get("clients", []):
        lines.append(
            f"    client {c['client_id'][:8]} pid {c['pid']} host {c['host']}"
            f" runs {c['runs']} last seen {c['last_seen_s']:.1f} s ago"
        )
    return "\n".join(lines)
