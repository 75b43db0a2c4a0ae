"""`tracker-daemon run --until-idle`: commit what a crashed daemon left in its journal, exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import daemon_cli, running_daemon
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_until_idle_commits_the_journal_of_a_killed_daemon_and_exits(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("until-idle")
        with sqlite_locked(d.state_dir / "mlflow.db"):
            for i in range(3000):
                run.log_metric("loss", float(i), step=i)
            wait_for(lambda: d.status()["received"] == 3000, 60, "the daemon to journal 3000")
            wait_for(
                lambda: len(t._transport.session.unacked) == 0, 30, "acks (journaled and fsynced)"
            )
            assert d.status()["committed"] == 0
            d.kill()  # SIGKILL while the backend is locked: all 3000 only in the journal
        t._transport.close(1.0)
    drained = daemon_cli(
        "run", "--until-idle", "--state-dir", str(d.state_dir), "--address", d.address, timeout=120
    )
    assert drained.returncode == 0, drained.stderr
    assert "event=idle" in drained.stderr
    # it served no client: no "ready" nor the UI hint, but what it does; records counted by origin
    assert "event=ready" not in drained.stderr and "event=hint" not in drained.stderr
    assert "event=draining " in drained.stderr and "journal_records=3000" in drained.stderr
    assert "event=stopped received=0 replayed=3000 committed=3000 failed=0" in drained.stderr
    assert not Path(d.address[len("ipc://") :]).exists()  # it never listened
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "loss")) == list(
        range(3000)
    )
