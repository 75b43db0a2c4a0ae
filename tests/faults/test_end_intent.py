"""Runs end as their processes asked (issue 12): ``end_run`` is durable intent. Real daemon
subprocesses, real worker processes (tests/worker.py), the real SQLite store; the backlog is kept
uncommitted by a real outage (another process holding an exclusive lock on the database), so each
worker's ``run.end(status, timeout=0.5)`` gives up waiting and the process exits.

* The daemon is killed -9 with the whole backlog uncommitted and restarted: every run ends in the
  status its process asked for, every point is stored once, no run is ended as an orphan.
* No crash: the daemon commits once the store is back; the same holds.
* ``run --until-idle`` after a kill -9: it applies the ENDs the daemon held and imports the spool
  of a worker whose END no daemon ever received (it was down), applying that END too.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.support.daemon import Daemon, daemon_cli, running_daemon
from tests.support.store import points, sqlite_locked
from tests.support.waiting import wait_for
from tests.support.workers import finish_workers, start_worker

pytestmark = pytest.mark.integration

STEPS = 1500  # x 2 keys per worker
KEYS = ["loss", "acc"]
END_WAIT = 0.5  # run.end()'s timeout: far shorter than the commit takes here


@contextmanager
def workers(
    d: Daemon, tmp_path: Path, statuses: list[str], **extra: Any
) -> Iterator[tuple[dict[Path, str], list[subprocess.Popen[bytes]]]]:
    """Workers that started their run (the store must be up for that) and wait for "go" to log
    a burst, end with their status and exit; killed if still running when the block exits."""
    outs = {tmp_path / f"w{len(statuses)}-{i}.json": s for i, s in enumerate(statuses)}
    procs = []
    try:
        for out, status in outs.items():
            spec = {
                "experiment": "end-intent",
                "keys": KEYS,
                "steps": STEPS,
                "end": status,
                "flush_timeout": END_WAIT,
                "wait_after_start": True,
                **extra,
            }
            # spool where the daemon looks (the test session points clients elsewhere)
            spool_env = {"TRACKER_SPOOL_DIR": str(d.state_dir / "spool")}
            procs.append(start_worker(d.address, spec, out, spool_env))
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"started\n"
        yield outs, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def go(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()


def outcome(out: Path) -> dict[str, Any]:
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def ended_unconfirmed(outs: dict[Path, str]) -> None:
    """Each worker's end() returned False: it stopped waiting before the commit."""
    for out in outs:
        assert outcome(out)["ended"] is False, out.name


def stored_statuses(backend_uri: str, outs: dict[Path, str]) -> dict[str, str]:
    client = MlflowClient(tracking_uri=backend_uri)
    ids = [outcome(o)["run_id"] for o in outs]
    return {rid: client.get_run(rid).info.status for rid in ids}


def assert_as_asked(backend_uri: str, outs: dict[Path, str]) -> None:
    """Every run in the status its process asked for; every point stored exactly once."""
    want = {outcome(o)["run_id"]: status for o, status in outs.items()}
    wait_for(lambda: stored_statuses(backend_uri, outs) == want, 60, f"every run as asked: {want}")
    for out in outs:
        res = outcome(out)
        for key in KEYS:
            sent = [(int(s), float(v), int(t)) for s, v, t in res["sent"][key]]
            got = points(backend_uri, res["run_id"], key)
            assert len(sent) == STEPS and Counter(got) == Counter(sent), (out.name, key)


def spools(d: Daemon) -> list[str]:
    return sorted(p.name for p in (d.state_dir / "spool").glob("*.spool"))


@pytest.mark.timeout(150)
def test_ends_are_held_across_kill9_and_restart(tmp_path: Path) -> None:
    statuses = ["FINISHED", "FINISHED", "FAILED", "KILLED"]
    with running_daemon(tmp_path) as d, workers(d, tmp_path, statuses) as (outs, procs):
        with sqlite_locked(d.state_dir / "mlflow.db"):
            go(procs)
            finish_workers(procs, 120)  # each exits right after its end() gave up waiting
            ended_unconfirmed(outs)
            status = d.status()
            assert status["received"] == len(statuses) * STEPS * len(KEYS)
            assert status["committed"] == 0 and status["ends_pending"] == len(statuses)
            assert spools(d) == []  # an accepted END is not spooled: the daemon holds it
            d.kill()  # kill -9 with the whole backlog uncommitted
        d.start()  # the same state dir: the journal is replayed, the held ENDs restored
        assert_as_asked(d.backend_uri, outs)
        wait_for(lambda: d.status()["ends_applied"] == len(statuses), 30, "the ENDs applied")
        status = d.status()
        assert status["orphaned_runs"] == 0 and status["ends_pending"] == 0
        assert status["open_runs"] == 0
        assert "event=orphaned_run" not in d.log()


@pytest.mark.timeout(150)
def test_ends_are_applied_after_the_commit_without_a_crash(tmp_path: Path) -> None:
    statuses = ["FINISHED", "FAILED", "FINISHED"]
    with running_daemon(tmp_path) as d, workers(d, tmp_path, statuses) as (outs, procs):
        with sqlite_locked(d.state_dir / "mlflow.db"):
            go(procs)
            finish_workers(procs, 120)
            ended_unconfirmed(outs)
            assert d.status()["committed"] == 0
        # the store is back: the daemon commits, then sets each status (the processes are gone)
        assert_as_asked(d.backend_uri, outs)
        wait_for(lambda: d.status()["ends_applied"] == len(statuses), 30, "the ENDs applied")
        assert d.status()["orphaned_runs"] == 0
        assert "event=orphaned_run" not in d.log()


@pytest.mark.timeout(170)
def test_until_idle_applies_held_and_spooled_ends(tmp_path: Path) -> None:
    held = ["FINISHED", "KILLED"]
    with running_daemon(tmp_path) as d, workers(d, tmp_path, held) as (outs, procs):
        with workers(d, tmp_path, ["FAILED"], wait_before_end=True) as (late, (late_proc,)):
            with sqlite_locked(d.state_dir / "mlflow.db"):
                go([*procs, late_proc])
                finish_workers(procs, 120)
                ended_unconfirmed(outs)
                assert late_proc.stdout is not None
                assert late_proc.stdout.readline() == b"logged\n"
                total = (len(held) + 1) * STEPS * len(KEYS)
                wait_for(lambda: d.status()["received"] == total, 60, "every point journaled")
                d.kill()  # the late worker's END will find no daemon
                go([late_proc])
                finish_workers([late_proc], 60)  # end() gave up; its END went to the spool
                ended_unconfirmed(late)
                assert len(spools(d)) == 1
        drained = daemon_cli(
            "run", "--until-idle", "--state-dir", str(d.state_dir), "--address", d.address
        )
        assert drained.returncode == 0, drained.stderr
        assert "event=spool_imported" in drained.stderr and "event=idle" in drained.stderr
        assert "event=orphaned_run" not in drained.stderr
        assert spools(d) == []
        assert_as_asked(d.backend_uri, {**outs, **late})
        assert not (d.state_dir / "import.sock").exists()


@pytest.mark.timeout(120)
def test_until_idle_imports_the_spool_of_a_run_that_never_met_a_daemon(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "offline.json"
    spec = {"experiment": "end-intent", "keys": KEYS, "steps": STEPS, "end": "FAILED"}
    env = {"TRACKER_SPOOL_DIR": str(state / "spool"), "TRACKER_CONNECT_TIMEOUT": "0.5"}
    nowhere = f"ipc://{tmp_path / 'nobody.sock'}"
    finish_workers([start_worker(nowhere, spec, out, env)], 60)
    res = outcome(out)
    assert res["run_id"].startswith("offline-") and res["ended"] is False  # kept, spooled
    assert len(list((state / "spool").glob("*.spool"))) == 1
    drained = daemon_cli("run", "--until-idle", "--state-dir", str(state), "--address", nowhere)
    assert drained.returncode == 0, drained.stderr
    assert "event=spool_imported" in drained.stderr
    assert list((state / "spool").glob("*.spool")) == []
    backend = f"sqlite:///{state / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=backend)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("end-intent").experiment_id],
        f"tags.`tracker.offline_id` = '{res['run_id']}'",
    )
    assert run.info.status == "FAILED"  # as asked, not the orphan status
    assert "tracker.end_reason" not in run.data.tags
    for key in KEYS:
        sent = [(int(s), float(v), int(t)) for s, v, t in res["sent"][key]]
        assert Counter(points(backend, run.info.run_id, key)) == Counter(sent)
