"""End to end: real daemon process, real worker processes, real MLflow SQLite store."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

import tracker_client
from tests.support.daemon import daemon_cli, running_daemon
from tests.support.workers import finish_workers, start_worker

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_eight_parallel_workers_land_completely(tmp_path: Path) -> None:
    ends = ["FINISHED"] * 6 + ["FAILED", "raise"]
    with running_daemon(tmp_path) as d:
        procs, outs = [], []
        for i, end in enumerate(ends):
            spec = {
                "experiment": "parallel",
                "run_name": f"worker-{i}",
                "params": {f"p{j}": f"{i}-{j}" for j in range(5)},
                "tags": {f"t{j}": f"tag-{i}-{j}" for j in range(3)},
                "keys": ["loss", "acc"],
                "steps": 1000,
                "artifact": {"name": "notes.txt", "content": f"worker {i} " * 100},
                "end": end,
            }
            out = tmp_path / f"w{i}.json"
            outs.append(out)
            procs.append(start_worker(d.address, spec, out))
        stderr = finish_workers(procs, timeout=180)
        assert all("Traceback" not in e for e in stderr), stderr
        status = d.status()

    client = MlflowClient(tracking_uri=d.backend_uri)
    exps = [e for e in client.search_experiments(ViewType.ALL) if e.name == "parallel"]
    assert len(exps) == 1
    for i, (out, end) in enumerate(zip(outs, ends, strict=True)):
        res = json.loads(out.read_text())
        run = client.get_run(res["run_id"])
        assert run.info.experiment_id == exps[0].experiment_id
        assert run.info.run_name == f"worker-{i}"
        assert run.info.status == ("FINISHED" if end == "FINISHED" else "FAILED")
        assert run.data.params == {f"p{j}": f"{i}-{j}" for j in range(5)}
        for j in range(3):
            assert run.data.tags[f"t{j}"] == f"tag-{i}-{j}"
        assert run.data.tags["mlflow.source.type"] == "LOCAL"
        assert "mlflow.user" in run.data.tags
        for key in ("loss", "acc"):
            history = client.get_metric_history(res["run_id"], key)
            got = sorted((m.step, m.value, m.timestamp) for m in history)
            want = sorted((s, v, ts) for s, v, ts in res["sent"][key])
            assert len(got) == 1000
            assert got == want
        local = client.download_artifacts(res["run_id"], "", str(tmp_path / f"dl{i}"))
        files = list(Path(local).iterdir())
        assert [f.name for f in files] == [f"w{i}-notes.txt"]
        assert files[0].read_text() == f"worker {i} " * 100
    assert status["failed"] == 0
    # per worker: 5 params + 2,000 metric points + 1 artifact (tags travel with start_run)
    assert status["committed"] == status["received"] == 8 * (5 + 2000 + 1)


@pytest.mark.timeout(120)
def test_run_lifecycle_resume_nested_and_failed(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        parent = t.start_run("lifecycle", run_name="parent")
        parent.log_metric("m", 1.0, step=0)
        parent.end()
        resumed = t.start_run(run_id=parent.run_id)
        assert resumed.run_id == parent.run_id
        resumed.log_metric("m", 2.0, step=1)
        child = t.start_run("lifecycle", run_name="child", parent_run_id=parent.run_id)
        with pytest.raises(ZeroDivisionError), child:
            child.log_param("x", 1)
            1 / 0  # noqa: B018
        resumed.end("KILLED")
        t.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    p = client.get_run(parent.run_id)
    assert p.info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(parent.run_id, "m")] == [1.0, 2.0]
    c = client.get_run(child.run_id)
    assert c.data.tags["mlflow.parentRunId"] == parent.run_id
    assert c.info.status == "FAILED"
    assert c.data.params == {"x": "1"}


@pytest.mark.timeout(180)
def test_sixteen_processes_race_to_create_one_experiment(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        procs = []
        for i in range(16):
            spec = {
                "experiment": "race-exp",
                "run_name": f"r{i}",
                "wait_stdin": True,
                "keys": ["x"],
                "steps": 10,
            }
            procs.append(start_worker(d.address, spec, tmp_path / f"r{i}.json"))
        for proc in procs:  # release all of them at once
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        finish_workers(procs, timeout=150)
    client = MlflowClient(tracking_uri=d.backend_uri)
    exps = [e for e in client.search_experiments(ViewType.ALL) if e.name == "race-exp"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id], max_results=100)
    assert len(runs) == 16
    assert {r.info.run_name for r in runs} == {f"r{i}" for i in range(16)}
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.timeout(120)
def test_artifact_is_snapshot_at_call_time(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        src = tmp_path / "ckpt.txt"
        src.write_text("version 1")
        with t.start_run("artifacts") as run:
            run.log_artifact(src, "checkpoints")
            src.write_text("version 2 — rewritten right after log_artifact")
            src.unlink()
            folder = tmp_path / "folder"
            (folder / "sub").mkdir(parents=True)
            (folder / "a.txt").write_text("a")
            (folder / "sub" / "b.txt").write_text("b")
            run.log_artifacts(folder, "tree")
            (folder / "a.txt").write_text("changed")
            with pytest.raises(ValueError, match="artifact_path"):
                run.log_artifact(folder / "a.txt", "../escape")
            with pytest.raises(ValueError, match="artifact_path"):
                run.log_artifact(folder / "a.txt", "/abs")
        t.close()
        staged_left = list((d.state_dir / "staging").rglob("*.txt"))
    assert staged_left == []
    client = MlflowClient(tracking_uri=d.backend_uri)
    dl = Path(client.download_artifacts(run.run_id, "", str(tmp_path / "dl")))
    assert (dl / "checkpoints" / "ckpt.txt").read_text() == "version 1"
    assert (dl / "tree" / "a.txt").read_text() == "a"
    assert (dl / "tree" / "sub" / "b.txt").read_text() == "b"


@pytest.mark.timeout(120)
def test_param_conflict_fails_only_that_record(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("conflict")
        run.log_param("lr", 0.1)
        for i in range(500):
            run.log_metric("loss", float(i), step=i)
        run.log_param("lr", 0.1)  # same value: fine, as in MLflow
        run.log_param("lr", 0.2)  # changed: MLflow forbids it
        run.log_param("batch", 64)
        with pytest.raises(tracker_client.CommitError, match="lr") as err:
            run.flush()
        assert len(err.value.failures) == 1
        failure = err.value.failures[0]
        assert failure.code == "INVALID_PARAMETER_VALUE"
        assert isinstance(failure.record, tracker_client.protocol.Param)
        assert failure.record.value == "0.2"
        run.flush()  # failures are reported once
        run.end()
        t.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    r = client.get_run(run.run_id)
    assert r.data.params == {"lr": "0.1", "batch": "64"}
    assert len(client.get_metric_history(run.run_id, "loss")) == 500


@pytest.mark.timeout(120)
def test_exit_without_end_flushes_and_finishes(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        out = tmp_path / "w.json"
        spec = {"experiment": "exit", "keys": ["k"], "steps": 3000, "end": "exit"}
        finish_workers([start_worker(d.address, spec, out)], timeout=90)
        res = json.loads(out.read_text())
        client = MlflowClient(tracking_uri=d.backend_uri)
        assert len(client.get_metric_history(res["run_id"], "k")) == 3000
        assert client.get_run(res["run_id"]).info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_forked_child_logs_through_its_own_connection(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, sys, tracker_client\n"
        "t = tracker_client.connect(sys.argv[1])\n"
        "run = t.start_run('fork')\n"
        "run.log_metric('parent', 1.0)\n"
        "run.flush()\n"
        "for i in range(100): run.log_metric('before_fork', float(i), step=i)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    for i in range(200): run.log_metric('child', float(i), step=i)\n"
        "    t.flush()\n"
        "    os._exit(0)\n"
        "_, st = os.waitpid(pid, 0)\n"
        "assert st == 0, st\n"
        "run.log_metric('parent', 2.0, step=1)\n"
        "run.end()\n"
        "print(run.run_id)\n"
    )
    with running_daemon(tmp_path) as d:
        proc = subprocess.run(
            [sys.executable, str(script), d.address], capture_output=True, timeout=90, text=True
        )
        assert proc.returncode == 0, proc.stderr
        run_id = proc.stdout.strip()
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert len(client.get_metric_history(run_id, "child")) == 200
    assert len(client.get_metric_history(run_id, "before_fork")) == 100  # not sent twice
    assert [m.value for m in client.get_metric_history(run_id, "parent")] == [1.0, 2.0]


@pytest.mark.timeout(60)
def test_no_daemon_gives_a_clear_error_quickly(tmp_path: Path) -> None:
    t = tracker_client.connect(f"ipc://{tmp_path}/nobody.sock", offline=False)
    with pytest.raises(tracker_client.DaemonUnavailable, match="does not exist"):
        t.start_run("x", timeout=1.0)
    t.close(1.0)


@pytest.mark.timeout(120)
def test_bad_values_fail_at_the_call_site(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("validation")
        with pytest.raises(TypeError, match="value"):
            run.log_metric("loss", "high")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="250"):
            run.log_metric("k" * 251, 1.0)
        with pytest.raises(TypeError, match="step"):
            run.log_metric("loss", 1.0, step=1.5)  # type: ignore[arg-type]
        run.log_metric("nan", math.nan)
        run.log_metric("inf", math.inf)
        run.end()
        t.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert math.isnan(client.get_metric_history(run.run_id, "nan")[0].value)
    # MLflow's SQL store keeps +inf as the largest double; logging directly gives the same
    assert client.get_metric_history(run.run_id, "inf")[0].value == sys.float_info.max


@pytest.mark.timeout(120)
def test_second_daemon_on_same_state_dir_is_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        other = daemon_cli(
            "run", "--state-dir", str(d.state_dir), "--address", f"ipc://{tmp_path}/other.sock"
        )
        assert other.returncode == 3
        assert "in use by tracker-daemon pid" in other.stderr
        same_sock = daemon_cli(
            "run", "--state-dir", str(tmp_path / "other-state"), "--address", d.address
        )
        assert same_sock.returncode == 3
        assert "another tracker-daemon is listening" in same_sock.stderr
        assert d.status()["pid"] == d.proc.pid  # type: ignore[union-attr]
