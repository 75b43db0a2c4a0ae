"""One bad value through ``tracker://`` fails alone, as in MLflow: unmodified ``MlflowClient``
scripts (``MLFLOW_TRACKING_URI=tracker://...``) against a real daemon, compared with the same
script run by MLflow on SQLite directly; and raw frames that mix a bad record with good ones of
another run."""

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

# A blocking call of a script gives up after this long (the default is 120 s): a regression that
# makes a call wait for a refused frame fails the test in bounded time.
CALL_TIMEOUT_S = "30"


def tracker_uri(d: Daemon) -> str:
    assert d.address.startswith("ipc://")
    return "tracker://" + d.address[len("ipc://") :]


def run_script(text: str, uri: str, cwd: Path) -> dict[str, Any]:
    """Run ``text`` with MLFLOW_TRACKING_URI=uri; it must succeed and print one JSON document."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = cwd / "script.py"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
        env=daemon_env(
            {
                "MLFLOW_TRACKING_URI": uri,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "TRACKER_FLUSH_TIMEOUT": CALL_TIMEOUT_S,
            }
        ),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def direct(text: str, tmp_path: Path) -> dict[str, Any]:
    """The same script, run by MLflow on a SQLite store of its own (no daemon)."""
    return run_script(text, f"sqlite:///{tmp_path / 'direct.db'}", tmp_path / "direct")


# ---------------------------------------------------------------- item 1: an int64 overflow

OUT_OF_RANGE = """
import json, time
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

c = MlflowClient()
exp = c.create_experiment("oob")
a = c.create_run(exp, run_name="a").info.run_id
b = c.create_run(exp, run_name="b").info.run_id
out = {}
for i in range(20):  # run B's records and run A's bad one share the send window
    c.log_metric(b, "loss", i / 2, timestamp=1000 + i, step=i)
raised = []
for kw in ({"timestamp": 2**63}, {"step": 2**63}, {"step": -(2**63) - 1}):
    try:
        c.log_metric(a, "bad", 1.0, **kw)
        raised.append(None)
    except MlflowException as e:
        raised.append([type(e).__name__, "64-bit integer" in e.message])
out["a_codes"] = raised
for i in range(20, 40):
    c.log_metric(b, "loss", i / 2, timestamp=1000 + i, step=i)
c.log_param(b, "lr", "0.1")
c.set_tag(b, "phase", "train")
c.log_metric(a, "fine", 2.0, timestamp=5, step=2**63 - 1)
t0 = time.monotonic()
try:
    c.set_terminated(b)
    out["terminated"] = "ok"
except Exception as e:
    out["terminated"] = f"{type(e).__name__}: {e}"[:300]
t1 = time.monotonic()
try:
    run = c.get_run(b)
    out["b"] = {
        "status": run.info.status,
        "params": dict(run.data.params),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "loss": sorted((m.step, m.value, m.timestamp) for m in c.get_metric_history(b, "loss")),
    }
    out["a"] = {
        key: sorted((m.step, m.value, m.timestamp) for m in c.get_metric_history(a, key))
        for key in ("bad", "fine")
    }
except Exception as e:
    out["b"] = f"{type(e).__name__}: {e}"[:300]
out["seconds"] = [time.monotonic() - t0, t1 - t0]
print(json.dumps(out))
"""


@pytest.mark.timeout(240)
def test_an_out_of_range_timestamp_raises_at_the_call_and_the_other_run_loses_nothing(
    tmp_path: Path,
) -> None:
    want = direct(OUT_OF_RANGE, tmp_path)
    with running_daemon(tmp_path) as d:
        got = run_script(OUT_OF_RANGE, tracker_uri(d), tmp_path / "cwd")
        status = d.status()
        assert d.proc is not None and d.proc.poll() is None  # the daemon is alive
    # MLflow raises at each of these calls (its database refuses the int), so does tracker://
    assert want["a_codes"] == [["MlflowException", False]] * 3  # (SQLite's own message)
    assert got["a_codes"] == [["MlflowException", True]] * 3  # (MLflow's invalid_value shape)
    assert got["terminated"] == "ok", got["terminated"]
    assert got["b"] == want["b"]
    assert got["b"]["status"] == "FINISHED" and len(got["b"]["loss"]) == 40
    assert got["a"] == want["a"] == {"bad": [], "fine": [[2**63 - 1, 2.0, 5]]}
    assert got["seconds"][0] < 10, got["seconds"]  # no call waited on a refused frame
    assert status["failed"] == 0  # nothing bad was sent at all
    assert status["rejected_frames"] == 0


def test_a_record_that_does_not_decode_fails_alone_and_its_frame_mates_land(
    tmp_path: Path,
) -> None:
    """A raw client (not the reference one) sends one frame mixing run B's good records with
    run A's broken ones: B's are committed, each broken one is a failure of its own naming
    the element and the limit, and the barrier after the frame completes."""
    with running_daemon(tmp_path) as d:
        tracker = tracker_client.connect(d.address, offline=False)
        run_a, run_b = tracker.start_run("raw"), tracker.start_run("raw")
        a, b = run_a.run_id, run_b.run_id
        records: list[Any] = [
            ["m", b, "loss", 0.5, 1000, 0, None, None, None],
            ["m", a, "bad", 1.0, 2**63, 0, None, None, None],  # timestamp outside int64
            ["p", b, "lr", "0.1"],
            ["m", a, "bad", "1.0", 1000, 1, None, None, None],  # value not a float64
            ["t", b, "phase", "train"],
            ["m", a, "bad", 1.0, 1000],  # too short
            ["m", b, "loss", 0.25, 1001, 1, None, None, None],
            ["p", a, "ok_but_long", "x" * 6001],  # decodes; over MLflow's limit
        ]
        cid = "d" * 32
        frame = msgpack.packb([1, "data", {"client_id": cid, "seq": 1, "records": records}])
        with raw_dealer(d.address) as sock:
            sock.send(frame)
            sock.send(p.encode(p.Flush(7, cid, 1, None)))
            replies = [recv_reply(sock, "data + flush", timeout=20) for _ in range(2)]
            while not any(isinstance(r, p.Done) for r in replies):
                replies.append(recv_reply(sock, "flush", timeout=20))
        assert not any(isinstance(r, p.ErrorReply) for r in replies), replies
        (done,) = [r for r in replies if isinstance(r, p.Done)]
        run_a.end()
        run_b.end()
        tracker.close()
        status = d.status()
    messages = sorted(f.message for f in done.failures)
    assert len(messages) == 4, messages
    assert all(f.code == "INVALID_PARAMETER_VALUE" for f in done.failures)
    assert any(
        m.startswith(f"run {a}: ") and "data.records[1].timestamp" in m and "int64" in m
        for m in messages
    ), messages
    assert any("data.records[3].value: expected a float64" in m for m in messages), messages
    assert any("data.records[5]: metric record needs 9 elements" in m for m in messages)
    assert any("MLflow's limit is 6000" in m for m in messages), messages
    assert status["failed"] == 4 and status["rejected_frames"] == 0

    client = MlflowClient(tracking_uri=d.backend_uri)
    got_b = client.get_run(b)
    assert got_b.data.params == {"lr": "0.1"}
    assert got_b.data.tags["phase"] == "train"
    assert [m.value for m in client.get_metric_history(b, "loss")] == [0.5, 0.25]
    got_a = client.get_run(a)
    assert got_a.data.params == {} and client.get_metric_history(a, "bad") == []


def test_a_frame_refused_whole_is_sent_again_without_its_bad_record(tmp_path: Path) -> None:
    """A record larger than the daemon's frame limit alone: the daemon refuses its frame
    (frame_too_large) and says nothing about which; the client sends the seq again without it,
    so the barrier completes and reports it, and the other run's records land."""
    with running_daemon(tmp_path, "--max-frame-bytes", "65536") as d:
        tracker = tracker_client.connect(d.address, offline=False)
        run_a, run_b = tracker.start_run("big"), tracker.start_run("big")
        for i in range(50):
            run_b.log_metric("loss", i / 2, step=i)
        run_a.log_metric("big", 1.0, step=0, model_id="m" * 100_000)  # over 64 KiB alone
        for i in range(50, 100):
            run_b.log_metric("loss", i / 2, step=i)
        with pytest.raises(tracker_client.CommitError) as info:
            tracker.flush(timeout=20)
        (failure,) = info.value.failures
        assert failure.record is not None and failure.record.run_id == run_a.run_id
        assert "frame_too_large" in failure.message
        run_b.flush(timeout=20)
        assert run_b.end(timeout=20)
        assert run_a.end(timeout=20)
        tracker.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert len(client.get_metric_history(run_b.run_id, "loss")) == 100
    assert client.get_run(run_b.run_id).info.status == "FINISHED"
    assert client.get_metric_history(run_a.run_id, "big") == []


# ---------------------------------------------------------------- item 4: long values

LONG_VALUES = """
import json
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException

c = MlflowClient()
exp = c.create_experiment("long")
r = c.create_run(exp, run_name="long").info.run_id
c.log_param(r, "p", "y" * 6001)
c.set_tag(r, "t", "y" * 8001)
c.log_batch(r, params=[Param("q", "w" * 7000)], tags=[RunTag("u", "v" * 9000)])
data = c.get_run(r).data
out = {"stored": {k: [len(v), v[:1]] for k, v in [*data.params.items(), *data.tags.items()]
                  if k in ("p", "q", "t", "u")}}
c.log_param(r, "p", "y" * 6002)  # the same value once truncated: accepted
try:
    c.log_param(r, "p", "z")  # MLflow raises here; tracker:// at the next blocking call
    c.get_run(r)
    out["changed"] = None
except MlflowException as e:
    out["changed"] = [e.error_code, "already logged" in e.message]
out["final"] = len(c.get_run(r).data.params["p"])
c.set_terminated(r)
print(json.dumps(out))
"""


@pytest.mark.timeout(240)
def test_long_values_are_truncated_where_mlflow_truncates_them(tmp_path: Path) -> None:
    want = direct(LONG_VALUES, tmp_path)
    with running_daemon(tmp_path) as d:
        got = run_script(LONG_VALUES, tracker_uri(d), tmp_path / "cwd")
    assert want["stored"] == {
        "p": [6000, "y"],
        "q": [6000, "w"],
        "t": [8000, "y"],
        "u": [8000, "v"],
    }
    assert got == want


# ---------------------------------------------------------------- item 5: deferred failures

DEFERRED = """
import json
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

c = MlflowClient()
exp = c.create_experiment("deferred")
a = c.create_run(exp, run_name="a").info.run_id
b = c.create_run(exp, run_name="b").info.run_id
for i in range(5):
    c.log_param(a, f"k{i}", "1")
c.get_run(a)
for i in range(5):
    c.log_param(a, f"k{i}", "2")  # changed params: MLflow's store refuses each
try:
    c.get_run(b)  # a call about another run reports them
    out = None
except MlflowException as e:
    out = {"code": e.error_code, "message": e.message, "a": a}
print(json.dumps(out))
"""


@pytest.mark.timeout(240)
def test_a_deferred_failure_names_its_run_and_the_first_failures(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        got = run_script(DEFERRED, tracker_uri(d), tmp_path / "cwd")
    assert got is not None
    assert got["code"] == "INVALID_PARAMETER_VALUE"
    message, a = got["message"], got["a"]
    assert message.startswith("5 earlier write(s) of this process were not committed"), message
    for key in ("k0", "k1", "k2"):
        assert f"run {a}: param '{key}': INVALID_PARAMETER_VALUE: " in message, message
    assert "param 'k3'" not in message and message.endswith("; and 2 more"), message
