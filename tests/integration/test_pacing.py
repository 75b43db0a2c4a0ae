"""Commit pacing at light load (pacing.py): a daemon logging an everyday rate commits a few
times a second instead of tens of times, the records still show up in the store without a
flush, and a barrier is answered at once whatever the interval."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_light_load_commits_a_few_times_a_second_and_everything_lands(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run("paced")
            base = d.status()["batches"]
            n, t0 = 0, time.monotonic()
            for tick in range(200):  # 1,000 points/s: 10 points every 10 ms for 2 s
                due = t0 + tick * 0.01
                time.sleep(max(0.0, due - time.monotonic()))
                for _ in range(10):
                    run.log_metric(f"k{n % 5}", n * 0.5, n // 5)
                    n += 1
            logged = time.monotonic()
            # no flush: the pacing alone brings them to the store, within the interval
            wait_for(lambda: d.status()["committed"] >= n, timeout=30, what="all committed")
            seen = time.monotonic()
            commits = d.status()["batches"] - base
            run.end()
        finally:
            tracker.close(5)
    # 2 s at 1,000/s: commits 500 ms apart at most (the default commit_interval_ms), not one
    # every batch_max_age_ms (50 ms: ~40 commits)
    assert commits <= 2 / 0.5 + 3, commits
    assert seen - logged < 10.0


@pytest.mark.timeout(120)
def test_a_barrier_is_answered_at_once_with_a_long_commit_interval(tmp_path: Path) -> None:
    env = {"TRACKER_DAEMON_COMMIT_INTERVAL_MS": "20000"}
    with running_daemon(tmp_path, env=env) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run("barrier")
            for i in range(100):
                run.log_metric("loss", i * 0.5, i)
            wait_for(lambda: d.status()["received"] >= 100, timeout=30, what="received")
            time.sleep(1.0)  # light load: nothing is due yet (20 s interval)
            assert d.status()["committed"] == 0
            t0 = time.monotonic()
            run.flush()  # the barrier makes this client's records due now
            took = time.monotonic() - t0
            assert d.status()["committed"] == 100
            run.end()
        finally:
            tracker.close(5)
    assert took < 5.0, took


@pytest.mark.timeout(120)
def test_light_load_fsyncs_a_few_times_a_second_and_every_frame_is_acked(tmp_path: Path) -> None:
    """Group fsync pacing (journal_sync.py): at 50 frames/s the journal is fsynced about 5 times
    a second (not every 50 ms) and the mark written about once a second (not after every
    commit); every frame is still acked (the client closes with nothing left to spool)."""
    with running_daemon(tmp_path) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run("fsync-paced")
            run.flush()
            time.sleep(1.5)  # the start's own fsyncs and mark are not the load's
            before, t0 = d.status(), time.monotonic()
            n = 0
            for tick in range(150):  # 500 points/s: 10 points every 20 ms for 3 s
                due = t0 + tick * 0.02
                time.sleep(max(0.0, due - time.monotonic()))
                for _ in range(10):
                    run.log_metric(f"k{n % 5}", n * 0.5, n // 5)
                    n += 1
            after, t1 = d.status(), time.monotonic()
            wait_for(lambda: d.status()["committed"] >= n, timeout=30, what="all committed")
            # acked after a group fsync, however stretched: nothing is left for the spool
            wait_for(
                lambda: not tracker._transport.session.unacked, timeout=10, what="every frame acked"
            )
            run.end()
        finally:
            tracker.close(5)
    seconds = t1 - t0
    fsyncs = (after["fsyncs"] - before["fsyncs"]) / seconds
    marks = (after["mark_writes"] - before["mark_writes"]) / seconds
    frames = (after["frames"] - before["frames"]) / seconds
    assert frames >= 20, frames  # the load really was many small frames
    # 50 ms apart would be ~20/s; stretched to 200 ms: ~5/s
    assert fsyncs <= 8, (fsyncs, frames)
    # after every commit (~2/s at this rate) it was; MARK_DELAY_S apart: ~1/s
    assert marks <= 1.5, marks
