"""The status document as plain functions: the health rule, the commit rate and the
human-readable table of ``tracker-daemon status``."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from tracker_daemon.ops.status import Counters, format_status, health


@pytest.mark.parametrize(
    ("kw", "reasons"),
    [
        ({}, []),
        ({"journal_full": "journal holds 9 bytes"}, ["journal_full"]),
        # an error long ago, everything committed since: healthy
        ({"sink_error_age_s": 300.0}, []),
        # a recent error but no backlog (a rejected record, a retry that worked): healthy
        ({"sink_error_age_s": 5.0, "oldest_uncommitted_age_s": 10.0}, []),
        # a backlog without errors (a slow backend): healthy
        ({"oldest_uncommitted_age_s": 500.0}, []),
        ({"sink_error_age_s": 5.0, "oldest_uncommitted_age_s": 61.0}, ["sink_stalled"]),
        # the error is older than the window, but no write has succeeded since: still failing
        (
            {"sink_error_age_s": 90.0, "sink_failing_now": True, "oldest_uncommitted_age_s": 61.0},
            ["sink_stalled"],
        ),
        (
            {"sink_error_age_s": 90.0, "sink_failing_now": False, "oldest_uncommitted_age_s": 99.0},
            [],
        ),
        (
            {
                "journal_full": "disk full",
                "sink_error_age_s": 1.0,
                "oldest_uncommitted_age_s": 70.0,
            },
            ["journal_full", "sink_stalled"],
        ),
    ],
)
def test_health_rule(kw: dict[str, Any], reasons: list[str]) -> None:
    args: dict[str, Any] = {
        "journal_full": "",
        "sink_error_age_s": None,
        "sink_failing_now": False,
        "last_sink_error": "TEMPORARILY_UNAVAILABLE: database is locked",
        "oldest_uncommitted_age_s": 0.0,
        "stall_s": 60.0,
    }
    args.update(kw)
    got = health(**args)
    assert [r.split(":", 1)[0] for r in got] == reasons
    if "sink_stalled" in reasons:
        assert "database is locked" in got[-1] and "health_stall_s = 60" in got[-1]


def test_commit_rate_over_the_last_ten_seconds() -> None:
    c = Counters()
    assert c.commit_rate(100.0) == 0.0
    c.rate_samples = deque([(float(t), 0) for t in range(80, 90)], maxlen=32)
    for t in range(90, 101):  # 1,000 records/s from t=90 on
        c.committed = (t - 90) * 1000
        c.sample_rate(float(t))
    assert c.commit_rate(100.0) == pytest.approx(1000.0)
    assert c.commit_rate(115.0) == 0.0  # no sample within the window: nothing recent


def test_table_shows_every_figure() -> None:
    s = {
        "version": "0.1.0",
        "pid": 42,
        "uptime_s": 3725.0,
        "healthy": False,
        "unhealthy_reasons": ["journal_full: the journal refuses new data: x"],
        "backend": "sqlite:///db",
        "address": "ipc:///s",
        "auth": "curve",
        "metrics_address": "127.0.0.1:9464",
        "clients": [{"client_id": "c" * 32, "pid": 7, "host": "h", "runs": 2, "last_seen_s": 1.5}],
        "open_runs": 2,
        "received": 10,
        "committed": 8,
        "failed": 1,
        "dead_lettered": 1,
        "queue_depth": 1,
        "commit_rate": 12.5,
        "batches": 3,
        "sink_retries": 4,
        "sink_latency_ms": {"p50": 1.5, "p99": 9.0},
        "journal_bytes": 2048,
        "journal_segments": 1,
        "journal_outstanding_entries": 2,
        "oldest_uncommitted_age_s": 3.25,
        "last_sink_error": "TEMPORARILY_UNAVAILABLE: locked",
        "last_sink_error_age_s": 12.0,
        "rejected_frames": 0,
        "limit_rejections": {"max_clients": 3, "max_frame_bytes": 0},
        "journal_full": "x",
        "ends_pending": 1,
    }
    text = format_status(s)
    for part in (
        "pid 42",
        "up 62m05s",
        "UNHEALTHY",
        "auth: curve",
        "127.0.0.1:9464",
        "clients             1",
        "open runs           2  (ends held 1)",
        "received            10",
        "committed           8",
        "failed              1  (dead-lettered 1)",
        "queue depth         1",
        "12.5 records/s",
        "p50 1.5 ms  p99 9.0 ms",
        "2.0 KiB",
        "2 uncommitted entries",
        "3.2 s ago",
        "TEMPORARILY_UNAVAILABLE: locked  (12 s ago)",
        "max_clients 3",
        "unhealthy           journal_full",
        "       7      2      1.5 s  h",
    ):
        assert part in text, (part, text)
