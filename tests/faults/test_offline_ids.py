"""Records under ``offline-…`` ids that no ``start_run`` ever named, against a real daemon on the
real SQLite store: they fail at once (``RESOURCE_DOES_NOT_EXIST``, the reason names the id,
reported to their sender's barrier) and never hold the commit lane, so a good client's flush
stays fast — also when the frame is replayed from the journal after a crash. An offline run whose
``start_run`` arrives just after its replayed records (a client resending it after the restart)
still gets every record."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import zmq
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

HOST = os.uname().nodename
TS = 1_700_000_000_000
FAST_S = 5.0  # a good client's flush while the bad records are around: well below 30 s a id


def offline_id() -> str:
    return f"offline-{uuid.uuid4().hex}"


def send_hello(sock: zmq.Socket[bytes], cid: str, req: int = 1) -> None:
    sock.send(p.encode(p.Hello(req, cid, os.getpid(), HOST, "0.0.0")))
    assert isinstance(recv_reply(sock, "hello"), p.Welcome)


def send_data(sock: zmq.Socket[bytes], cid: str, seq: int, records: list[p.Record]) -> None:
    sock.send(p.encode(p.Data(cid, seq, tuple(records))))
    reply = recv_reply(sock, f"data seq {seq}")
    assert reply == p.Ack(seq), reply


def flush(sock: zmq.Socket[bytes], cid: str, req: int, seq: int, timeout: float) -> p.Done:
    sock.send(p.encode(p.Flush(req, cid, seq, None)))
    reply = recv_reply(sock, "flush", timeout=timeout)
    assert isinstance(reply, p.Done), reply
    return reply


def good_flush_seconds(t: tracker_client.Tracker, run: tracker_client.Run, step: int) -> float:
    run.log_metric("good", float(step), step=step)
    started = time.monotonic()
    t.flush(timeout=120)
    return time.monotonic() - started


def assert_failed_for(done: p.Done, ids: list[str]) -> None:
    """Every record of ``ids`` came back failed, with a reason naming its id."""
    assert len(done.failures) == len(ids), done.failures
    for failure in done.failures:
        assert failure.record is not None
        assert failure.code == "RESOURCE_DOES_NOT_EXIST", failure
        assert failure.record.run_id in ids
        assert f"offline run {failure.record.run_id}" in failure.message, failure.message
    assert {f.record.run_id for f in done.failures if f.record is not None} == set(ids)


@pytest.mark.timeout(120)
def test_records_of_never_started_offline_ids_fail_at_once_and_stall_nobody(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("good", run_name="good", timeout=30)
        baseline = good_flush_seconds(t, run, 0)
        bad = "bad-" + uuid.uuid4().hex[:12]
        ids = [offline_id(), offline_id()]
        with raw_dealer(d.address) as sock:
            send_hello(sock, bad)
            frame = [p.Metric(oid, "x", 1.0, TS, 0) for oid in ids]
            send_data(sock, bad, 1, frame)  # one small frame, two ids nobody started
            latency = good_flush_seconds(t, run, 1)
            started = time.monotonic()
            done = flush(sock, bad, 2, 1, timeout=60)
            bad_latency = time.monotonic() - started
            assert_failed_for(done, ids)
            # remembered: the same ids again fail at once too
            send_data(sock, bad, 2, [p.Metric(oid, "x", 2.0, TS, 1) for oid in ids])
            latency2 = good_flush_seconds(t, run, 2)
            assert_failed_for(flush(sock, bad, 3, 2, timeout=60), ids)
        print(
            f"good flush: baseline {baseline * 1000:.0f} ms, with 2 unknown offline ids "
            f"{latency * 1000:.0f} ms, again {latency2 * 1000:.0f} ms; the bad records' "
            f"barrier {bad_latency * 1000:.0f} ms"
        )
        assert latency < FAST_S and latency2 < FAST_S
        assert bad_latency < FAST_S
        run.end()
        t.close()
        history = MlflowClient(d.backend_uri).get_metric_history(run.run_id, "good")
        assert sorted(m.step for m in history) == [0, 1, 2]  # the good client lost nothing
        assert d.proc is not None and d.proc.poll() is None


@pytest.mark.timeout(180)
def test_replayed_records_of_unknown_ids_stall_nobody_and_a_late_start_still_lands(
    tmp_path: Path,
) -> None:
    """Records buffered (60 s batch age) and journaled, then the daemon is killed: the next one
    replays them. Two ids nobody starts fail after the bounded wait, without holding the good
    client's flush; an id whose start_run comes after the restart (as a client resends an
    unanswered one) gets its records."""
    args = ("--batch-max-age-ms", "60000")
    bad, late = "bad-" + uuid.uuid4().hex[:12], "late-" + uuid.uuid4().hex[:12]
    ids, late_id = [offline_id(), offline_id()], offline_id()
    with running_daemon(tmp_path, *args) as d:
        with raw_dealer(d.address) as sock:
            send_hello(sock, bad)
            send_data(sock, bad, 1, [p.Metric(oid, "x", 1.0, TS, 0) for oid in ids])
        with raw_dealer(d.address) as sock:
            send_hello(sock, late)
            send_data(sock, late, 1, [p.Metric(late_id, "y", float(i), TS, i) for i in range(3)])
        d.kill()  # SIGKILL: nothing committed, everything in the journal
        d.start()  # replays the journal
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("good", run_name="good", timeout=30)
        with raw_dealer(d.address) as bad_sock:
            send_hello(bad_sock, bad, req=5)
            begun = time.monotonic()
            bad_sock.send(p.encode(p.Flush(6, bad, 1, None)))  # the unknown ids come due now
            latency = good_flush_seconds(t, run, 0)
            with raw_dealer(d.address) as sock:  # the late client resends its start_run
                send_hello(sock, late, req=5)
                msg = p.StartRun(6, late, experiment_name="late", offline_id=late_id)
                sock.send(p.encode(msg))
                started = recv_reply(sock, "start_run", timeout=60)
                assert isinstance(started, p.RunStarted), started
                assert flush(sock, late, 7, 1, timeout=60).failures == ()
            latency2 = good_flush_seconds(t, run, 1)
            done = recv_reply(bad_sock, "the bad client's flush", timeout=90)
            bad_latency = time.monotonic() - begun
            assert isinstance(done, p.Done), done
            assert_failed_for(done, ids)
        print(
            f"after the restart: good flush {latency * 1000:.0f} ms and "
            f"{latency2 * 1000:.0f} ms; the unknown ids failed after {bad_latency:.1f} s"
        )
        assert latency < FAST_S and latency2 < FAST_S
        history = MlflowClient(d.backend_uri).get_metric_history(started.run_id, "y")
        assert sorted(m.step for m in history) == [0, 1, 2]
        run.end()
        t.close()
        assert d.proc is not None and d.proc.poll() is None
