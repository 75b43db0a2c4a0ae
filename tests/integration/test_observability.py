"""Observability: ``tracker-daemon status`` (table, ``--json``, health exit codes), the Prometheus
endpoint, and the daemon's key=value log lines. Real daemon and worker processes, real MLflow
SQLite store; the health rule and formatting are also checked as plain functions."""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tracker_client
from tests.helpers import (
    REPO,
    daemon_env,
    finish_workers,
    running_daemon,
    sqlite_locked,
    start_worker,
    wait_for,
)
from tracker_daemon.cli import KeyValueFormatter
from tracker_daemon.status import Counters, format_status, health

pytestmark = pytest.mark.integration

TS0 = 1_700_000_000_000
STEPS = 20_000  # metric steps per worker (two keys each)
LOG_LINE = re.compile(r"^ts=\S+ level=[A-Z]+ logger=\S+ event=[a-z_]+( \S.*)?$")


def cli_status(address: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", "status", "--address", address, *extra],
        capture_output=True,
        text=True,
        env=daemon_env(env),
        cwd=REPO,
        timeout=120,
    )
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
# the health rule, commit rate and the table, as functions


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
    }
    text = format_status(s)
    for part in (
        "pid 42",
        "up 62m05s",
        "UNHEALTHY",
        "auth: curve",
        "127.0.0.1:9464",
        "clients             1",
        "open runs           2",
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


def test_formatter_makes_one_key_value_line_per_event() -> None:
    fmt = KeyValueFormatter()

    def line(msg: str, *args: Any, exc: bool = False) -> str:
        record = logging.LogRecord("mlflow.x", logging.WARNING, __file__, 1, msg, args, None)
        if exc:
            try:
                raise ValueError("bad\nthing")
            except ValueError:
                record.exc_info = sys.exc_info()
        return fmt.format(record)

    own = line("event=run_started run=%s", "abc")
    assert LOG_LINE.match(own) and own.endswith("logger=mlflow.x event=run_started run=abc")
    other = line("Creating initial MLflow database tables...\nsecond line")
    assert "\n" not in other and LOG_LINE.match(other)
    assert other.endswith(
        'event=log msg="Creating initial MLflow database tables...\\nsecond line"'
    )
    failed = line("event=boom path=%s", "a\nb", exc=True)
    assert "\n" not in failed and LOG_LINE.match(failed)
    assert "path=a\\nb" in failed and ' exc="Traceback' in failed and "ValueError: bad" in failed


# command-line tools print to their user; everything else runs inside the daemon
TOOLS = {"cli.py", "demo.py"}  # and the bench/ package, which this glob does not reach
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def test_daemon_modules_never_print_and_log_key_value_pairs() -> None:
    problems = []
    for path in sorted((REPO / "tracker_daemon").glob("*.py")):
        if path.name in TOOLS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.name}:{node.lineno}"
            if isinstance(node.func, ast.Name) and node.func.id == "print":
                problems.append(f"{where}: print()")
            if (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("log", "_log", "logger")
            ):
                first = node.args[0] if node.args else None
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    problems.append(f"{where}: log message is not a string literal")
                elif not re.match(r"event=[a-z_]+( [a-z_]+=\S+)*$", first.value):
                    problems.append(f"{where}: not key=value: {first.value!r}")
    assert problems == []


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

        log(100)
        run.flush()
        assert d.status()["healthy"] is True
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
            assert code == 1 and "UNHEALTHY" in table and "journal_full" in table
            code, out = cli_status(d.address, "--json")
            doc = json.loads(out)
            assert code == 1 and doc["healthy"] is False and doc["unhealthy_reasons"]
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

        run.end(timeout=120)  # everything, including what the full journal refused, commits
        healthy = wait_for(lambda: (s := d.status())["healthy"] and s, 60, "healthy again")
        assert healthy["journal_full"] == "" and healthy["committed"] == step
        assert cli_status(d.address)[0] == 0
        assert metric(scrape(metrics_at), "tracker_daemon_healthy") == 1
        t.close()


@pytest.mark.timeout(60)
def test_status_of_an_unreachable_daemon_exits_1(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/nobody.sock"
    code, out = cli_status(address, "--timeout", "0.5")
    assert code == 1 and "no status from tracker-daemon" in out
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker_daemon.cli",
            "status",
            "--address",
            address,
            "--json",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        env=daemon_env(),
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["healthy"] is False and doc["reachable"] is False
    assert doc["unhealthy_reasons"][0].startswith("unreachable: ")


@pytest.mark.timeout(120)
def test_metrics_port_in_use_refuses_to_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "tracker_daemon.cli",
                "run",
                "--state-dir",
                str(tmp_path / "state"),
                "--address",
                f"ipc://{tmp_path}/d.sock",
                "--metrics-address",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            env=daemon_env(),
            cwd=REPO,
            timeout=100,
        )
    assert res.returncode == 3, res.stderr
    assert f"metrics_address 127.0.0.1:{port} is already in use" in res.stderr
    assert not (tmp_path / "d.sock").exists()
