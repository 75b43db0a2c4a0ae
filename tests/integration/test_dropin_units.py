"""``tracker://`` keeps MLflow's units and tag order, on both write paths (the SQL writer and
``--sink mlflow``): unmodified ``MlflowClient`` code, run in a subprocess against a real daemon
and, for the expected result, directly against a SQLite store, must leave the same runs and
raise the same error codes (through the daemon a failure the store decides is raised by the
next blocking call: MLflow's own asynchronous-looking ``tracker://`` contract).

* A ``log_batch`` is one unit: one invalid element (a bad metric name, a negative timestamp,
  duplicate param keys) raises at the call and nothing is sent; a changed param fails the whole
  call in the daemon and nothing of it is stored (``log_params({"a": "2", "newp": "x"})`` after
  ``a=1`` stores no ``newp``).
* Every value of a tag key is applied in order with MLflow's ``mlflow.runName`` rule, also when
  the daemon batches separate calls together; the native client keeps the same order.
* The feature is announced (hello/welcome ``features``): a raw hello without features gets a
  welcome without the field; one with features gets the daemon's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import Daemon, daemon_env, running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

WORKLOAD = r"""
import json, sys
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

TS = 1_700_000_000_000
NAME = "mlflow.runName"

def changed_param(c, r):
    c.log_param(r, "a", "1")
    c.log_batch(r, metrics=[Metric("m", 1.0, TS, 0)], params=[Param("a", "2"), Param("newp", "x")],
                tags=[RunTag("t", "v"), RunTag(NAME, "renamed")])

def log_params_after(c, r):  # what mlflow.log_params sends
    c.log_param(r, "a", "1")
    c.log_batch(r, params=[Param("a", "2"), Param("newp", "x")])

def bad_metric_name(c, r):
    c.log_batch(r, metrics=[Metric("ok", 1.0, TS, 0), Metric("bad//name", 2.0, TS, 0)],
                params=[Param("p", "1")], tags=[RunTag("t", "v")])

def negative_timestamp(c, r):
    c.log_batch(r, metrics=[Metric("ok", 1.0, TS, 0), Metric("neg", 2.0, -5, 0)],
                params=[Param("p", "1")])

def duplicate_param_keys(c, r):
    c.log_batch(r, metrics=[Metric("ok", 1.0, TS, 0)],
                params=[Param("d", "1"), Param("q", "2"), Param("d", "1")])

def valid_batch(c, r):
    c.log_param(r, "a", "1")
    c.log_batch(r, metrics=[Metric("m", float(i), TS + i, i) for i in range(5)],
                params=[Param("a", "1"), Param("b", "2")],
                tags=[RunTag("t", "1"), RunTag("t", "2")])

def tags(*values):
    def fn(c, r):
        for key, value in values:
            c.set_tag(r, key, value)
    return fn

def tags_in_one_batch(*values):
    def fn(c, r):
        c.log_batch(r, tags=[RunTag(k, v) for k, v in values])
    return fn

CASES = {
    "changed_param": changed_param,
    "log_params_after": log_params_after,
    "bad_metric_name": bad_metric_name,
    "negative_timestamp": negative_timestamp,
    "duplicate_param_keys": duplicate_param_keys,
    "valid_batch": valid_batch,
    "renamed_then_empty": tags((NAME, "renamed"), (NAME, "")),
    "empty_then_x": tags((NAME, ""), (NAME, "x")),
    "a_b_a": tags((NAME, "a"), (NAME, "b"), (NAME, "a")),
    "mixed": tags((NAME, "r1"), ("t", "1"), (NAME, ""), ("t", "2")),
    "batch_renamed_then_empty": tags_in_one_batch((NAME, "renamed"), (NAME, "")),
}

c = MlflowClient()
exp = c.create_experiment("units")
out = {}
for case, fn in CASES.items():
    run = c.create_run(exp, run_name="orig").info.run_id
    error = None
    try:
        fn(c, run)
        c.get_run(run)  # a blocking call: a failure the store decided is raised by now
    except MlflowException as exc:
        error = exc.error_code
    r = c.get_run(run)
    out[case] = {
        "error": error,
        "name": r.info.run_name,
        "params": r.data.params,
        "metrics": sorted((m.key, m.value, m.timestamp, m.step)
                          for k in r.data.metrics for m in c.get_metric_history(run, k)),
        "tags": {k: v for k, v in r.data.tags.items() if k in ("t", NAME)},
    }
json.dump(out, sys.stdout, sort_keys=True)
"""


def run_workload(tmp_path: Path, uri: str, name: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.py"
    path.write_text(WORKLOAD)
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        env=daemon_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}),
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("direct")
    return run_workload(tmp, f"sqlite:///{tmp / 'mlflow.db'}", "direct")


def tracker_uri(d: Daemon) -> str:
    return "tracker://" + d.address[len("ipc://") :]


SINKS = [pytest.param((), id="sql-writer"), pytest.param(("--sink", "mlflow"), id="log_batch")]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("args", SINKS)
def test_units_and_tag_order_through_tracker_equal_mlflow(
    tmp_path: Path, direct: dict[str, Any], args: tuple[str, ...]
) -> None:
    with running_daemon(tmp_path, *args) as d:
        got = run_workload(tmp_path, tracker_uri(d), "tracker")
        status = d.status()
    # what MLflow itself does, so the comparison below compares something
    assert direct["changed_param"]["error"] == "INVALID_PARAMETER_VALUE"
    assert direct["changed_param"]["params"] == {"a": "1"}
    assert direct["changed_param"]["tags"] == {"mlflow.runName": "orig"}
    assert direct["log_params_after"]["params"] == {"a": "1"}
    assert direct["bad_metric_name"] == {**direct["bad_metric_name"], "params": {}, "metrics": []}
    assert direct["renamed_then_empty"]["name"] == "renamed"
    for case in direct:
        assert got[case] == direct[case], case
    assert status["failed"] >= 2  # the changed params' units, failed in the daemon


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", SINKS)
def test_native_client_tag_sequence_keeps_the_rename(tmp_path: Path, args: tuple[str, ...]) -> None:
    with running_daemon(tmp_path, *args) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("units", run_name="orig")
        run.set_tag("mlflow.runName", "renamed")
        run.set_tag("mlflow.runName", "")
        run.set_tag("k", "1")
        run.set_tag("k", "")
        run.end(timeout=60)
        t.close()
        r = MlflowClient(tracking_uri=d.backend_uri).get_run(run.run_id)
    assert r.info.run_name == "renamed" == r.data.tags["mlflow.runName"]
    assert r.data.tags["k"] == ""


def _keys(frame: bytes) -> set[str]:
    body = msgpack.unpackb(frame, raw=False)[2]
    return set(body)


@pytest.mark.timeout(60)
def test_welcome_features_go_only_to_a_client_that_announced_them(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d, raw_dealer(d.address) as sock:
        cid = "a" * 32
        sock.send(p.encode(p.Hello(1, cid, 1, "h", "old-client")))
        sock.send(p.encode(p.Hello(2, cid, 1, "h", "new-client", features=("units", "zzz"))))
        old, new = recv_reply(sock, "plain hello"), recv_reply(sock, "hello with features")
    assert isinstance(old, p.Welcome) and isinstance(new, p.Welcome)
    assert (old.req, old.features) == (1, ())
    assert (new.req, new.features) == (2, p.FEATURES)
    # the old client's welcome is byte-for-byte a welcome without the field
    assert "features" not in _keys(p.encode(old))
