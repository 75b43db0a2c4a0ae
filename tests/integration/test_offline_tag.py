"""The tag ``tracker.offline_id`` marks only runs that really went offline (PROTOCOL.md section
5.1), against a real daemon and the real SQLite store: a run whose ``start_run`` a daemon answered
in time has no such tag (in the MLflow UI it was the run's only visible tag and suggested an
outage); a run that started while no daemon answered carries its offline id. Runs imported from a
spool are covered by tests/faults/test_clients.py and test_client_loss.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import Daemon, running_daemon, short_tmpdir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TAG = "tracker.offline_id"


@pytest.mark.timeout(90)
def test_a_run_a_daemon_answered_has_no_offline_tag(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        try:
            run = t.start_run("online", run_name="plain")
            run.log_metric("loss", 0.5, step=1)
            assert run.end() is True
        finally:
            t.close()
        got = MlflowClient(d.backend_uri).get_run(run.run_id)
    assert TAG not in got.data.tags, got.data.tags
    assert got.data.metrics == {"loss": 0.5}


@pytest.mark.timeout(120)
def test_a_run_that_started_offline_carries_its_offline_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKER_SPOOL_DIR", str(tmp_path / "spool"))
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    d = Daemon(tmp_path / "state", address, tmp_path / "daemon.log")
    t = tracker_client.connect(address)
    try:
        run = t.start_run("was-offline", run_name="late", timeout=0.5)  # nobody answers
        offline_id = run.run_id
        assert offline_id.startswith("offline-")
        run.log_metric("loss", 0.25, step=1)
        d.start()  # the client connects by itself and delivers everything
        wait_for(lambda: not run.run_id.startswith("offline-"), 60, "the run's MLflow id")
        assert run.end() is True
    finally:
        t.close()
        if d.proc is not None:
            d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    got = MlflowClient(d.backend_uri).get_run(run.run_id)
    assert got.data.tags[TAG] == offline_id
    assert got.data.metrics == {"loss": 0.25}
