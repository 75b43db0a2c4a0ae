"""``tracker-daemon status --watch`` against a real daemon process: N refreshes as N plain blocks
or N JSON lines, an unreachable daemon shown and retried, Ctrl-C (a real SIGINT) exits 0; and
the daemon's ``mlflow ui`` hint line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tracker_client
from tests.support.daemon import REPO, daemon_cli, daemon_env, running_daemon, short_tmpdir
from tracker_daemon.ops.hints import mlflow_ui_command

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_watch_counts_refreshes_and_shows_committed_records(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        with t.start_run("watch") as run:
            for i in range(50):
                run.log_metric("loss", float(i), step=i)
        t.close()
        expected = d.status()
        assert expected["queue_depth"] == 0

        started = time.monotonic()
        res = daemon_cli("status", "--address", d.address, "--watch", "0.2", "--count", "5")
        elapsed = time.monotonic() - started
        assert res.returncode == 0, res.stderr
        blocks = res.stdout.split("\n--- ")
        assert res.stdout.startswith("--- ") and len(blocks) == 5, res.stdout
        for block in blocks:
            assert f"committed           {expected['committed']}" in block, block
        assert "\x1b[" not in res.stdout  # not a terminal: no screen control
        assert elapsed >= 0.8  # four intervals of 0.2 s between five refreshes

        res = daemon_cli(
            "status", "--address", d.address, "--watch", "0.2", "--count", "4", "--json"
        )
        assert res.returncode == 0, res.stderr
        docs = [json.loads(line) for line in res.stdout.splitlines()]
        assert len(docs) == 4
        assert [(x["reachable"], x["committed"]) for x in docs] == [
            (True, expected["committed"])
        ] * 4
    # the daemon's hint: the same PATH and interpreter as this test, so the same command
    hints = [line for line in d.log().splitlines() if "event=hint" in line]
    assert len(hints) == 1
    assert hints[0].endswith(f"view_runs={mlflow_ui_command(d.backend_uri)!r}"), hints[0]


@pytest.mark.timeout(60)
def test_watch_shows_an_unreachable_daemon_and_keeps_trying() -> None:
    address = f"ipc://{short_tmpdir() / 'nobody.sock'}"
    res = daemon_cli(
        "status", "--address", address, "--watch", "0.2", "--count", "3", "--timeout", "0.3"
    )
    assert res.returncode == 1  # the last refresh: unreachable
    blocks = res.stdout.split("\n--- ")
    assert len(blocks) == 3
    assert all("tracker-daemon status: " in b for b in blocks), res.stdout
    res = daemon_cli(
        "status",
        "--address",
        address,
        "--watch",
        "0.2",
        "--count",
        "2",
        "--timeout",
        "0.3",
        "--json",
    )
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [x["reachable"] for x in docs] == [False, False]


@pytest.mark.timeout(120)
def test_ctrl_c_ends_a_watch_with_status_0(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        cmd = [sys.executable, "-m", "tracker_daemon.cli", "status", "--address", d.address]
        with subprocess.Popen(
            [*cmd, "--watch", "0.2", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=daemon_env(),
            cwd=REPO,
        ) as proc:
            assert proc.stdout is not None
            try:
                lines = [proc.stdout.readline() for _ in range(3)]  # blocks until 3 refreshes
                assert [json.loads(x)["reachable"] for x in lines] == [True] * 3
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err
                assert "Traceback" not in err
            finally:
                if proc.poll() is None:
                    proc.kill()


def test_bad_watch_options_are_usage_errors() -> None:
    assert daemon_cli("status", "--watch", "0").returncode == 2
    assert daemon_cli("status", "--count", "3").returncode == 2
    assert daemon_cli("status", "--watch", "1", "--count", "0").returncode == 2
