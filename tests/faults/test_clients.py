"""Client-side faults: bad records in a good batch, a worker killed mid-run, no daemon at start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

import tracker_client
from tests.support.daemon import REPO, Daemon, daemon_cli, daemon_env, running_daemon, short_tmpdir
from tests.support.waiting import wait_for
from tests.support.workers import finish_workers

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_changed_param_in_a_batch_of_500_is_dead_lettered(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("dead-letter")
        run.log_param("optimizer", "adam")
        for i in range(250):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        run.log_param("optimizer", "sgd")  # MLflow forbids changing a param
        for i in range(249):
            run.log_metric("acc", i / 250, step=i)
        with pytest.raises(tracker_client.CommitError) as err:
            run.flush()
        assert "optimizer" in str(err.value)
        assert [f.record.value for f in err.value.failures if f.record] == ["sgd"]
        run.end()
        status = d.status()
        t.close()
    assert status["committed"] == 500  # 250 + 249 metrics + the first param
    assert status["failed"] == status["dead_lettered"] == 1
    lines = (d.state_dir / "deadletter.jsonl").read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["record"] == ["p", run.run_id, "optimizer", "sgd"]
    assert entry["code"] == "INVALID_PARAMETER_VALUE"
    assert "adam" in entry["reason"] and "sgd" in entry["reason"]
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert client.get_run(run.run_id).data.params == {"optimizer": "adam"}
    assert len(client.get_metric_history(run.run_id, "loss")) == 250
    assert len(client.get_metric_history(run.run_id, "acc")) == 249


@pytest.mark.timeout(120)
def test_killed_worker_run_is_failed_within_10s_with_its_data(tmp_path: Path) -> None:
    script = tmp_path / "victim.py"
    script.write_text(
        "import sys, tracker_client\n"
        "t = tracker_client.connect(sys.argv[1])\n"
        "run = t.start_run('orphans', run_name='victim')\n"
        "for i in range(3000): run.log_metric('loss', float(i), step=i)\n"
        "run.flush()\n"
        "print(run.run_id, flush=True)\n"
        "sys.stdin.readline()\n"  # wait here, run open, until killed
    )
    with running_daemon(tmp_path) as d:
        proc = subprocess.Popen(
            [sys.executable, str(script), d.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=daemon_env(),
            cwd=REPO,
        )
        assert proc.stdout is not None
        run_id = proc.stdout.readline().decode().strip()
        assert run_id, "the victim did not start its run"
        client = MlflowClient(tracking_uri=d.backend_uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.communicate(timeout=10)
        wait_for(
            lambda: client.get_run(run_id).info.status == "FAILED",
            10.0,
            "the killed worker's run to become FAILED",
        )
        elapsed = time.monotonic() - killed_at
        run = client.get_run(run_id)
        assert "exited without ending" in run.data.tags["tracker.end_reason"]
        assert len(client.get_metric_history(run_id, "loss")) == 3000
        assert d.status()["orphaned_runs"] == 1
    print(f"orphaned run marked FAILED {elapsed:.2f} s after SIGKILL")


@pytest.mark.timeout(180)
def test_no_daemon_at_start_spools_then_import_lands_exactly_once(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    script = tmp_path / "offline.py"
    script.write_text(
        "import json, sys, tracker_client\n"
        "t = tracker_client.connect(sys.argv[1])\n"
        "run = t.start_run('offline-exp', run_name='offline', timeout=1.0)\n"
        "assert run.run_id.startswith('offline-'), run.run_id\n"
        "run.log_params({'lr': 0.01, 'layers': 4})\n"
        "for i in range(2000): run.log_metric('loss', 1.0 / (i + 1), step=i)\n"
        "run.set_tag('phase', 'offline')\n"
        "run.end()\n"
        "print(json.dumps({'offline_id': run.run_id}))\n"
    )
    env = daemon_env({"TRACKER_SPOOL_DIR": str(spool_dir), "TRACKER_EXIT_TIMEOUT": "5"})
    proc = subprocess.run(
        [sys.executable, str(script), address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    offline_id = json.loads(proc.stdout.strip().splitlines()[-1])["offline_id"]
    assert "continues offline" in proc.stderr
    spools = list(spool_dir.glob("*.spool"))
    assert len(spools) == 1, proc.stderr
    backup = tmp_path / "copy.spool"
    shutil.copyfile(spools[0], backup)

    d = Daemon(tmp_path / "state", address, tmp_path / "daemon.log")
    d.start()
    try:
        imp = daemon_cli("import", str(spools[0]), "--address", address, timeout=120)
        assert imp.returncode == 0, imp.stdout + imp.stderr
        assert f"run {offline_id} -> MLflow run" in imp.stdout
        assert not spools[0].exists()
        # importing the same data again (a copy) must not duplicate anything
        again = daemon_cli("import", str(backup), "--address", address, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    client = MlflowClient(tracking_uri=d.backend_uri)
    exps = [e for e in client.search_experiments(ViewType.ALL) if e.name == "offline-exp"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["tracker.offline_id"] == offline_id
    assert run.data.tags["phase"] == "offline"
    assert run.data.params == {"lr": "0.01", "layers": "4"}
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(2000))


@pytest.mark.timeout(180)
def test_daemon_imports_spools_of_dead_clients_from_its_spool_dir(tmp_path: Path) -> None:
    """A worker that ran and exited with no daemon up: the daemon finds the spool in its own
    spool dir and imports it on its own."""
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    state = tmp_path / "state"
    spool_dir = state / "spool"
    out = tmp_path / "w.json"
    spec = {"experiment": "auto-import", "keys": ["k"], "steps": 500, "end": "exit"}
    env_extra = {
        "TRACKER_SPOOL_DIR": str(spool_dir),
        "TRACKER_CONNECT_TIMEOUT": "1",
        "TRACKER_EXIT_TIMEOUT": "5",
    }
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "worker.py"), json.dumps(spec), str(out)],
        env=daemon_env({"TRACKER_DAEMON_ADDRESS": address, **env_extra}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    finish_workers([worker], timeout=60)
    offline_id = json.loads(out.read_text())["run_id"]
    assert offline_id.startswith("offline-")
    assert len(list(spool_dir.glob("*.spool"))) == 1

    d = Daemon(state, address, tmp_path / "daemon.log")
    d.start()
    try:
        wait_for(lambda: d.status()["spools_imported"] == 1, 60, "the daemon to import the spool")
        assert list(spool_dir.glob("*.spool")) == []
    finally:
        d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    client = MlflowClient(tracking_uri=d.backend_uri)
    exps = [e for e in client.search_experiments(ViewType.ALL) if e.name == "auto-import"]
    (run,) = client.search_runs([exps[0].experiment_id])
    assert run.data.tags["tracker.offline_id"] == offline_id
    assert len(client.get_metric_history(run.info.run_id, "k")) == 500
    # The worker exited normally, so its exit handler queued end_run(FINISHED) into the spool.
    assert run.info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_exit_with_no_daemon_spools_even_without_offline_mode(tmp_path: Path) -> None:
    """offline=False only changes what start_run does; records logged while the daemon is gone
    must still reach the spool at exit, and import must land them with the run ended."""
    spool_dir = tmp_path / "spool"
    script = tmp_path / "w.py"
    script.write_text(
        "import json, os, signal, sys, tracker_client\n"
        "t = tracker_client.connect(sys.argv[1], offline=False)\n"
        "run = t.start_run('exit-spool')\n"
        "run.log_metric('k', 0.0, step=0)\n"
        "run.flush()\n"
        "print(run.run_id, flush=True)\n"
        "sys.stdin.readline()\n"  # the test kills the daemon meanwhile
        "for i in range(1, 101): run.log_metric('k', float(i), step=i)\n"
    )
    with running_daemon(tmp_path) as d:
        proc = subprocess.Popen(
            [sys.executable, str(script), d.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=daemon_env({"TRACKER_SPOOL_DIR": str(spool_dir), "TRACKER_EXIT_TIMEOUT": "3"}),
        )
        assert proc.stdout is not None and proc.stdin is not None
        run_id = proc.stdout.readline().decode().strip()
        d.kill()
        out, err = proc.communicate(b"go\n", timeout=60)
        assert proc.returncode == 0, err.decode()
        spools = list(spool_dir.glob("*.spool"))
        assert len(spools) == 1, err.decode()
        d.start()
        imp = daemon_cli("import", str(spools[0]), "--address", d.address, timeout=60)
        assert imp.returncode == 0, imp.stdout + imp.stderr
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert sorted(m.step for m in client.get_metric_history(run_id, "k")) == list(range(101))
    assert client.get_run(run_id).info.status == "FINISHED"  # its exit end_run was spooled
