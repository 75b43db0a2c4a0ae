"""Crash and restart of a real daemon under load: kill -9 (repeatedly, during a blocked sink write,
inside the group-fsync window) and SIGTERM. After the restart every point a client logged must be
in MLflow exactly once: the journal replays what was accepted, clients resend what was not acked,
and the daemon drops the frames it already holds (deduped by (client_id, seq))."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import Daemon, running_daemon
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tests.support.workers import finish_workers, start_worker

pytestmark = pytest.mark.integration

KEYS = ["loss", "acc"]
# Workers' end() must ride through daemon restarts: a generous barrier timeout.
WORKER_END_TIMEOUT = "180"
GAVE_UP = "the request is kept and sent when a daemon answers"
TS = 1_700_000_000_000
Point = tuple[int, float, int]  # (step, value, timestamp)


# ------------------------------------------------------------------------------------------ helpers


@contextmanager
def reaped(procs: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Kill worker processes that are still running when the block exits (a failed test)."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def read_out(out: Path) -> dict[str, Any] | None:
    """A worker's OUT json, or None while it is missing or half written."""
    try:
        return json.loads(out.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def history(client: MlflowClient, run_id: str, key: str) -> list[Point]:
    return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


def compare(got: list[Point], want: list[Point]) -> tuple[int, int, int]:
    """(missing, duplicated, unexpected) points of ``got`` against the multiset ``want``."""
    g, w = Counter(got), Counter(want)
    missing = sum((w - g).values())
    duplicated = sum(n - w[pt] for pt, n in g.items() if pt in w and n > w[pt])
    unexpected = sum(n for pt, n in g.items() if pt not in w)
    return missing, duplicated, unexpected


def log_points(run: tracker_client.Run, steps: int) -> dict[str, list[Point]]:
    sent: dict[str, list[Point]] = {k: [] for k in KEYS}
    for step in range(steps):
        for i, key in enumerate(KEYS):
            value = step * 0.25 + i
            run.log_metric(key, value, step=step, timestamp=TS + step)
            sent[key].append((step, value, TS + step))
    return sent


def assert_exactly_once(backend_uri: str, run_id: str, sent: dict[str, list[Point]]) -> None:
    client = MlflowClient(tracking_uri=backend_uri)
    for key, want in sent.items():
        got = history(client, run_id, key)
        missing, duplicated, unexpected = compare(got, want)
        assert (missing, duplicated, unexpected) == (0, 0, 0), (
            f"run {run_id} key {key}: {missing} missing, {duplicated} duplicated, "
            f"{unexpected} unexpected of {len(want)} sent"
        )
        assert sorted(got) == sorted(want)


def check_workers(backend_uri: str, outs: list[Path]) -> dict[str, int]:
    """Compare MLflow with what every worker says it sent; return the totals."""
    client = MlflowClient(tracking_uri=backend_uri)
    totals = {"sent": 0, "committed": 0, "missing": 0, "duplicates": 0, "unexpected": 0}
    problems = []
    for out in outs:
        res = read_out(out)
        assert res is not None, f"{out} was not written"
        status = client.get_run(res["run_id"]).info.status
        if status != "FINISHED":
            problems.append(f"{out.name} run {res['run_id']} is {status}, not FINISHED")
        for key, rows in res["sent"].items():
            want = [(int(s), float(v), int(ts)) for s, v, ts in rows]
            got = history(client, res["run_id"], key)
            missing, duplicated, unexpected = compare(got, want)
            totals["sent"] += len(want)
            totals["committed"] += len(got)
            totals["missing"] += missing
            totals["duplicates"] += duplicated
            totals["unexpected"] += unexpected
            if missing or duplicated or unexpected:
                problems.append(
                    f"{out.name} run {res['run_id']} key {key}: {missing} missing, "
                    f"{duplicated} duplicated, {unexpected} unexpected of {len(want)}"
                )
    totals["problems"] = len(problems)
    assert not problems, "\n".join(problems)
    return totals


def release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


SNAPSHOT = ("received", "replayed", "committed", "duplicate_frames", "queue_depth")


def snapshot(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in SNAPSHOT}


def received_at_least(d: Daemon, n: int) -> dict[str, Any] | None:
    status = d.status()
    return status if status["received"] >= n else None


# --------------------------------------------------------------------------------------- the tests


@pytest.mark.timeout(240)
def test_kill9_daemon_repeatedly_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """8 workers × 2 keys × ``steps`` points while the daemon is killed -9 six times. The workers
    are released in waves (one wave per daemon life) so every life receives fresh records, and
    each kill waits until this life has received ``received_before_kill`` new records: it lands
    while frames are in flight or unacked, records are journaled but not committed, and the
    workers' end() barriers are pending (they are resent to the next life)."""
    steps = 8_000
    waves = [[0, 1], [2, 3], [4], [5], [6], [7]]  # workers released in each killed life
    received_before_kill = 3_000
    started = time.monotonic()
    outs = [tmp_path / f"w{i}.json" for i in range(8)]
    lives: list[dict[str, Any]] = []
    with running_daemon(tmp_path) as d, reaped([]) as procs:
        for i, out in enumerate(outs):
            spec = {
                "experiment": "kill9",
                "run_name": f"worker-{i}",
                "keys": KEYS,
                "steps": steps,
                "wait_stdin": True,
                "flush_timeout": float(WORKER_END_TIMEOUT),
            }
            procs.append(start_worker(d.address, spec, out))
        for life, wave in enumerate(waves):
            if life:
                d.start()
            for i in wave:
                release(procs[i])
            released = [outs[i] for w in waves[: life + 1] for i in w]
            # never kill between a worker's start_run and its reply: wait for its run id
            wait_for(
                lambda released=released: all(
                    (r := read_out(o)) is not None and r.get("run_id") for o in released
                ),
                60,
                f"the run ids of the workers released in life {life}",
            )
            status = wait_for(
                lambda: received_at_least(d, received_before_kill),
                60,
                f"daemon life {life} to receive {received_before_kill} records",
            )
            d.kill()
            lives.append(snapshot(status))
        d.start()  # the last life: nothing is killed any more
        stderr = finish_workers(procs, timeout=180)
        final = d.status()
        lives.append(snapshot(final))
        log_text = d.log()
    assert all("Traceback" not in e and GAVE_UP not in e for e in stderr), stderr
    assert "Traceback" not in log_text, log_text[-5000:]

    totals = check_workers(d.backend_uri, outs)
    kills = len(waves)
    summary = {
        "workers": len(outs),
        "steps_per_key": steps,
        "sent": totals["sent"],
        "committed": totals["committed"],
        "missing": totals["missing"],
        "duplicates": totals["duplicates"],
        "unexpected": totals["unexpected"],
        "kills": kills,
        "lives": lives,
        # status snapshots taken just before each kill: lower bounds for the killed lives
        "daemon_received_sum": sum(x["received"] for x in lives),
        "daemon_duplicate_frames_sum": sum(x["duplicate_frames"] for x in lives),
        "daemon_failed_last_life": final["failed"],
        "seconds": round(time.monotonic() - started, 1),
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nkill -9 summary: {json.dumps(summary)}")
    assert kills >= 5
    assert totals["sent"] == len(outs) * len(KEYS) * steps
    assert totals["committed"] == totals["sent"]
    assert final["failed"] == 0


@pytest.mark.timeout(120)
def test_kill9_during_sink_write(tmp_path: Path) -> None:
    """Another process holds an exclusive SQLite lock, so the daemon's log_batch is blocked inside
    SQLite; the daemon is killed -9 right there, the lock released, the daemon restarted."""
    steps = 400  # 800 records: one MLflow batch
    with running_daemon(tmp_path) as d:
        tracker = tracker_client.connect(d.address)
        run = tracker.start_run("sink-write-kill", run_name="blocked")
        transport = tracker._transport
        with sqlite_locked(d.state_dir / "mlflow.db"):
            sent = log_points(run, steps)
            total = steps * len(KEYS)
            # received, journaled and acked; none committed; all handed to the sink (the batch
            # left the queue): the write is in progress, blocked on the lock
            status = wait_for(
                lambda: (
                    (s := d.status())["received"] == total
                    and s["queue_depth"] == 0
                    and len(transport.session.unacked) == 0
                    and len(transport.outbox.queue) == 0
                    and s
                ),
                30,
                "the records to be received and handed to the (blocked) sink",
            )
            assert status["committed"] == 0, status
            assert d.status()["committed"] == 0
            assert "event=sink_error" not in d.log()  # the log_batch call has not returned yet
            d.kill()
        d.start()
        assert run.end(timeout=60) is True  # committed (and ended) within the timeout
        status = d.status()
        tracker.close()
    assert status["failed"] == 0, status
    assert status["replayed"] == total, status  # nothing was committed before the kill
    assert_exactly_once(d.backend_uri, run.run_id, sent)
    assert MlflowClient(tracking_uri=d.backend_uri).get_run(run.run_id).info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_kill9_inside_fsync_window(tmp_path: Path) -> None:
    """Acks wait for a group fsync every 3 s. The daemon is killed -9 after it received (and
    journaled, in the page cache) a burst but before it acked it. The restarted daemon replays
    the journal; the client's frames it already holds are acked by its welcome or dropped as
    duplicates when resent; end() succeeds and every point is in MLflow once."""
    steps = 1_500
    env = {"TRACKER_DAEMON_FSYNC_INTERVAL_MS": "3000"}
    with running_daemon(tmp_path, env=env) as d:
        tracker = tracker_client.connect(d.address)
        run = tracker.start_run("fsync-window", run_name="burst")
        transport = tracker._transport
        first_log = time.monotonic()
        sent = log_points(run, steps)
        total = steps * len(KEYS)
        wait_for(
            lambda: d.status()["received"] == total and len(transport.session.unacked) > 0,
            2.5,
            "the burst to be received but not acked (inside the 3 s fsync window)",
        )
        d.kill()
        window_used = time.monotonic() - first_log
        unacked_at_kill = len(transport.session.unacked)
        assert unacked_at_kill > 0, "the acks arrived before the kill"
        d.start()
        assert run.end(timeout=60) is True  # committed (and ended) within the timeout
        status = d.status()
        tracker.close()
    assert status["failed"] == 0, status
    # The restarted daemon accepted nothing new: every frame was already in its journal. Its
    # welcome acks them (acked_seq), so the client drops them from its resend set; a frame that was
    # still resent is dropped as a duplicate.
    assert status["received"] == 0, status
    print(
        f"\nfsync window: killed {window_used:.2f} s after the burst with {unacked_at_kill} "
        f"frame(s) unacked; restarted daemon: replayed {status['replayed']} records, "
        f"{status['duplicate_frames']} duplicate frame(s) dropped"
    )
    assert_exactly_once(d.backend_uri, run.run_id, sent)


@pytest.mark.timeout(150)
def test_sigterm_under_load_exits_zero_and_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    """SIGTERM while 4 workers stream: the daemon stops receiving, drains for at most
    drain_timeout_s, exits 0; after the restart the rest (journal + resends) lands exactly once.
    Two workers start first and build a backlog; the SIGTERM follows as soon as the other two
    have their runs, so it lands while they log. Every worker holds its run open after logging
    until the restarted daemon is up (a fast sink may commit a whole worker before the SIGTERM)."""
    drain_s = 5
    steps = 8_000
    total = 4 * steps * len(KEYS)
    outs = [tmp_path / f"w{i}.json" for i in range(4)]
    env = {"TRACKER_DAEMON_DRAIN_TIMEOUT_S": str(drain_s)}
    with running_daemon(tmp_path, env=env) as d, reaped([]) as procs:
        for i, out in enumerate(outs):
            spec = {
                "experiment": "sigterm",
                "run_name": f"worker-{i}",
                "keys": KEYS,
                "steps": steps,
                "wait_stdin": True,
                "hold_before_end": True,
                "flush_timeout": float(WORKER_END_TIMEOUT),
            }
            procs.append(start_worker(d.address, spec, out))
        for proc in procs[:2]:
            release(proc)
        before = wait_for(
            lambda: (s := d.status())["received"] >= 10_000 and s["queue_depth"] > 0 and s,
            60,
            "a backlog from the first two workers",
        )
        for proc in procs[2:]:
            release(proc)
        wait_for(
            lambda: all((r := read_out(o)) is not None and r.get("run_id") for o in outs),
            60,
            "every worker's run id",
        )
        assert all(p.poll() is None for p in procs), "a worker finished before the SIGTERM"
        t0 = time.monotonic()
        code = d.stop(signal.SIGTERM, timeout=drain_s + 15)
        took = time.monotonic() - t0
        assert code == 0, d.log()[-5000:]
        log_text = d.log()
        assert "event=stopping signal=SIGTERM" in log_text
        stopped = re.search(
            r"event=stopped received=(\d+) replayed=(\d+) committed=(\d+) failed=(\d+)", log_text
        )
        assert stopped is not None, log_text[-5000:]
        received, replayed, committed, failed = (int(x) for x in stopped.groups())
        assert committed + failed <= received + replayed, stopped[0]
        if committed + failed < received + replayed:  # the rest stayed journaled
            assert "event=drain_incomplete" in log_text, log_text[-5000:]
        d.start()
        for proc in procs:
            release(proc)  # now end the runs
        stderr = finish_workers(procs, timeout=120)
        after = d.status()
    assert all("Traceback" not in e and GAVE_UP not in e for e in stderr), stderr
    assert took < drain_s + 10, took
    assert before["committed"] < total
    assert after["failed"] == 0, after
    totals = check_workers(d.backend_uri, outs)
    assert totals["committed"] == totals["sent"] == total
    print(
        f"\nSIGTERM: exit 0 after {took:.1f} s (drain limit {drain_s} s); the stopped daemon had "
        f"received {stopped[1]} of {total} records and committed {stopped[2]}; restarted life: "
        f"replayed {after['replayed']}, received {after['received']}"
    )
