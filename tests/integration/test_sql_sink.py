"""The SQL writer in a real daemon on a real SQLite store: which sink is used and why (the
``sink`` setting and the schema guard), WAL mode, and the fallback to MLflow's log_batch when
the database refuses a transaction as a whole.

The writer's record-for-record equivalence with MLflow is test_sql_differential.py's business."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import REPO, daemon_command, daemon_env, running_daemon
from tests.support.mlflow_tables import rebuild_sqlite_table, sql_store
from tests.support.store import steps
from tests.support.waiting import wait_for

TS0 = 1_700_000_000_000
STEP_INT32 = "column metrics.step is INTEGER() in the database, MLflow has BigInteger()"


def store_whose_metrics_table_differs(state: Path) -> None:
    """A real MLflow store in ``state`` whose ``metrics.step`` is a 32-bit INTEGER: MLflow's
    log_batch still works on it (SQLite), the SQL writer's statements assume MLflow's BIGINT."""
    state.mkdir(parents=True)
    sql_store(f"sqlite:///{state / 'mlflow.db'}", state / "artifacts").engine.dispose()
    rebuild_sqlite_table(state / "mlflow.db", "metrics", "step BIGINT", "step INTEGER")


def journal_mode(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])


def log_and_end(address: str, name: str, n: int = 3000) -> str:
    t = tracker_client.connect(address, offline=False)
    run = t.start_run(name)
    run.log_param("lr", 0.1)
    run.set_tag("mlflow.runName", f"{name}-renamed")
    for i in range(n):
        run.log_metric("loss", float(i), step=i, timestamp=TS0 + i)
    run.end(timeout=60)
    t.close()
    return run.run_id


def check_run(backend_uri: str, run_id: str, name: str, n: int = 3000) -> None:
    assert steps(backend_uri, run_id, "loss") == list(range(n))
    r = MlflowClient(tracking_uri=backend_uri).get_run(run_id)
    assert r.data.params == {"lr": "0.1"} and r.info.status == "FINISHED"
    assert r.info.run_name == f"{name}-renamed" == r.data.tags["mlflow.runName"]
    assert r.data.metrics == {"loss": float(n - 1)}


@pytest.mark.compat
@pytest.mark.timeout(120)
def test_the_default_daemon_writes_sqlite_through_the_sql_writer_in_wal_mode(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as d:
        status = d.status()
        assert status["sink"].startswith("sql:"), status["sink"]
        assert journal_mode(d.state_dir / "mlflow.db") == "wal"
        run_id = log_and_end(d.address, "sql")
        s = d.status()
        assert s["committed"] == 3002 and s["sql_fallbacks"] == 0
        assert s["batches"] < 3002 // 1000 + 3  # many records per transaction
    assert "event=sql_writer_on dialect=sqlite" in d.log()
    check_run(d.backend_uri, run_id, "sql")


@pytest.mark.timeout(120)
def test_sink_mlflow_and_no_wal_keep_mlflows_own_path(tmp_path: Path) -> None:
    env = {"TRACKER_DAEMON_SQLITE_WAL": "0"}
    with running_daemon(tmp_path, "--sink", "mlflow", env=env) as d:
        assert d.status()["sink"] == "mlflow: log_batch per run (sink = mlflow)"
        assert journal_mode(d.state_dir / "mlflow.db") == "delete"
        run_id = log_and_end(d.address, "plain")
        assert d.status()["batches"] >= 3  # log_batch takes at most 1,000 metrics per call
    check_run(d.backend_uri, run_id, "plain")


@pytest.mark.timeout(120)
def test_a_metrics_table_that_differs_falls_back_to_log_batch_and_says_so(tmp_path: Path) -> None:
    store_whose_metrics_table_differs(tmp_path / "state")
    with running_daemon(tmp_path) as d:
        sink = d.status()["sink"]
        assert sink == f"mlflow: log_batch per run ({STEP_INT32})", sink
        run_id = log_and_end(d.address, "guarded")
    lines = [line for line in d.log().splitlines() if "event=sql_writer_off" in line]
    assert len(lines) == 1 and STEP_INT32 in lines[0], d.log()
    check_run(d.backend_uri, run_id, "guarded")


@pytest.mark.timeout(120)
def test_sink_sql_refuses_to_start_naming_the_difference_and_the_way_out(tmp_path: Path) -> None:
    import subprocess

    store_whose_metrics_table_differs(tmp_path / "state")
    cmd = daemon_command(tmp_path / "state", f"ipc://{tmp_path}/d.sock", "--sink", "sql")
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=100, env=daemon_env(), cwd=REPO
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "configuration error: sink = 'sql':" in res.stderr and STEP_INT32 in res.stderr
    assert "mlflow db upgrade" in res.stderr and "sink = 'auto'" in res.stderr


@pytest.mark.timeout(180)
def test_a_transaction_the_database_refuses_is_committed_by_log_batch(tmp_path: Path) -> None:
    """A real refusal: a trigger (standing for another writer's rows) makes the database reject
    the first latest_metrics row of key "boom" until a tag "allow" exists. The SQL transaction
    fails as a whole, the daemon counts a fallback and commits each run with MLflow's log_batch
    (which retries MLflow's INTERNAL_ERROR); once the trigger lets it pass, all lands once."""
    with running_daemon(tmp_path) as d:
        db = d.state_dir / "mlflow.db"
        with sqlite3.connect(db) as con:
            con.execute(
                "CREATE TRIGGER refuse_boom BEFORE INSERT ON latest_metrics "
                "WHEN NEW.key = 'boom' AND NOT EXISTS "
                "(SELECT 1 FROM tags WHERE key = 'allow' AND run_uuid = NEW.run_uuid) "
                "BEGIN SELECT RAISE(ABORT, 'refused by refuse_boom'); END"
            )
        t = tracker_client.connect(d.address, offline=False)
        good, bad = t.start_run("good"), t.start_run("bad")
        for i in range(500):
            good.log_metric("loss", float(i), step=i, timestamp=TS0 + i)
            bad.log_metric("boom", float(i), step=i, timestamp=TS0 + i)
        s = wait_for(lambda: (s := d.status())["sql_fallbacks"] >= 1 and s, 60, "a fallback")
        assert "refused by refuse_boom" in s["last_sink_error"]
        with sqlite3.connect(db) as con:
            con.execute(
                "INSERT INTO tags (key, value, run_uuid) VALUES ('allow', '1', ?)", (bad.run_id,)
            )
        good.end(timeout=90)
        bad.end(timeout=90)
        t.close()
        assert d.status()["failed"] == 0 and d.status()["committed"] == 1000
    assert steps(d.backend_uri, good.run_id, "loss") == list(range(500))
    assert steps(d.backend_uri, bad.run_id, "boom") == list(range(500))
    assert "event=sql_fallback" in d.log()
