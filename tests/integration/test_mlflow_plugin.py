"""The ``tracker://`` MLflow plugin: unmodified MLflow code (run in subprocesses with only
``MLFLOW_TRACKING_URI`` set) goes through a real daemon and leaves the same store behind as
MLflow writing to SQLite directly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

import tracker_client
from tests.support.daemon import REPO, Daemon, daemon_env, running_daemon
from tests.support.net import free_port
from tests.support.waiting import wait_for
from tracker_client import protocol as p
from tracker_client.mlflow.entities import EXT_ENUM, encode_value

pytestmark = pytest.mark.integration

SCENARIO = REPO / "tests" / "mlflow_scenario.py"
EXPERIMENT = "plugin-diff"
# Run-name prefixes: distinctive, so one process's expected output is another's with the prefix
# replaced textually.
PREFIX = "PFX00-"
# Tags that legitimately differ between two executions of the same script (or name other rows).
VOLATILE_TAGS = {"mlflow.parentRunId", "mlflow.user", "mlflow.source.git.commit"}


def tracker_uri(d: Daemon) -> str:
    assert d.address.startswith("ipc://")
    return "tracker://" + d.address[len("ipc://") :]  # tracker:///abs/path.sock


def run_mlflow(
    args: list[str], uri: str, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Python script with MLFLOW_TRACKING_URI=uri in its own cwd; it must succeed."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env(
            {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
        ),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- store snapshots


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()
    }


def snapshot(uri: str, download_dir: Path) -> dict[str, Any]:
    """Everything the scenario leaves in a store, without ids and wall-clock times: experiments
    (name, tags), runs by name (status, params, tags, parent by name, metric histories with
    their explicit timestamps, dataset inputs) and each run's artifact files with contents."""
    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments(ViewType.ALL)
    exp_names = {e.experiment_id: e.name for e in experiments}
    runs = client.search_runs(list(exp_names), run_view_type=ViewType.ALL, max_results=5000)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out: dict[str, Any] = {
        "experiments": sorted([e.name, e.lifecycle_stage, dict(e.tags)] for e in experiments),
        "runs": {},
    }
    for r in runs:
        rid = r.info.run_id
        assert r.info.run_name not in out["runs"], f"two runs named {r.info.run_name}"
        dl = download_dir / rid
        dl.mkdir(parents=True)
        client.download_artifacts(rid, "", str(dl))
        out["runs"][r.info.run_name] = {
            "experiment": exp_names[r.info.experiment_id],
            "status": r.info.status,
            "lifecycle": r.info.lifecycle_stage,
            "has_end_time": r.info.end_time is not None,
            "params": dict(r.data.params),
            "tags": {k: v for k, v in r.data.tags.items() if k not in VOLATILE_TAGS},
            "parent": names.get(r.data.tags.get("mlflow.parentRunId", ""), None),
            "metrics": {
                key: sorted(
                    (m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key)
                )
                for key in sorted(r.data.metrics)
            },
            "latest_metrics": dict(r.data.metrics),
            "datasets": sorted(
                [
                    d.dataset.name,
                    d.dataset.digest,
                    d.dataset.source_type,
                    d.dataset.source,
                    d.dataset.schema,
                    d.dataset.profile,
                    {t.key: t.value for t in d.tags},
                ]
                for d in r.inputs.dataset_inputs
            ),
            "artifacts": _files(dl),
        }
    return out


def with_prefix(doc: Any, prefix: str) -> Any:
    """``doc`` (JSON-able) as the scenario would produce it with another run-name prefix."""
    return json.loads(json.dumps(doc, sort_keys=True, default=repr).replace(PREFIX, prefix))


def _jsonable(snap: dict[str, Any]) -> dict[str, Any]:
    runs = {
        name: {**run, "artifacts": {k: v.hex() for k, v in run["artifacts"].items()}}
        for name, run in snap["runs"].items()
    }
    return {**snap, "runs": runs}


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario run once by MLflow against SQLite directly (no daemon): (printed, snapshot).
    The artifact root is MLflow's default, ./mlruns in the script's own cwd."""
    root = tmp_path_factory.mktemp("direct")
    uri = f"sqlite:///{root / 'A.db'}"
    proc = run_mlflow([str(SCENARIO), EXPERIMENT, PREFIX], uri, root / "cwd", timeout=240)
    return json.loads(proc.stdout), _jsonable(snapshot(uri, root / "dl"))


# ---------------------------------------------------------------------------- 1. differential


@pytest.mark.compat
@pytest.mark.timeout(300)
def test_same_script_same_store_as_direct_sqlite(
    tmp_path: Path, direct: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    printed_direct, snap_direct = direct
    with running_daemon(tmp_path) as d:
        proc = run_mlflow(
            [str(SCENARIO), EXPERIMENT, PREFIX], tracker_uri(d), tmp_path / "cwd", timeout=240
        )
        status = d.status()
    assert json.loads(proc.stdout) == printed_direct
    snap = _jsonable(snapshot(d.backend_uri, tmp_path / "dl"))
    assert snap["experiments"] == snap_direct["experiments"]
    assert sorted(snap["runs"]) == sorted(snap_direct["runs"])
    for name, run in snap_direct["runs"].items():
        assert snap["runs"][name] == run, name
    # the scenario really exercised what it claims to
    parent = snap["runs"][f"{PREFIX}parent"]
    assert parent["status"] == "FINISHED"
    assert snap["runs"][f"{PREFIX}child-1"]["status"] == "FAILED"
    assert snap["runs"][f"{PREFIX}child-1"]["parent"] == f"{PREFIX}parent"
    assert len(parent["metrics"]["loss"]) == 25
    assert parent["datasets"][0][0] == "train"
    assert parent["datasets"][0][-1]["mlflow.data.context"] == "training"
    assert set(parent["artifacts"]) == {
        "config/config.json",
        "notes/readme.txt",
        "checkpoints/weights.bin",
    }
    assert status["failed"] == 0
    assert (tmp_path / "cwd" / "mlruns").exists() is False  # artifacts went to the daemon's root


# ---------------------------------------------------------------------------- 2. sklearn


SKLEARN_SCRIPT = """
import json
import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(0)
X = rng.normal(size=(60, 3))
y = (X[:, 0] - X[:, 1] > 0).astype(int)
mlflow.set_experiment("sklearn")
mlflow.sklearn.autolog()
with mlflow.start_run(run_name="fit") as run:
    model = LogisticRegression(C=0.5, max_iter=200).fit(X, y)
run_id = run.info.run_id
expected = model.predict(X).tolist()
loaded = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
mv = mlflow.register_model(f"runs:/{run_id}/model", "tiny")
versions = MlflowClient().search_model_versions("name='tiny'")
registered = mlflow.sklearn.load_model("models:/tiny/1")
mlflow.genai.register_prompt("greet", "Hello {{name}}, {{greeting}}!")
prompt = mlflow.genai.load_prompt("prompts:/greet/1")
print(json.dumps({
    "run_id": run_id,
    "tracking_uri": mlflow.get_tracking_uri(),
    "store": type(MlflowClient()._tracking_client.store).__name__,
    "expected": expected,
    "from_run": loaded.predict(X).tolist(),
    "from_registry": registered.predict(X).tolist(),
    "registered": [mv.name, mv.version],
    "versions": [[v.name, v.version, v.run_id, v.status] for v in versions],
    "prompt": [prompt.format(name="Ada", greeting="hi"), sorted(prompt.variables)],
}))
"""


@pytest.mark.timeout(300)
def test_sklearn_autolog_load_and_register(tmp_path: Path) -> None:
    code = script(tmp_path, "fit.py", SKLEARN_SCRIPT)
    with running_daemon(tmp_path) as d:
        uri = tracker_uri(d)
        out = json.loads(run_mlflow([str(code)], uri, tmp_path / "cwd", timeout=240).stdout)
        status = d.status()
    assert out["tracking_uri"] == uri
    assert out["store"] == "TrackerStore"
    assert out["from_run"] == out["expected"]
    assert out["from_registry"] == out["expected"]
    assert out["registered"] == ["tiny", "1"]
    assert out["versions"] == [["tiny", "1", out["run_id"], "READY"]]
    assert out["prompt"] == ["Hello Ada, hi!", ["greeting", "name"]]  # PromptVersion: no proto
    assert status["failed"] == 0

    client = MlflowClient(tracking_uri=d.backend_uri, registry_uri=d.backend_uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["C"] == "0.5"
    assert run.data.params["max_iter"] == "200"
    assert "training_accuracy_score" in run.data.metrics
    assert run.data.tags["estimator_name"] == "LogisticRegression"
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in models] == [out["run_id"]]
    assert str(models[0].status) in ("READY", "LoggedModelStatus.READY")
    files = {f.path for f in client.list_logged_model_artifacts(models[0].model_id)}
    assert {"MLmodel", "model.pkl"} <= files
    (version,) = client.search_model_versions("name='tiny'")
    assert version.run_id == out["run_id"]
    assert version.source == f"models:/{models[0].model_id}"


# ---------------------------------------------------------------------------- 3. sixteen at once


@pytest.mark.timeout(420)
def test_sixteen_scripts_at_once(
    tmp_path: Path,
    direct: tuple[dict[str, Any], dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    printed_direct, snap_direct = direct
    n = 16
    with running_daemon(tmp_path) as d:
        env = daemon_env(
            {"MLFLOW_TRACKING_URI": tracker_uri(d), "MLFLOW_DISABLE_TELEMETRY": "true"}
        )
        procs = []
        for i in range(n):
            cwd = tmp_path / f"cwd{i}"
            cwd.mkdir()
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(SCENARIO), EXPERIMENT, f"PFX{i:02d}-", "--wait-stdin"],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:  # every script has imported mlflow and waits: release them together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            try:
                stdout, stderr = proc.communicate(timeout=360)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
            results.append((proc.returncode, stdout, stderr))
        status = d.status()
    for i, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"script {i} exited {rc}:\n{stderr}"
        assert "Traceback" not in stderr, stderr
        assert json.loads(stdout) == with_prefix(printed_direct, f"PFX{i:02d}-"), i
    assert status["failed"] == 0
    creators = sum("does not exist. Creating a new experiment" in r[2] for r in results)
    with capsys.disabled():
        print(f"\n{creators} of {n} scripts raced to create experiment {EXPERIMENT!r}")

    snap = _jsonable(snapshot(d.backend_uri, tmp_path / "dl"))
    # one "plugin-diff" (and Default), and every run in it: a process that lost the race to
    # create the experiment must not log into Default
    assert snap["experiments"] == snap_direct["experiments"]
    assert {r["experiment"] for r in snap["runs"].values()} == {EXPERIMENT}
    assert len(snap["runs"]) == n * len(snap_direct["runs"])
    for i in range(n):
        want = with_prefix(snap_direct["runs"], f"PFX{i:02d}-")
        got = {k: v for k, v in snap["runs"].items() if k.startswith(f"PFX{i:02d}-")}
        assert json.loads(json.dumps(got, sort_keys=True, default=repr)) == want, i


RACE_SCRIPT = """
import json, sys
import mlflow
from mlflow.tracking._tracking_service.utils import _get_store

store = _get_store()  # the TrackerStore set_experiment will use (MLflow caches it per URI)
lookup = store.get_experiment_by_name

def paused_lookup(name):  # widen the race window: stop right after the lookup found nothing
    exp = lookup(name)
    if exp is None:
        print("missing", flush=True)
        sys.stdin.readline()
    return exp

store.get_experiment_by_name = paused_lookup
exp = mlflow.set_experiment("raced")
with mlflow.start_run() as run:
    mlflow.log_param("x", 1)
print(json.dumps({"returned": exp.experiment_id, "run_in": run.info.experiment_id}))
"""


@pytest.mark.timeout(240)
def test_set_experiment_race_loser_logs_into_the_winner(tmp_path: Path) -> None:
    """MLflow's set_experiment, losing a create race, returns the experiment without activating
    it (runs would land in Default); through tracker:// the loser gets the winner's id."""
    code = script(tmp_path, "race.py", RACE_SCRIPT)
    with running_daemon(tmp_path) as d:
        uri = tracker_uri(d)
        proc = subprocess.Popen(
            [sys.executable, str(code)],
            cwd=tmp_path,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=daemon_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}),
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "missing"  # blocks until the lookup ran
            winner = MlflowClient(tracking_uri=uri).create_experiment("raced")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert json.loads(stdout) == {"returned": winner, "run_in": winner}
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert [e.name for e in client.search_experiments()] == ["raced", "Default"]
    (run,) = client.search_runs([winner])
    assert run.data.params == {"x": "1"}


# ---------------------------------------------------------------------------- 4. URI forms


URI_SCRIPT = """
import json, sys, warnings
warnings.filterwarnings("error", message=".*Failure attempting to register.*")
import mlflow
from mlflow import MlflowClient

mlflow.set_experiment("uri-forms")
with mlflow.start_run(run_name=sys.argv[1]) as run:
    mlflow.log_param("form", sys.argv[1])
    for step in range(10):
        mlflow.log_metric("m", float(step), step=step)
client = MlflowClient()
print(json.dumps({
    "run_id": run.info.run_id,
    "store": type(client._tracking_client.store).__name__,
    "registry": type(client._get_registry_client().store).__name__,
    "params": client.get_run(run.info.run_id).data.params,
    "points": len(client.get_metric_history(run.info.run_id, "m")),
}))
"""


def _check_uri_form(tmp_path: Path, d: Daemon, form: str, uri: str, env: dict[str, str]) -> None:
    code = script(tmp_path, "uri.py", URI_SCRIPT)
    proc = run_mlflow(
        ["-W", "error::UserWarning:mlflow.tracking._tracking_service.utils", str(code), form],
        uri,
        tmp_path / form,
        timeout=180,
        env=env,
    )
    assert "Failure attempting to register" not in proc.stderr
    out = json.loads(proc.stdout)
    assert out == {
        "run_id": out["run_id"],
        "store": "TrackerStore",
        "registry": "TrackerRegistryStore",
        "params": {"form": form},
        "points": 10,
    }
    run = MlflowClient(tracking_uri=d.backend_uri).get_run(out["run_id"])
    assert run.data.params == {"form": form}
    assert run.info.status == "FINISHED"


@pytest.mark.timeout(300)
def test_uri_forms(tmp_path: Path) -> None:
    (tmp_path / "ipc").mkdir()
    with running_daemon(tmp_path / "ipc") as d:
        _check_uri_form(tmp_path, d, "default", "tracker://", {"TRACKER_DAEMON_ADDRESS": d.address})
        _check_uri_form(tmp_path, d, "path", tracker_uri(d), {})
    port = free_port()
    tcp = Daemon(tmp_path / "tcp-state", f"tcp://127.0.0.1:{port}", tmp_path / "tcp.log")
    tcp.start()
    try:
        _check_uri_form(tmp_path, tcp, "tcp", f"tracker+tcp://127.0.0.1:{port}", {})
    finally:
        tcp.stop()


@pytest.mark.timeout(120)
def test_no_daemon_fails_fast_and_leaves_nothing_to_replay(tmp_path: Path) -> None:
    code = "import mlflow\nmlflow.set_experiment('nobody-home')\n"
    spool = tmp_path / "spool"
    env = {"TRACKER_CONNECT_TIMEOUT": "2", "TRACKER_SPOOL_DIR": str(spool)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        env=daemon_env({"MLFLOW_TRACKING_URI": f"tracker://{tmp_path}/nobody.sock", **env}),
    )
    assert proc.returncode == 1
    assert "MlflowException" in proc.stderr and "within 2 s" in proc.stderr, proc.stderr
    assert "does not exist" in proc.stderr  # names the missing socket
    # the plugin's address comes from its URI, not from $TRACKER_DAEMON_ADDRESS: it says so
    assert f"point the tracking URI tracker://{tmp_path}/nobody.sock at the daemon" in proc.stderr
    assert "TRACKER_DAEMON_ADDRESS" not in proc.stderr, proc.stderr
    # the failed call is not kept for a later replay
    assert not spool.exists() or list(spool.iterdir()) == []


# ---------------------------------------------------------------------------- 5. errors


ERRORS_SCRIPT = """
import json, time
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

def code_of(fn):
    started = time.monotonic()
    try:
        fn()
    except MlflowException as e:
        return [e.error_code, e.message, time.monotonic() - started]
    return None

client = MlflowClient()
out = {}
mlflow.set_experiment("errors")
run = mlflow.start_run(run_name="conflict")
rid = run.info.run_id
mlflow.log_param("lr", 0.1)
mlflow.log_param("lr", 0.2)        # non-blocking; MLflow refuses a changed param
mlflow.log_metric("after", 1.0)
out["conflict"] = code_of(lambda: client.get_run(rid))
out["params"] = client.get_run(rid).data.params   # reported once
out["missing"] = code_of(lambda: client.get_run("0" * 32))
out["missing_exp"] = code_of(lambda: client.get_experiment("987654"))
mlflow.end_run()
out["status"] = client.get_run(rid).info.status

mlflow.start_run(run_name="conflict-at-end")
mlflow.log_param("a", 1)
mlflow.log_param("a", 2)
out["end_conflict"] = code_of(mlflow.end_run)
out["active_after"] = mlflow.active_run() is not None
if mlflow.active_run() is not None:
    mlflow.end_run()
out["exists"] = code_of(lambda: client.create_experiment("errors"))
print(json.dumps(out))
"""


@pytest.mark.timeout(240)
def test_errors_have_mlflow_codes(tmp_path: Path) -> None:
    code = script(tmp_path, "errors.py", ERRORS_SCRIPT)
    with running_daemon(tmp_path) as d:
        out = json.loads(run_mlflow([str(code)], tracker_uri(d), tmp_path / "cwd", 180).stdout)

        # a raw call of something that is not a store method is refused
        t = tracker_client.connect(d.address, offline=False)
        transport = t._transport
        refused = {}
        for target, method in [
            ("tracking", "__class__"),
            ("tracking", "open"),
            ("tracking", "__init__"),
            ("registry", "_get_sql_model"),
            ("tracking", "get_run.__globals__"),
        ]:

            def make(req: int, seq: int, target: str = target, method: str = method) -> Any:
                return p.Call(
                    req,
                    transport.client_id,
                    seq,
                    target,
                    method,
                    encode_value(["x"]),
                    encode_value({}),
                )

            with pytest.raises(tracker_client.DaemonError) as err:
                transport.request(make, 30.0)
            refused[method] = err.value.code

        def bad_target(req: int, seq: int) -> Any:
            return p.Call(
                req,
                transport.client_id,
                seq,
                "os",
                "system",
                encode_value(["true"]),
                encode_value({}),
            )

        with pytest.raises(tracker_client.DaemonError) as err:
            transport.request(bad_target, 30.0)
        bad_target_code = err.value.code

        # arguments naming something that is not an MLflow class are refused, never called
        marker = tmp_path / "decoded-and-executed"
        evil = msgpack.ExtType(
            EXT_ENUM,
            encode_value(["mlflow.utils.file_utils:os.system", f"touch {marker}"]),
        )

        def evil_call(req: int, seq: int) -> Any:
            args = msgpack.packb([evil], use_bin_type=True)
            return p.Call(
                req, transport.client_id, seq, "tracking", "get_run", args, encode_value({})
            )

        with pytest.raises(tracker_client.DaemonError) as err:
            transport.request(evil_call, 30.0)
        evil_error = (err.value.code, err.value.message)

        # the same through the plugin's own call path: an MlflowException with that code
        from tracker_client.mlflow.store import _call

        with pytest.raises(MlflowException) as mlerr:
            _call(t, "tracking", "__class__", [], {})
        t.close(5.0)
        failed = d.status()["failed"]

    assert out["conflict"][0] == "INVALID_PARAMETER_VALUE", out
    assert "lr" in out["conflict"][1]
    assert out["params"] == {"lr": "0.1"}
    assert out["missing"][0] == "RESOURCE_DOES_NOT_EXIST", out
    assert out["missing"][2] < 10.0, "a missing run must fail at once, not after retries"
    assert out["missing_exp"][0] == "RESOURCE_DOES_NOT_EXIST", out
    assert out["status"] == "FINISHED"
    assert out["end_conflict"][0] == "INVALID_PARAMETER_VALUE", out
    assert out["exists"][0] == "RESOURCE_ALREADY_EXISTS", out
    assert refused == dict.fromkeys(refused, "ENDPOINT_NOT_FOUND")
    assert evil_error[0] == "INVALID_PARAMETER_VALUE", evil_error  # bad input, named as such
    assert "call.args" in evil_error[1] and "not an allowed MLflow entity class" in evil_error[1]
    assert not marker.exists()
    assert bad_target_code == "INVALID_PARAMETER_VALUE"
    assert mlerr.value.error_code == "ENDPOINT_NOT_FOUND"
    assert failed == 2  # the two conflicting params, nothing else
    client = MlflowClient(tracking_uri=d.backend_uri)
    (second,) = client.search_runs(
        [client.get_experiment_by_name("errors").experiment_id],
        filter_string="attributes.run_name = 'conflict-at-end'",
    )
    assert second.data.params == {"a": "1"}
    assert second.info.status == "FINISHED"


KILLED_SCRIPT = """
import os, signal, sys
import mlflow

mlflow.set_experiment("liveness")
if len(sys.argv) > 1:
    run = mlflow.start_run(run_id=sys.argv[1])  # resume (update_run_info -> RUNNING)
else:
    run = mlflow.start_run(run_name="doomed")
for step in range(100):
    mlflow.log_metric("loss", float(step), step=step)
mlflow.MlflowClient().get_run(run.info.run_id)  # a barrier: the 100 points are committed
print(run.info.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit: MLflow never ends the run
"""


@pytest.mark.timeout(240)
def test_killed_process_runs_are_ended_failed(tmp_path: Path) -> None:
    """Runs a tracker:// process created (or resumed) and never ended are ended FAILED by the
    daemon when the process dies, like runs of the native client."""
    code = script(tmp_path, "killed.py", KILLED_SCRIPT)
    with running_daemon(tmp_path) as d:
        uri = tracker_uri(d)
        client = MlflowClient(tracking_uri=d.backend_uri)
        run_id = ""
        for attempt in ("create", "resume"):
            proc = subprocess.run(
                [sys.executable, str(code), *([run_id] if run_id else [])],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                env=daemon_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}),
            )
            assert proc.returncode == -9, proc.stderr
            run_id = proc.stdout.strip()
            wait_for(
                lambda rid=run_id: client.get_run(rid).info.status == "FAILED",
                60.0,
                f"the daemon to end the killed process's run ({attempt}) FAILED",
            )
            run = client.get_run(run_id)
            assert "exited without ending this run" in run.data.tags["tracker.end_reason"]
            assert len(client.get_metric_history(run_id, "loss")) == 100 * (
                1 if attempt == "create" else 2
            )


# ---------------------------------------------------------------------------- 6. per-call cost


PERF_SCRIPT = """
import json, time
import mlflow

mlflow.set_experiment("perf")
with mlflow.start_run() as run:
    for i in range(300):
        mlflow.log_metric("warmup", float(i), step=i)
    lat = []
    for i in range(3000):
        t0 = time.perf_counter_ns()
        mlflow.log_metric("loss", float(i), step=i)
        lat.append(time.perf_counter_ns() - t0)
lat.sort()
print(json.dumps({"run_id": run.info.run_id, "p50_us": lat[1500] / 1000,
                  "p99_us": lat[2970] / 1000, "mean_us": sum(lat) / len(lat) / 1000}))
"""


@pytest.mark.timeout(240)
def test_log_metric_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = script(tmp_path, "perf.py", PERF_SCRIPT)
    with running_daemon(tmp_path) as d:
        out = json.loads(run_mlflow([str(code)], tracker_uri(d), tmp_path / "cwd", 180).stdout)
    with capsys.disabled():
        print(
            f"\nmlflow.log_metric via tracker://: p50 {out['p50_us']:.1f} us, "
            f"p99 {out['p99_us']:.1f} us, mean {out['mean_us']:.1f} us (3,000 calls)"
        )
    assert out["p50_us"] < 5000, out  # a blocking round trip per call would be far slower
    client = MlflowClient(tracking_uri=d.backend_uri)
    history = client.get_metric_history(out["run_id"], "loss")
    assert sorted((m.step, m.value) for m in history) == [(i, float(i)) for i in range(3000)]
