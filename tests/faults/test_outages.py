"""Fault injection: a locked MLflow backend, a damaged journal, a full journal.

Real daemon process, real MLflow SQLite store; the backend outage is a real exclusive SQLite lock
held by another process (``sqlite_locked``), so the daemon's sink sees "database is locked".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import Daemon, running_daemon
from tests.support.stats import percentile
from tests.support.store import points, sqlite_locked
from tests.support.waiting import wait_for
from tracker_client import protocol as p
from tracker_client.wire.framing import HEADER, scan

pytestmark = pytest.mark.integration

TS0 = 1_700_000_000_000
TICK_S = 0.01  # paced logging: PER_TICK points every TICK_S (2,000 points/s)
PER_TICK = 20


def _expected(steps: list[int] | range) -> list[tuple[int, float, int]]:
    return [(s, s * 0.5, TS0 + s) for s in steps]


def _journal_frames(journal: Path) -> list[tuple[Path, int, bytes]]:
    """Every frame of every segment: (segment file, offset, payload)."""
    out = []
    for seg in sorted(journal.glob("*.seg")):
        result = scan(seg.read_bytes())
        assert result.problem is None, (seg, result.problem)
        out += [(seg, off, payload) for off, payload in result.frames]
    return out


def _journaled_and_acked(d: Daemon, t: tracker_client.Tracker, n: int) -> bool:
    """The daemon journaled ``n`` records and the client holds nothing unacked."""
    return bool(
        d.status()["received"] == n
        and len(t._transport.outbox.queue) == 0
        and len(t._transport.session.unacked) == 0
    )


def _steps_in(payload: bytes) -> set[int]:
    """The metric steps of one journal entry (b"D" + the client's DATA frame)."""
    assert payload[:1] == b"D"
    msg = p.decode(payload[1:])
    assert isinstance(msg, p.Data)
    return {r.step for r in msg.records if isinstance(r, p.Metric)}


# --------------------------------------------------------------------------------------------
# 1. a 30 s backend outage


@pytest.mark.timeout(150)
def test_backend_locked_30s_workers_unaffected_nothing_lost(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("outage", run_name="locked-30s")
        step = 0
        samples: list[tuple[str, float, int, dict[str, Any]]] = []  # phase, time, logged, status

        def paced(phase: str, done: Callable[[], bool], costs: list[int] | None) -> None:
            """Log PER_TICK points per tick (timing each call) and sample the daemon's status
            every 0.5 s, until ``done()``. Identical in every phase, so costs compare."""
            nonlocal step
            next_tick = next_probe = time.monotonic()
            while not done():
                for _ in range(PER_TICK):
                    t0 = time.perf_counter_ns()
                    run.log_metric("loss", step * 0.5, step=step, timestamp=TS0 + step)
                    if costs is not None:
                        costs.append(time.perf_counter_ns() - t0)
                    step += 1
                now = time.monotonic()
                if now >= next_probe:
                    samples.append((phase, now, step, d.status()))
                    next_probe = now + 0.5
                next_tick += TICK_S
                time.sleep(max(0.0, next_tick - time.monotonic()))

        def after(seconds: float) -> Callable[[], bool]:
            end = time.monotonic() + seconds
            return lambda: time.monotonic() >= end

        baseline: list[int] = []
        outage: list[int] = []
        paced("warmup", after(1.0), None)
        paced("baseline", after(5.0), baseline)
        before = d.status()
        assert before["sink_retries"] == 0 and before["committed"] > 0

        with sqlite_locked(d.state_dir / "mlflow.db"):
            locked_at = time.monotonic()
            hard_deadline = locked_at + 60.0

            def outage_over() -> bool:
                # at least 30 s, and until the daemon has reported the sink error (MLflow's
                # SQLite busy timeout is 20 s, so the first "database is locked" comes at ~20 s)
                if time.monotonic() > hard_deadline:
                    raise AssertionError(f"no sink error reported during the outage: {samples}")
                last = samples[-1][3] if samples else {}
                seen = last.get("sink_retries", 0) > 0 and "locked" in last["last_sink_error"]
                return seen and time.monotonic() - locked_at >= 30.0

            paced("outage", outage_over, outage)
            during = [s for s in samples if s[0] == "outage" and s[1] >= locked_at + 1.0]
            assert len(during) >= 40
            first, last = during[0][3], during[-1][3]
            # the sink reports the outage and retries ...
            assert last["sink_retries"] >= 1 and "database is locked" in last["last_sink_error"]
            # ... nothing commits while the database is locked ...
            assert last["committed"] == first["committed"]
            # ... yet the daemon keeps accepting: received, buffered and journaled data grow
            assert last["received"] > first["received"] + 40_000
            assert last["queue_depth"] > first["queue_depth"]
            assert last["journal_bytes"] > first["journal_bytes"]
            assert last["journal_full"] == ""
            logged_then = during[-1][2]
            assert last["received"] >= logged_then - 4 * PER_TICK * 100  # within ~4 s of logging
            assert len(t._transport.session.unacked) < t._transport.max_inflight  # acks kept coming
            outage_s = time.monotonic() - locked_at

        released = time.monotonic()
        # the barrier: everything logged is committed (True; False: not within the timeout)
        assert run.end(timeout=120) is True
        drain_s = time.monotonic() - released
        t.close()
        status = d.status()
        log = d.log()

    assert "event=sink_error" in log and "database is locked" in log
    assert status["failed"] == 0
    assert status["committed"] == status["received"] == step
    assert status["queue_depth"] == 0 and status["journal_full"] == ""
    assert points(d.backend_uri, run.run_id, "loss") == _expected(range(step))  # every point, once
    assert MlflowClient(tracking_uri=d.backend_uri).get_run(run.run_id).info.status == "FINISHED"

    b50, b99 = percentile(baseline, 0.5), percentile(baseline, 0.99)
    o50, o99 = percentile(outage, 0.5), percentile(outage, 0.99)
    print(
        f"\nlog_metric per-call cost: baseline p50={b50 / 1000:.1f} us p99={b99 / 1000:.1f} us "
        f"({len(baseline)} calls); 30 s outage p50={o50 / 1000:.1f} us p99={o99 / 1000:.1f} us "
        f"({len(outage)} calls); outage lasted {outage_s:.1f} s, drain after release "
        f"{drain_s:.1f} s, {step} points"
    )
    # Not a speed target: this guards against log_metric blocking on the database (which would
    # cost milliseconds to seconds per call while it is locked). A few microseconds of noise
    # between phases are fine.
    assert o50 <= max(5 * b50, 20_000)


# --------------------------------------------------------------------------------------------
# 2. a damaged journal tail


@pytest.mark.parametrize("damage", ["flipped-crc-and-garbage", "torn-tail"])
@pytest.mark.timeout(120)
def test_torn_journal_tail_garbage_and_flipped_crc(tmp_path: Path, damage: str) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("torn-journal", run_name=damage)
        with sqlite_locked(d.state_dir / "mlflow.db"):  # nothing commits: the journal keeps all
            for batch in range(3):
                for step in range(batch * 100, (batch + 1) * 100):
                    run.log_metric("x", step * 0.5, step=step, timestamp=TS0 + step)
                wait_for(
                    partial(_journaled_and_acked, d, t, (batch + 1) * 100),
                    30,
                    f"batch {batch} journaled and acked",
                )
            assert d.status()["committed"] == 0
            d.kill()  # SIGKILL: no shutdown, no mark

        journal = d.state_dir / "journal"
        frames = _journal_frames(journal)
        assert set().union(*(_steps_in(payload) for _, _, payload in frames)) == set(range(300))
        seg, last_off, last_payload = frames[-1]
        assert seg == sorted(journal.glob("*.seg"))[-1]
        lost = _steps_in(last_payload)
        data = seg.read_bytes()
        assert len(data) == last_off + HEADER.size + len(last_payload)
        if damage == "flipped-crc-and-garbage":
            bad = bytearray(data[last_off:])
            bad[HEADER.size + len(last_payload) // 2] ^= 0x10  # one bit inside the payload
            cut = bytes(bad) + b"\x00\xffGARBAGE after the last frame\x13\x37" * 4
        else:
            cut = data[last_off : last_off + HEADER.size + len(last_payload) // 2]  # torn write
        seg.write_bytes(data[:last_off] + cut)

        log_before = len(d.log())
        d.start()  # the backend is free again; a damaged journal is no reason to refuse to start
        restart_log = d.log()[log_before:]
        assert "event=journal_quarantine" in restart_log, restart_log
        assert f"segment={seg.name}" in restart_log
        quarantine = {q.name: q.read_bytes() for q in (journal / "quarantine").iterdir()}
        assert quarantine == {f"{seg.name}.{last_off}.bad": cut}
        assert seg.stat().st_size == last_off

        good = sorted(set(range(300)) - lost)
        status = wait_for(
            lambda: (s := d.status())["committed"] == len(good) and s,
            60,
            "the replayed records to be committed",
        )
        assert status["replayed"] == len(good) and status["failed"] == 0
        assert run.end(timeout=60) is True
        t.close()

    # The records of the good frames are in MLflow. The damaged frame had been acked, so the
    # client no longer holds it: corruption of an acked frame loses that frame. It is not
    # silently dropped — its bytes are in journal/quarantine/ for inspection, with a log line.
    assert points(d.backend_uri, run.run_id, "x") == _expected(good)
    assert lost and not lost & set(good)
    assert MlflowClient(tracking_uri=d.backend_uri).get_run(run.run_id).info.status == "FINISHED"


# --------------------------------------------------------------------------------------------
# 3. a full journal


@pytest.mark.timeout(120)
def test_journal_full_stops_acking_and_loses_nothing(tmp_path: Path) -> None:
    env = {
        "TRACKER_DAEMON_JOURNAL_SEGMENT_BYTES": "4096",
        "TRACKER_DAEMON_JOURNAL_MAX_BYTES": "65536",
    }
    with running_daemon(tmp_path, env=env) as d:
        t = tracker_client.connect(d.address, offline=False)
        transport = t._transport
        run = t.start_run("journal-full")
        step = 0

        def log(n: int) -> None:
            nonlocal step
            for _ in range(n):
                run.log_metric("y", step * 0.5, step=step, timestamp=TS0 + step)
                step += 1

        def full() -> dict[str, Any]:
            log(20)
            s = d.status()
            return s if s["journal_full"] else {}

        with sqlite_locked(d.state_dir / "mlflow.db"):
            s = wait_for(full, 30, "the daemon to refuse frames (journal_full)", interval=0.02)
            assert "journal_max_bytes" in s["journal_full"]
            assert s["journal_bytes"] <= 65536 and s["committed"] == 0
            wait_for(lambda: "event=journal_full" in d.log(), 10, "event=journal_full logged")
            at_full = step
            # Over several of the client's 1 s retry rounds: still refused, still unacked, and
            # the client keeps everything the daemon has not taken (a bit more logged meanwhile;
            # few enough records that every frame fits an empty 64 KiB journal).
            for _ in range(6):
                log(50)
                time.sleep(0.5)
                s = d.status()
                assert s["journal_full"], s
                assert len(transport.session.unacked) > 0
            assert s["received"] < step
        released = time.monotonic()
        assert run.end(timeout=90) is True  # everything was accepted and committed
        drain_s = time.monotonic() - released
        status = d.status()
        t.close()
        spooled = list((d.state_dir / "spool").glob("*.spool"))
        log_text = d.log()

    print(
        f"\njournal full after {at_full} points; {step} logged; drained {drain_s:.1f} s after "
        "release"
    )
    assert "event=journal_accepting_again" in log_text
    assert spooled == []
    assert status["failed"] == 0 and status["journal_full"] == ""
    assert status["committed"] == status["received"] == step
    assert points(d.backend_uri, run.run_id, "y") == _expected(
        range(step)
    )  # before and during full, once
