"""Progress of long operations, as an operator reading a log sees it (stderr is no terminal here,
so the plain ``event=progress`` lines): ``run --until-idle`` over a journal of 200,000 records
and ``import`` of a spool. Real daemons, a real SQLite store, a real spool."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tracker_client
from tests.support.daemon import REPO, Daemon, daemon_cli, daemon_env, running_daemon, short_tmpdir
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

FIELDS = re.compile(r"(\w+)=(\S+)")


def progress_lines(stderr: str, op: str) -> list[dict[str, str]]:
    """The key=value fields of every ``event=progress op=OP`` line."""
    return [
        dict(FIELDS.findall(line))
        for line in stderr.splitlines()
        if "event=progress" in line and f" op={op} " in line
    ]


@pytest.mark.timeout(240)
def test_until_idle_over_200k_journaled_records_shows_progress_to_the_total(
    tmp_path: Path,
) -> None:
    n = 200_000
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("progress")
        with sqlite_locked(d.state_dir / "mlflow.db"):
            for i in range(n):
                run.log_metric("loss", float(i), step=i)
            wait_for(lambda: d.status()["received"] == n, 120, "the daemon to journal them all")
            wait_for(
                lambda: len(t._transport.session.unacked) == 0, 60, "acks (journaled and fsynced)"
            )
            assert d.status()["committed"] == 0
            d.kill()  # SIGKILL while the backend is locked: all of them only in the journal
        t._transport.close(1.0)
    drained = daemon_cli(
        "run",
        "--until-idle",
        "--state-dir",
        str(d.state_dir),
        "--address",
        d.address,
        timeout=180,
        env={"TRACKER_PROGRESS_INTERVAL_S": "0.5"},
    )
    assert drained.returncode == 0, drained.stderr
    lines = progress_lines(drained.stderr, "drain")
    assert len(lines) >= 2, drained.stderr
    assert (lines[0]["done"], lines[0]["total"]) == ("0", str(n))  # the total, from the start
    assert (lines[-1]["done"], lines[-1]["total"]) == (str(n), str(n))
    assert lines[-1]["percent"] == "100.0" and lines[-1]["eta_s"] == "0"
    assert all(x["unit"] == "records" and x["total"] == str(n) for x in lines)
    dones = [int(x["done"]) for x in lines]
    assert dones == sorted(dones)
    print(drained.stderr)
    assert "\r" not in drained.stderr  # no terminal: no redrawn line
    assert drained.stderr.index("event=progress") < drained.stderr.index("event=idle")
    with sqlite3.connect(d.state_dir / "mlflow.db") as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (run.run_id,)
        ).fetchone()
    assert count == n


@pytest.mark.timeout(180)
def test_import_of_a_spool_shows_progress_to_the_total(tmp_path: Path) -> None:
    n = 30_000
    spool_dir = tmp_path / "spool"
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    script = tmp_path / "offline.py"
    script.write_text(
        "import sys, tracker_client\n"
        "t = tracker_client.connect(sys.argv[1])\n"
        "run = t.start_run('progress-import', timeout=1.0)\n"
        "assert run.run_id.startswith('offline-'), run.run_id\n"
        f"for i in range({n}): run.log_metric('loss', 1.0 / (i + 1), step=i)\n"
        "run.end()\n"
    )
    env = daemon_env({"TRACKER_SPOOL_DIR": str(spool_dir), "TRACKER_EXIT_TIMEOUT": "5"})
    proc = subprocess.run(
        [sys.executable, str(script), address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    (spool,) = spool_dir.glob("*.spool")
    d = Daemon(tmp_path / "state", address, tmp_path / "daemon.log")
    d.start()
    try:
        imp = daemon_cli(
            "import",
            str(spool),
            "--address",
            address,
            timeout=120,
            env={"TRACKER_PROGRESS_INTERVAL_S": "0.2"},
        )
    finally:
        d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert imp.returncode == 0, imp.stdout + imp.stderr
    n += 1  # the tag tracker.offline_id the client adds to a run no daemon answered
    assert f"{spool}: {n} record(s) in" in imp.stdout
    lines = progress_lines(imp.stderr, "import")
    assert len(lines) >= 2, imp.stderr
    assert (lines[0]["done"], lines[0]["total"]) == ("0", str(n))
    assert (lines[-1]["done"], lines[-1]["total"]) == (str(n), str(n))
    assert all(x["path"] == f'"{spool}"' for x in lines)
    dones = [int(x["done"]) for x in lines]
    assert dones == sorted(dones)
    print(imp.stderr)
    assert "\r" not in imp.stderr
