"""The status reporter (pure): the document's keys from each component's own ``status()``, and
the health verdict over them. Real client table, journal, run service and supervisor; the
server's and the artifact lane's parts are given as plain sections (no socket here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.run_fakes import Wiring
from tracker_daemon.intake.clients import ClientTable, Peer
from tracker_daemon.journal.journal import Journal
from tracker_daemon.ops.status import Counters, StatusReporter
from tracker_daemon.ops.supervise import Supervisor

# every key of the status document (docs/operations.md, "Status, metrics and logs"; metrics.py
# reads them)
KEYS = {
    "version", "pid", "uptime_s", "healthy", "unhealthy_reasons", "health_stall_s", "backend",
    "artifact_root", "address", "auth", "auth_denied", "metrics_address", "durability", "limits",
    "limit_rejections", "clients", "client_id_in_use", "pid_watches", "pidfds", "open_runs",
    "frames", "duplicate_frames", "rejected_frames", "rejected_unanswered", "last_rejection",
    "received", "replayed", "committed", "failed", "dead_lettered", "orphaned_runs",
    "spools_imported", "queue_depth", "spilled", "artifacts_pending", "artifacts_retrying",
    "artifacts", "batches", "sink_retries", "sink_latency_ms", "fsyncs", "fsync_ms_avg",
    "mark_writes",
    "commit_rate", "last_sink_error", "last_sink_error_at", "last_sink_error_age_s",
    "oldest_uncommitted_age_s", "journal_max_bytes", "journal_full_rejections", "journal_bytes",
    "journal_segments", "journal_outstanding_entries", "journal_full", "journal_mark",
    "journal_head", "sink", "sql_fallbacks",
    "journal_segment_limit_bytes", "journal_appended_bytes", "disk_full", "disk_problems",
    "task_restarts", "task_failures", "last_task_error",
}  # fmt: skip


class Section:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def status(self) -> dict[str, Any]:
        return dict(self.doc)


def reporter(
    tmp_path: Path, oldest: list[float], disk: list[str]
) -> tuple[StatusReporter, Counters]:
    counters = Counters(started_at=1000.0)
    table = ClientTable(10)
    table.claim("c" * 32, Peer(b"x", uid=1, pid=7), 0.0)
    journal = Journal(tmp_path / "journal")
    journal.open()
    server = Section(
        {
            "auth": "none",
            "auth_denied": 0,
            "rejected_frames": 3,
            "rejected_unanswered": 0,
            "last_rejection": "",
        }
    )
    liveness = Section({"pid_watches": 1, "pidfds": 1})
    lane = Section({"artifacts_retrying": 0})
    rep = StatusReporter(
        {
            "health_stall_s": 60.0,
            "backend": "sqlite:///x.db",
            "artifact_root": "/a",
            "address": "ipc:///s",
            "durability": "fsync",
            "journal_max_bytes": 1 << 30,
        },
        counters,
        clients=table.status,
        sections=(
            Section({"sink": "sql: many runs per transaction"}),
            server,
            liveness,
            Wiring(tmp_path).runs,
            lane,
            journal,
            Supervisor(),
        ),
        pipeline=lambda now: {
            "queue_depth": 0,
            "spilled": False,
            "artifacts_pending": 0,
            "oldest_uncommitted_age_s": oldest[0],
        },
        limits={"max_frame_bytes": 1, "max_records_per_frame": 2},
        rejections=lambda: {"max_frame_bytes": 3},
        disk_problems=lambda: list(disk),
        disk_full=lambda: bool(disk),
        head=lambda: {"version": "9.9", "pid": 1, "metrics_address": ""},
    )
    return rep, counters


def test_the_document_has_every_key_and_no_other(tmp_path: Path) -> None:
    rep, counters = reporter(tmp_path, [0.0], [])
    doc = rep.document(5.0, 1010.0)
    assert set(doc) == KEYS
    assert doc["healthy"] and doc["unhealthy_reasons"] == [] and doc["uptime_s"] == 10.0
    assert doc["limit_rejections"]["max_frame_bytes"] == 3
    assert doc["limit_rejections"]["max_records_per_frame"] == 0
    assert doc["open_runs"] == 0 and doc["rejected_frames"] == 3
    assert [c["pid"] for c in doc["clients"]] == [7] and doc["clients"][0]["last_seen_s"] == 5.0


def test_health_over_the_parts(tmp_path: Path) -> None:
    oldest, disk = [0.0], ["cannot write runs.log: No space left on device"]
    rep, counters = reporter(tmp_path, oldest, disk)
    doc = rep.document(0.0, 2000.0)
    assert not doc["healthy"] and doc["disk_full"] and doc["disk_problems"] == disk
    assert doc["unhealthy_reasons"] == [f"disk_full: {disk[0]}"]
    disk.clear()
    counters.last_sink_error, counters.last_sink_error_at = "locked", 1990.0
    oldest[0] = 61.25  # older than health_stall_s while the sink is failing
    doc = rep.document(0.0, 2000.0)
    assert [r.split(":")[0] for r in doc["unhealthy_reasons"]] == ["sink_stalled"]
    assert doc["oldest_uncommitted_age_s"] == 61.25 and doc["last_sink_error_age_s"] == 10.0
    oldest[0] = 59.0
    assert rep.document(0.0, 2000.0)["healthy"]
