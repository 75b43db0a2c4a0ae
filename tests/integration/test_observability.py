"""Observability: ``tracker-daemon status`` (table, ``--json``, health exit codes), the Prometheus
endpoint, and the daemon's key=value log lines. Real daemon and worker processes, real MLflow
SQLite store. The health rule, the table and the log format as plain functions: tests/unit."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tracker_client
from tests.support.daemon import daemon_cli, running_daemon
from tests.support.logs import LOG_LINE
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tests.support.workers import finish_workers, start_worker

pytestmark = pytest.mark.integration

TS0 = 1_700_000_000_000
STEPS = 20_000  # metric steps per worker (two keys each)


def cli_status(address: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = daemon_cli("status", "--address", address, *extra, env=env)
    return res.returncode, res.stdout + res.stderr


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the daemon's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# --------------------------------------------------------------------------------------------
# a real daemon under load


@pytest.mark.timeout(300)
def test_status_and_metrics_under_load(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--metrics-address", "127.0.0.1:0") as d:
        first = d.status()
        metrics_at = first["metrics_address"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", metrics_at) and not metrics_at.endswith(":0")
        assert f"event=metrics_listening address={metrics_at}" in d.log()
        procs = []
        for i in range(3):
            spec = {
                "experiment": "observed",
                "run_name": f"w{i}",
                "keys": ["a", "b"],
                "steps": STEPS,
                "params": {"i": str(i)},
                "wait_stdin": True,
            }
            procs.append(start_worker(d.address, spec, tmp_path / f"w{i}.json"))
        for proc in procs:  # all start logging at once
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        seen: set[int] = set()
        during: dict[str, Any] = {}
        code, table = -1, ""
        while any(proc.poll() is None for proc in procs):
            s = d.status()
            seen |= {c["pid"] for c in s["clients"]}
            if len(s["clients"]) > len(during.get("clients", [])):
                during = s
            if code == -1 and s["received"] > s["committed"]:
                code, table = cli_status(d.address)  # the table while records are in flight
            time.sleep(0.05)
        finish_workers(procs, timeout=240)
        after = d.status()
        code_json, out = cli_status(d.address, "--json")
        samples = scrape(metrics_at)
        final = d.status()

    (tmp_path / "status-under-load.txt").write_text(table)
    # the status document during the load
    for key in (
        "uptime_s",
        "version",
        "backend",
        "sink",
        "sql_fallbacks",
        "open_runs",
        "received",
        "committed",
        "failed",
        "dead_lettered",
        "queue_depth",
        "journal_bytes",
        "oldest_uncommitted_age_s",
        "sink_latency_ms",
        "commit_rate",
        "last_sink_error",
        "healthy",
        "unhealthy_reasons",
        "limit_rejections",
        "limits",
    ):
        assert key in during, key
    assert seen == {p.pid for p in procs}
    assert all(c["runs"] >= 0 and c["last_seen_s"] >= 0 for c in during["clients"])
    assert during["healthy"] is True and during["unhealthy_reasons"] == []
    assert code == 0, table
    assert "healthy" in table and "commit rate" in table and "oldest uncommitted" in table
    # after: everything committed, all runs ended, the processes gone from the client list
    expected = 3 * (2 * STEPS + 1)
    assert after["committed"] == after["received"] == expected
    assert after["open_runs"] == 0 and after["queue_depth"] == 0
    assert after["oldest_uncommitted_age_s"] == 0.0
    assert after["commit_rate"] > 0  # measured over the last ~10 s, which saw the load
    assert after["sink_latency_ms"]["p50"] > 0 and after["sink_latency_ms"]["p99"] > 0
    assert after["sink_latency_ms"]["p99"] >= after["sink_latency_ms"]["p50"]
    doc = json.loads(out)
    assert code_json == 0 and doc["healthy"] is True and doc["reachable"] is True
    assert doc["committed"] == expected
    # Prometheus: the same figures (nothing was logged between the two reads)
    assert metric(samples, "tracker_daemon_records_committed_total") == final["committed"]
    assert metric(samples, "tracker_daemon_records_received_total") == final["received"]
    assert metric(samples, "tracker_daemon_records_failed_total") == final["failed"] == 0
    assert metric(samples, "tracker_daemon_records_dead_lettered_total") == 0
    assert metric(samples, "tracker_daemon_frames_total") == final["frames"]
    assert metric(samples, "tracker_daemon_batches_total") == final["batches"]
    assert metric(samples, "tracker_daemon_open_runs") == final["open_runs"] == 0
    assert metric(samples, "tracker_daemon_queue_depth") == 0
    assert metric(samples, "tracker_daemon_journal_bytes") == final["journal_bytes"]
    assert metric(samples, "tracker_daemon_oldest_uncommitted_age_seconds") == 0
    assert metric(samples, "tracker_daemon_healthy") == 1
    assert metric(samples, "tracker_daemon_journal_full") == 0
    assert metric(samples, "tracker_daemon_commit_rate_records_per_second") > 0
    for q, key in (("0.5", "p50"), ("0.99", "p99")):
        got = metric(samples, "tracker_daemon_sink_latency_seconds", quantile=q)
        assert got == pytest.approx(final["sink_latency_ms"][key] / 1000)
    for limit, value in final["limits"].items():
        assert metric(samples, "tracker_daemon_limit", limit=limit) == value
        assert metric(samples, "tracker_daemon_limit_rejections_total", limit=limit) == 0
    assert metric(samples, "tracker_daemon_uptime_seconds") > 0
    assert metric(samples, "process_resident_memory_bytes") > 0
    info = [k for k in samples if k[0] == "tracker_daemon_info"]
    assert dict(info[0][1])["version"] == final["version"]
    # the log: one key=value line per event, MLflow's own messages included
    lines = [line for line in d.log().splitlines() if line.strip()]
    assert lines and [line for line in lines if not LOG_LINE.match(line)] == []


@pytest.mark.timeout(240)
def test_unhealthy_while_the_journal_is_full_and_the_backend_stalls(tmp_path: Path) -> None:
    env = {
        "TRACKER_DAEMON_HEALTH_STALL_S": "2",
        "TRACKER_DAEMON_JOURNAL_SEGMENT_BYTES": "4096",
        "TRACKER_DAEMON_JOURNAL_MAX_BYTES": "65536",
    }
    with running_daemon(tmp_path, "--metrics-address", "127.0.0.1:0", env=env) as d:
        metrics_at = d.status()["metrics_address"]
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("stall")
        step = 0

        def log(n: int) -> None:
            nonlocal step
            for _ in range(n):
                run.log_metric("y", step * 0.5, step=step, timestamp=TS0 + step)
                step += 1

        log(10)
        run.flush()
        assert d.status()["healthy"] is True
        # The durable mark reaches the head, and the head's segment has room: the first entry
        # written while the database is locked goes into the same segment, so no committed segment
        # is left for the mark loop to reclaim during the lock (that would make room in the
        # journal, correctly clearing journal_full while the test looks at it).
        before = wait_for(
            lambda: (
                (s := d.status())["journal_outstanding_entries"] == 0
                and s["journal_mark"] == s["journal_head"]
                and s
            ),
            30,
            "the mark to reach the head",
        )
        assert int(before["journal_head"].split(":")[1]) < before["journal_segment_limit_bytes"]
        assert cli_status(d.address)[0] == 0

        with sqlite_locked(d.state_dir / "mlflow.db"):

            def full() -> dict[str, Any]:
                log(20)
                s = d.status()
                return s if s["journal_full"] else {}

            s = wait_for(full, 60, "the journal to fill up", interval=0.02)
            assert s["healthy"] is False
            assert s["unhealthy_reasons"][0].startswith("journal_full: ")
            code, table = cli_status(d.address)
            assert code == 1 and "UNHEALTHY" in table and "journal_full" in table, table
            code, out = cli_status(d.address, "--json")
            doc = json.loads(out)
            assert code == 1 and doc["healthy"] is False and doc["unhealthy_reasons"], out
            samples = scrape(metrics_at)
            assert metric(samples, "tracker_daemon_healthy") == 0
            assert metric(samples, "tracker_daemon_journal_full") == 1
            assert metric(samples, "tracker_daemon_journal_full_rejections_total") >= 1
            # MLflow's SQLite busy timeout is 20 s: then the sink reports "database is locked"
            stalled = wait_for(
                lambda: (s := d.status())["last_sink_error"] and s, 90, "a sink error"
            )
            assert any(r.startswith("sink_stalled: ") for r in stalled["unhealthy_reasons"])
            assert stalled["oldest_uncommitted_age_s"] > 2
            assert "database is locked" in stalled["last_sink_error"]
            assert (
                metric(scrape(metrics_at), "tracker_daemon_last_sink_error_timestamp_seconds") > 0
            )

        # everything, including what the full journal refused, commits (True: within the timeout)
        assert run.end(timeout=120) is True
        healthy = wait_for(lambda: (s := d.status())["healthy"] and s, 60, "healthy again")
        assert healthy["journal_full"] == "" and healthy["committed"] == step
        assert cli_status(d.address)[0] == 0
        assert metric(scrape(metrics_at), "tracker_daemon_healthy") == 1
        t.close()


@pytest.mark.timeout(60)
def test_status_of_an_unreachable_daemon_exits_1(tmp_path: Path) -> None:
    from tests.support.net import free_port

    # (a missing ipc socket is said at once: the next test; a tcp port waits for an answer)
    code, out = cli_status(f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert code == 1 and "no status from tracker-daemon" in out
    address = f"ipc://{tmp_path}/nobody.sock"
    res = daemon_cli("status", "--address", address, "--json", "--timeout", "0.5", timeout=60)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["healthy"] is False and doc["reachable"] is False
    assert doc["unhealthy_reasons"][0].startswith("unreachable: ")


@pytest.mark.timeout(60)
def test_status_without_a_socket_says_so_at_once(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    started = time.monotonic()
    code, out = cli_status(f"ipc://{sock}", "--timeout", "30")
    assert code == 1
    assert f"no tracker-daemon at ipc://{sock}: the socket {sock} does not exist" in out
    assert "Start it with `tracker-daemon run`" in out
    assert time.monotonic() - started < 15  # not the 30 s timeout (the rest: Python's start)


@pytest.mark.timeout(120)
def test_metrics_port_in_use_refuses_to_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = daemon_cli(
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            "--address",
            f"ipc://{tmp_path}/d.sock",
            "--metrics-address",
            f"127.0.0.1:{port}",
            timeout=100,
        )
    assert res.returncode == 3, res.stderr
    assert f"metrics_address 127.0.0.1:{port} is already in use" in res.stderr
    assert not (tmp_path / "d.sock").exists()
