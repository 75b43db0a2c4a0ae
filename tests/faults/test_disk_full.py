"""A full disk under the daemon's own files: real tmpfs filesystems mounted by the test.

* The state dir on a small tmpfs that the test fills (and keeps filling) while workers log: the
  daemon refuses data (``journal_full``, the clients keep it) and keeps serving ``status`` (which
  shows the disk-full state). Killed (-9) with uncommitted entries while the disk is full, it
  starts on the full disk, replays and commits its journal, serves status; a SIGTERM on the full
  disk exits 0 and it starts again. Once the filler is gone every point the workers logged is in
  MLflow exactly once. The MLflow store is outside the tmpfs (locked for a while by the test, so
  that the journal holds uncommitted entries at the kill).
* The journal on a tmpfs smaller than one journal segment: the journal rolls small segments and
  reclaims committed ones, so more than twice the filesystem's size flows through it unaided.

Skipped, with the reason, where the test may not mount (not root, no tmpfs).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.support.daemon import Daemon, daemon_cli, short_tmpdir
from tests.support.disk import fill_disk, mounted_tmpfs
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tests.support.workers import finish_workers, start_worker

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


class Filler:
    """Keeps the filesystem full: whatever space appears (the daemon deleting its committed
    journal segments) is taken again at once, like another process filling the disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.n = 0

    def _run(self) -> None:
        while not self.halt.is_set():
            self.n += 1
            fill_disk(self.directory / f"filler-{self.n % 4}")
            self.halt.wait(0.005)

    def start(self) -> None:
        fill_disk(self.directory / "filler-0")
        self.thread.start()

    def stop(self) -> None:
        self.halt.set()
        if self.thread.is_alive():
            self.thread.join(10)
        for f in self.directory.glob("filler-*"):
            f.unlink()


def cli_status(d: Daemon) -> tuple[int, dict[str, Any]]:
    """``tracker-daemon status --json``: (exit code, document)."""
    proc = daemon_cli("status", "--address", d.address, "--json", timeout=30)
    return proc.returncode, json.loads(proc.stdout)


def check_stored(db: Path, results: list[dict[str, Any]], keys: list[str], steps: int) -> int:
    """Every point each worker logged is stored exactly once; returns the number checked."""
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    total = 0
    for res in results:
        for key in keys:
            history = client.get_metric_history(res["run_id"], key)
            got = sorted((m.step, m.value, m.timestamp) for m in history)
            sent = sorted((int(s), float(v), int(t)) for s, v, t in res["sent"][key])
            assert len(sent) == steps
            assert len(got) == steps, (res["run_id"], key, len(got))
            assert len({m.step for m in history}) == steps
            assert got == sent
            total += len(got)
    return total


def _clean_up(procs: list[subprocess.Popen[bytes]], d: Daemon, sock_dir: Path) -> None:
    """After a test, passed or failed: no worker or daemon outlives it."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if d.proc is not None and d.proc.poll() is None:
        d.stop()
    shutil.rmtree(sock_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 7. the state dir on a full disk


@pytest.mark.timeout(300)
def test_state_dir_on_a_full_disk_daemon_lives_and_every_point_lands(tmp_path: Path) -> None:
    keys, steps, workers = ["loss", "acc"], 15_000, 4
    state = tmp_path / "state"
    db = tmp_path / "mlflow.db"  # outside the tmpfs: commits go on while the disk is full
    sock_dir = short_tmpdir()
    with mounted_tmpfs(state, "24m"):
        d = Daemon(
            state,
            f"ipc://{sock_dir / 'd.sock'}",
            tmp_path / "daemon.log",
            [
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--default-artifact-root",
                str(tmp_path / "artifacts"),
            ],
        )
        procs: list[subprocess.Popen[bytes]] = []
        d.start()
        try:
            outs = [tmp_path / f"w{i}.json" for i in range(workers)]
            spec = {"experiment": "disk-full", "keys": keys, "steps": steps}
            spec |= {"pace": [100, 0.05], "flush_timeout": 240}  # logging takes 7.5 s
            procs += [
                start_worker(d.address, spec | {"run_name": f"w{i}"}, o) for i, o in enumerate(outs)
            ]
            total = workers * steps * len(keys)
            wait_for(
                lambda: (s := d.status())["received"] >= total // 5 and s["journal_mark"] != "1:0",
                60,
                "a fifth of the points received and a mark written",
            )
            pid = d.status()["pid"]
            filler = Filler(state)
            try:
                with sqlite_locked(db):  # commits stall: the journal holds uncommitted entries
                    wait_for(
                        lambda: d.status()["journal_outstanding_entries"] > 0,
                        30,
                        "uncommitted journal entries",
                    )
                    filler.start()
                    # the daemon refuses data it cannot journal, and says so
                    full = wait_for(
                        lambda: (s := d.status())["disk_full"] and s["journal_full"] and s,
                        60,
                        "status to show the full disk",
                    )
                    assert full["pid"] == pid and not full["healthy"]
                    assert any(r.startswith("journal_full") for r in full["unhealthy_reasons"])
                    assert full["received"] < total  # the rest waits in the clients
                    assert full["journal_outstanding_entries"] > 0
                    code, doc = cli_status(d)
                    assert code == 1 and doc["reachable"] and doc["disk_full"], doc
                    assert doc["journal_full_rejections"] > 0 and doc["pid"] == pid
                    # kill -9 with uncommitted entries in the journal, the disk still full
                    d.kill()
                # a start on the full disk: it replays and commits what the journal holds and
                # serves status (the backend is outside the full disk)
                d.start()
                drained = wait_for(
                    lambda: (
                        (s := d.status())["journal_outstanding_entries"] == 0
                        and s["disk_full"]
                        and s
                    ),
                    60,
                    "the restarted daemon to commit its journal on the full disk",
                )
                assert drained["pid"] != pid and drained["replayed"] > 0
                assert drained["committed"] >= drained["replayed"]
                # the CLI shows the state (the daemon reuses the space of segments it commits
                # and the filler takes it back, so the state may flicker: ask until it is seen)
                code, doc = wait_for(
                    lambda: (r := cli_status(d))[1]["disk_full"] and r,
                    60,
                    "tracker-daemon status of the restarted daemon to show disk_full",
                    interval=0.2,
                )
                assert code == 1 and doc["pid"] == drained["pid"]
                # SIGTERM on the full disk: the shutdown path cannot write either, exits 0
                assert d.stop(signal.SIGTERM) == 0
                d.start()
                wait_for(lambda: d.status()["disk_full"], 60, "disk_full after the second start")
            finally:
                filler.stop()
            # space is back: the daemon resumes by itself, the workers finish
            finish_workers(procs, 240)
            results = [json.loads(o.read_text()) for o in outs]
            assert check_stored(db, results, keys, steps) == total
            healthy = wait_for(
                lambda: (s := d.status())["healthy"] and not s["disk_full"] and s,
                30,
                "the daemon to be healthy again",
            )
            assert healthy["journal_full"] == "" and healthy["disk_problems"] == []
            assert healthy["task_restarts"] == 0 and healthy["task_failures"] == 0
            assert "event=task_failed" not in d.log()
            assert "Traceback" not in d.log()
        finally:
            _clean_up(procs, d, sock_dir)


# --------------------------------------------------------------------------------------------
# 8. the journal on a disk smaller than one segment


@pytest.mark.timeout(240)
def test_journal_smaller_than_one_segment_keeps_flowing(tmp_path: Path) -> None:
    keys, steps, workers = ["loss"], 40_000, 4
    state = tmp_path / "state"
    journal = state / "journal"
    sock_dir = short_tmpdir()
    with mounted_tmpfs(journal, "4m"):
        d = Daemon(state, f"ipc://{sock_dir / 'd.sock'}", tmp_path / "daemon.log")
        procs: list[subprocess.Popen[bytes]] = []
        d.start()  # default journal_segment_bytes: 64 MiB, sixteen times the filesystem
        try:
            first = d.status()
            assert first["journal_segment_limit_bytes"] < 4 * MiB
            outs = [tmp_path / f"w{i}.json" for i in range(workers)]
            spec = {"experiment": "small-journal", "keys": keys, "steps": steps}
            spec |= {"flush_timeout": 180}
            procs += [
                start_worker(d.address, spec | {"run_name": f"w{i}"}, o) for i, o in enumerate(outs)
            ]
            finish_workers(procs, 200)
            results = [json.loads(o.read_text()) for o in outs]
            total = workers * steps * len(keys)
            assert check_stored(state / "mlflow.db", results, keys, steps) == total
            s = wait_for(
                lambda: (
                    (s := d.status())["healthy"] and s["journal_outstanding_entries"] == 0 and s
                ),
                30,
                "a healthy daemon with everything committed",
            )
            assert s["received"] == s["committed"] == total and s["failed"] == 0
            assert s["journal_full"] == "" and not s["disk_full"]
            # more went through the journal than its filesystem holds: committed space was reused
            assert s["journal_appended_bytes"] > 2 * 4 * MiB, s["journal_appended_bytes"]
            assert s["task_restarts"] == 0
            assert "Traceback" not in d.log()
        finally:
            _clean_up(procs, d, sock_dir)
