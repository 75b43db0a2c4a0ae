"""CallStats (pure; the clock is passed in): calls, failures and latency per kind; one throttled
``call_failed`` log line per (client, method, code); its part of the status document, the
``tracker-daemon status`` line and the Prometheus families built from it."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.core import Metric

from tracker_daemon.ops.call_stats import CallStats
from tracker_daemon.ops.metrics import metric_families
from tracker_daemon.ops.status import format_status


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_and_latency_per_kind() -> None:
    stats = CallStats()
    assert stats.status() == {
        "calls": {
            "read": {"calls": 0, "failures": 0, "latency_ms": {"p50": 0.0, "p99": 0.0}},
            "write": {"calls": 0, "failures": 0, "latency_ms": {"p50": 0.0, "p99": 0.0}},
        }
    }
    for ms in range(1, 101):  # 1..100 ms
        stats.done("read", ms / 1000)
    stats.done("write", 0.004)
    stats.done("write", None)  # refused before it started: counted, not timed
    stats.failed("write", "c1", "set_experiment_tag", "REQUEST_LIMIT_EXCEEDED", "full")
    doc = stats.status()["calls"]
    assert doc["read"] == {"calls": 100, "failures": 0, "latency_ms": {"p50": 50.5, "p99": 100.0}}
    assert doc["write"] == {"calls": 2, "failures": 1, "latency_ms": {"p50": 4.0, "p99": 4.0}}
    assert stats.count("read") == (100, 0) and stats.count("write") == (2, 1)


def test_a_failed_call_is_one_throttled_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tracker_daemon.calls")
    clock = Clock()
    stats = CallStats(clock)
    for _ in range(5):  # a client repeating the same failing call: one line per 10 s
        stats.done("read", 0.001)
        stats.failed("read", "c1", "get_run", "RESOURCE_DOES_NOT_EXIST", "Run 'x' not found")
    stats.done("write", 0.001)
    stats.failed("write", "c1", "set_tag", "INVALID_PARAMETER_VALUE", "bad key")  # another key
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "event=call_failed kind=read method=get_run code=RESOURCE_DOES_NOT_EXIST "
        "reason=\"Run 'x' not found\" client=c1 suppressed=0",
        "event=call_failed kind=write method=set_tag code=INVALID_PARAMETER_VALUE "
        "reason='bad key' client=c1 suppressed=0",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    clock.now += 10.0
    stats.failed("read", "c1", "get_run", "RESOURCE_DOES_NOT_EXIST", "Run 'y' not found")
    assert caplog.records[-1].getMessage().endswith("suppressed=4")
    assert stats.count("read") == (5, 6)  # every failure counted, logged or not


def _samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_status_line_and_prometheus() -> None:
    stats = CallStats()
    for _ in range(3):
        stats.done("read", 0.002)
    stats.done("write", 0.010)
    stats.failed("write", "c1", "create_run", "INTERNAL_ERROR", "boom")
    doc = stats.status()
    text = format_status(doc)
    assert (
        "  calls               read 3 (0 failed, p50 2.0 ms p99 2.0 ms)  "
        "write 1 (1 failed, p50 10.0 ms p99 10.0 ms)"
    ) in text.splitlines()
    samples = _samples(list(metric_families(doc)))
    assert samples[("tracker_daemon_calls_total", (("kind", "read"),))] == 3
    assert samples[("tracker_daemon_calls_total", (("kind", "write"),))] == 1
    assert samples[("tracker_daemon_call_failures_total", (("kind", "read"),))] == 0
    assert samples[("tracker_daemon_call_failures_total", (("kind", "write"),))] == 1
    key = ("tracker_daemon_call_latency_seconds", (("kind", "write"), ("quantile", "0.99")))
    assert samples[key] == pytest.approx(0.010)
