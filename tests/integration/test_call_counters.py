"""Store calls of the ``tracker://`` plugin are visible: an unmodified MLflow script (traced
functions, reads, two calls that fail) moves the daemon's call counters — status document,
``tracker-daemon status`` (table and ``--json``) and Prometheus — by exactly the calls it made, per
kind; each failed call is a ``call_failed`` log line and a failure in its kind's counter."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_observability import cli_status, metric, scrape
from tests.support.daemon import daemon_env, running_daemon
from tracker_daemon.store.calls import StoreCalls

pytestmark = pytest.mark.integration

TRACES = 150  # each: start_trace + log_spans (two writes)
READS = 900  # get_experiment

WORKER = """
import collections, json, sys
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
import tracker_client.mlflow.store as store

made = collections.Counter()  # every store call the plugin sends to the daemon, by method
_real = store._call

def counting(tracker, target, method, args, kwargs):
    made[method] += 1
    return _real(tracker, target, method, args, kwargs)

store._call = counting
traces, reads = int(sys.argv[1]), int(sys.argv[2])
exp_id = mlflow.set_experiment("calls").experiment_id

@mlflow.trace
def step(x):
    return x + 1

for i in range(traces):
    step(i)
client = MlflowClient()
for _ in range(reads):
    client.get_experiment(exp_id)
failed = []
for fn, args in ((client.get_run, ("f" * 32,)), (client.set_experiment_tag, ("987654", "k", "v"))):
    try:
        fn(*args)
    except MlflowException as exc:
        failed.append([fn.__name__, exc.error_code])
print(json.dumps({"made": made, "failed": failed}))
"""


def by_kind(made: dict[str, int]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for method, n in made.items():
        kinds["read" if StoreCalls.is_read(method) else "write"] += n
    return {"read": kinds["read"], "write": kinds["write"]}


@pytest.mark.timeout(180)
def test_plugin_calls_move_the_counters_by_exactly_the_calls_made(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--metrics-address", "127.0.0.1:0") as d:
        before = d.status()
        assert {k: v["calls"] for k, v in before["calls"].items()} == {"read": 0, "write": 0}
        worker = tmp_path / "worker.py"
        worker.write_text(WORKER)
        uri = "tracker://" + d.address.removeprefix("ipc://")
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        proc = subprocess.run(
            [sys.executable, str(worker), str(TRACES), str(READS)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=150,
            env=daemon_env(
                {
                    "MLFLOW_TRACKING_URI": uri,
                    "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",  # every export before exit
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                }
            ),
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        made = out["made"]
        assert made["start_trace"] == made["log_spans"] == TRACES
        assert made["get_experiment"] == READS + 1  # (one by set_experiment)
        assert out["failed"] == [
            ["get_run", "RESOURCE_DOES_NOT_EXIST"],
            ["set_experiment_tag", "RESOURCE_DOES_NOT_EXIST"],
        ]
        expected = by_kind(made)
        assert sum(expected.values()) >= 2 * TRACES + READS + 2

        # the status document: every call counted once, by kind; the two failures
        doc = d.status()["calls"]
        assert {k: v["calls"] for k, v in doc.items()} == expected
        assert {k: v["failures"] for k, v in doc.items()} == {"read": 1, "write": 1}
        for k in doc.values():
            assert 0 < k["latency_ms"]["p50"] <= k["latency_ms"]["p99"]

        # one log line per failed call, with its method and MLflow error code
        log = d.log()
        assert log.count("event=call_failed") == 2, log
        assert "event=call_failed kind=read method=get_run code=RESOURCE_DOES_NOT_EXIST" in log
        assert (
            "event=call_failed kind=write method=set_experiment_tag "
            "code=RESOURCE_DOES_NOT_EXIST" in log
        )

        # tracker-daemon status (table, --json) and Prometheus agree
        code, text = cli_status(d.address)
        assert code == 0, text
        line = next(ln for ln in text.splitlines() if ln.strip().startswith("calls "))
        assert f"read {expected['read']} (1 failed," in line, line
        assert f"write {expected['write']} (1 failed," in line, line
        code, raw = cli_status(d.address, "--json")
        assert code == 0 and json.loads(raw)["calls"]["write"]["calls"] == expected["write"]
        samples = scrape(d.status()["metrics_address"])
        for kind, n in expected.items():
            assert metric(samples, "tracker_daemon_calls_total", kind=kind) == n
            assert metric(samples, "tracker_daemon_call_failures_total", kind=kind) == 1
            p99 = metric(samples, "tracker_daemon_call_latency_seconds", kind=kind, quantile="0.99")
            assert p99 == pytest.approx(doc[kind]["latency_ms"]["p99"] / 1000)

        # and the traces are stored: one trace and one span each (log_spans no longer fails)
        with sqlite3.connect(d.state_dir / "mlflow.db") as db:
            assert db.execute("SELECT count(*) FROM trace_info").fetchone() == (TRACES,)
            assert db.execute("SELECT count(*) FROM spans").fetchone() == (TRACES,)
