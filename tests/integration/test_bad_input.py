"""Hostile and broken input against a real daemon: every undecodable frame gets an ``error`` reply
with the right code, nothing crashes, and a well-behaved client logging at the same time is not
disturbed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from mlflow import MlflowClient
from zmq.utils.monitor import recv_monitor_message

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tests.support.waiting import wait_for
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

MAX_FRAME = 65536
HARD_LIMIT = 2 * MAX_FRAME + 1024  # the daemon's ZMQ_MAXMSGSIZE
REPLY_TIMEOUT = 30.0
FAKE_RUN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
TS = 1_700_000_000_000


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def request(sock: zmq.Socket[bytes], frames: list[bytes], what: str) -> p.Message:
    sock.send_multipart(frames)
    return recv_reply(sock, what)


def frame_of_size(size: int, req: int) -> bytes:
    """A ``status`` envelope (plus an unknown ``pad`` field) of exactly ``size`` bytes."""
    base = len(pack([1, "status", {"req": req, "pad": b""}]))
    # bin8 header (2 bytes) for the empty pad becomes a bin32 header (5 bytes) when large
    frame = pack([1, "status", {"req": req, "pad": b"x" * (size - base - 3)}])
    assert len(frame) == size
    return frame


@dataclass(frozen=True)
class Bad:
    name: str
    frames: list[bytes]
    code: str
    req: int | None  # the req the error must echo (None: no readable int req)
    says: str  # a piece of the error message


def data_frame(**changes: Any) -> bytes:
    """A ``data`` envelope (one metric record) with some body fields replaced."""
    body: dict[str, Any] = {
        "client_id": "raw-bad-client",
        "seq": 1,
        "records": [metric_wire()],
    }
    body.update(changes)
    return pack([1, "data", body])


def metric_wire(value: Any = 0.5, step: Any = 1) -> list[Any]:
    return ["m", FAKE_RUN, "loss", value, TS, step, None, None, None]


def bad_frames() -> list[Bad]:
    valid_data = data_frame()
    p.decode(valid_data)  # sanity: the untruncated frame is valid
    status = p.encode(p.StatusRequest(40))
    welcome = p.Welcome(
        req=13, daemon_version="0.1.0", acked_seq=0, staging_dir="/tmp", max_frame=4096
    )
    flush_seq_str = {"req": 7, "client_id": "c", "seq": "3", "run_id": None}
    return [
        Bad("garbage", [b"\xc1\xc1\xffnot msgpack at all"], "bad_msgpack", None, "msgpack"),
        Bad("empty frame", [b""], "bad_msgpack", None, "msgpack"),
        Bad("truncated data", [valid_data[:-7]], "bad_msgpack", None, "msgpack"),
        Bad("trailing bytes", [status + b"\x00"], "bad_msgpack", None, "trailing"),
        # a map with a non-str key is not valid protocol msgpack (PROTOCOL.md 2): no req either
        Bad("map keyed by int 2", [pack({2: {"req": 16}})], "bad_msgpack", None, "map key"),
        Bad(
            "int key in body",
            [pack([1, "status", {"req": 17, 3: 1}])],
            "bad_msgpack",
            None,
            "map key",
        ),
        Bad("map, not array", [pack({"req": 3})], "bad_envelope", None, "envelope"),
        Bad("short envelope", [pack([1, "status"])], "bad_envelope", None, "envelope"),
        Bad("a string", [pack("hello")], "bad_envelope", None, "envelope"),
        Bad("body not a map", [pack([1, "status", [4]])], "bad_envelope", None, "body"),
        Bad("version a string", [pack(["1", "status", {"req": 4}])], "bad_envelope", 4, "version"),
        Bad("version 2", [pack([2, "status", {"req": 5}])], "unsupported_version", 5, "2"),
        Bad("version 0", [pack([0, "status", {"req": 55}])], "unsupported_version", 55, "0"),
        Bad("unknown kind", [pack([1, "ping", {"req": 6}])], "unknown_kind", 6, "'ping'"),
        Bad("kind an int", [pack([1, 7, {"req": 66}])], "unknown_kind", 66, "7"),
        Bad("data.seq a string", [data_frame(seq="1")], "bad_field", None, "data.seq"),
        Bad("records a map", [data_frame(records={"m": 1})], "bad_field", None, "data.records"),
        Bad("flush.seq a string", [pack([1, "flush", flush_seq_str])], "bad_field", 7, "flush.seq"),
        Bad(
            "status.req a string",
            [pack([1, "status", {"req": "8"}])],
            "bad_field",
            None,
            "status.req",
        ),
        Bad(
            "status.req negative",
            [pack([1, "status", {"req": -1, "x": 1}])],
            "bad_field",
            None,
            "'x'",
        ),
        Bad(
            "missing field",
            [pack([1, "flush", {"req": 9, "seq": 1, "run_id": None}])],
            "bad_field",
            9,
            "'client_id'",
        ),
        Bad(
            "unknown field",
            [pack([1, "status", {"req": 10, "extra": True}])],
            "bad_field",
            10,
            "'extra'",
        ),
        Bad(
            "non-string body key",
            [pack([1, "status", {"req": 14, b"k": 1}])],
            "bad_field",
            14,
            "every body key must be a string",
        ),
        Bad("70,000 bytes", [frame_of_size(70_000, 11)], "frame_too_large", 11, "70000 bytes"),
        Bad("two frames", [status, status], "bad_envelope", None, "one frame"),
        Bad("three frames", [status, b"", status], "bad_envelope", None, "one frame"),
        Bad("ack from a client", [p.encode(p.Ack(1))], "invalid_request", None, "Ack"),
        Bad("done from a client", [p.encode(p.Done(12, ()))], "invalid_request", 12, "Done"),
        Bad("welcome from a client", [p.encode(welcome)], "invalid_request", 13, "Welcome"),
        Bad(
            "error from a client",
            [p.encode(p.ErrorReply(15, "x", "y"))],
            "invalid_request",
            15,
            "ErrorReply",
        ),
    ]


# Records that do not decode: each fails alone (PROTOCOL.md 7), their frame is accepted.
UNREADABLE = [
    (metric_wire(value="high"), "data.records[0].value"),
    (metric_wire(step=1.5), "data.records[1].step"),
    (["x", FAKE_RUN, "k", "v"], "unknown record kind 'x'"),
]


def log_points(address: str, result: dict[str, Any], started: threading.Event) -> None:
    """The well-behaved neighbour: 5,000 points over 2 keys with explicit steps."""
    try:
        t = tracker_client.connect(address)
        run = t.start_run("bad-input-neighbour", run_name="good")
        result["run_id"] = run.run_id
        started.set()
        for step in range(2500):
            run.log_metric("loss", float(step), step=step)
            run.log_metric("acc", step / 2500, step=step)
            if step % 500 == 499:
                run.flush()  # barriers interleave with the rejected frames
        run.end()
        t.close()
    except BaseException as exc:  # reported by the main thread
        result["error"] = exc
    finally:
        started.set()


def wait_disconnected(monitor: zmq.Socket[bytes], timeout: float) -> list[int]:
    """Monitor events until the peer is disconnected; return the events seen."""
    events: list[int] = []
    deadline = time.monotonic() + timeout
    while zmq.EVENT_DISCONNECTED not in events:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0 or not monitor.poll(left_ms, zmq.POLLIN):
            raise AssertionError(f"no disconnect within {timeout:g} s; events: {events}")
        events.append(recv_monitor_message(monitor)["event"])
    return events


@pytest.mark.timeout(240)
def test_bad_frames_are_rejected_while_a_good_client_logs(tmp_path: Path) -> None:
    cases = bad_frames()
    with running_daemon(tmp_path, "--max-frame-bytes", str(MAX_FRAME)) as d:
        result: dict[str, Any] = {}
        started = threading.Event()
        good = threading.Thread(target=log_points, args=(d.address, result, started), daemon=True)
        good.start()
        wait_for(started.is_set, 60, "the good client to start its run")
        assert "error" not in result, result.get("error")

        with raw_dealer(d.address) as sock:
            for case in cases:
                reply = request(sock, case.frames, case.name)
                assert isinstance(reply, p.ErrorReply), (case.name, reply)
                assert reply.code == case.code, (case.name, reply)
                assert reply.req == case.req, (case.name, reply)
                assert case.says in reply.message, (case.name, reply)
            # a frame of records that do not decode is accepted; each fails alone
            frame = data_frame(client_id="raw-unreadable", records=[r for r, _ in UNREADABLE])
            sock.send(frame)
            flush = p.encode(p.Flush(98, "raw-unreadable", 1, None))
            replies = [request(sock, [flush], "flush after unreadable records")]
            while len(replies) < 2:  # its done, and the frame's ack (in either order)
                replies.append(recv_reply(sock, "flush after unreadable records"))
            assert p.Ack(1) in replies, replies
            (reply,) = [r for r in replies if not isinstance(r, p.Ack)]
            assert isinstance(reply, p.Done), reply
            assert len(reply.failures) == len(UNREADABLE)
            for failure, (_, says) in zip(reply.failures, UNREADABLE, strict=True):
                assert failure.record is None and says in failure.message, failure
            # the same connection still works after all those rejections
            reply = request(sock, [p.encode(p.StatusRequest(99))], "status after rejections")
            assert isinstance(reply, p.StatusReply)
            assert reply.req == 99
            assert reply.status["rejected_frames"] == len(cases)
            assert reply.status["last_rejection"].startswith("invalid_request: ErrorReply")

            # Above ZMQ_MAXMSGSIZE: ZeroMQ drops the connection, the daemon never sees the frame.
            with raw_dealer(d.address) as big:
                monitor = big.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
                try:
                    huge = frame_of_size(300_000, 77)
                    assert len(huge) > HARD_LIMIT
                    big.send(huge)
                    events = wait_disconnected(monitor, REPLY_TIMEOUT)
                    assert events[0] == zmq.EVENT_CONNECTED
                    # the daemon still answers (on another connection) ...
                    reply = request(sock, [p.encode(p.StatusRequest(100))], "status after huge")
                    assert isinstance(reply, p.StatusReply)
                    assert reply.req == 100
                    assert reply.status["rejected_frames"] == len(cases)  # not counted
                    # ... and never saw the dropped frame, so nothing came back for it
                    assert big.poll(0, zmq.POLLIN) == 0
                finally:
                    big.disable_monitor()
                    monitor.close(0)

        good.join(timeout=180)
        assert not good.is_alive(), "the good client did not finish"
        assert "error" not in result, result.get("error")

        status = d.status()
        assert status["rejected_frames"] == len(cases)
        assert status["received"] == status["committed"] + len(UNREADABLE) == 5003
        assert status["failed"] == len(UNREADABLE)  # the unreadable records, not the good ones
        assert status["duplicate_frames"] == 0
        assert d.proc is not None and d.proc.poll() is None

    client = MlflowClient(tracking_uri=d.backend_uri)
    run_id = result["run_id"]
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    acc = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "acc"))
    assert loss == [(s, float(s)) for s in range(2500)]
    assert acc == [(s, s / 2500) for s in range(2500)]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_records_breaking_mlflow_rules_fail_at_the_barrier(tmp_path: Path) -> None:
    cid = "raw-client-with-bad-records"
    long_key = "k" * 300
    with running_daemon(tmp_path, "--max-frame-bytes", str(MAX_FRAME)) as d:
        with raw_dealer(d.address) as sock:
            started = request(
                sock,
                [
                    p.encode(
                        p.StartRun(
                            req=1, client_id=cid, experiment_name="mlflow-rules", run_name="raw"
                        )
                    )
                ],
                "start_run",
            )
            assert isinstance(started, p.RunStarted)
            assert started.req == 1
            assert started.run_name == "raw"
            run_id = started.run_id

            too_long = p.Metric(run_id, long_key, 1.0, TS, 0)
            ok = [p.Metric(run_id, "ok", 0.5, TS, 0), p.Metric(run_id, "ok", 0.25, TS, 1)]
            ack = request(
                sock,
                [p.encode(p.Data(client_id=cid, seq=1, records=(ok[0], too_long)))],
                "data seq 1",
            )
            assert ack == p.Ack(1)
            done = request(
                sock, [p.encode(p.Flush(req=2, client_id=cid, seq=1, run_id=None))], "flush seq 1"
            )
            assert isinstance(done, p.Done)
            assert done.req == 2
            assert len(done.failures) == 1
            failure = done.failures[0]
            assert failure.code == "INVALID_PARAMETER_VALUE"
            assert failure.record == too_long
            assert "300 characters" in failure.message
            assert "250" in failure.message

            dotdot = p.Metric(run_id, "../x", 2.0, TS, 0)
            ack = request(
                sock,
                [p.encode(p.Data(client_id=cid, seq=2, records=(dotdot, ok[1])))],
                "data seq 2",
            )
            assert ack == p.Ack(2)
            done = request(
                sock, [p.encode(p.Flush(req=3, client_id=cid, seq=2, run_id=run_id))], "flush seq 2"
            )
            assert isinstance(done, p.Done)
            assert done.req == 3
            assert len(done.failures) == 1
            failure = done.failures[0]
            assert failure.code == "INVALID_PARAMETER_VALUE"
            assert failure.record == dotdot
            assert "'../x'" in failure.message
            assert "'..'" in failure.message

            done = request(
                sock, [p.encode(p.Flush(req=4, client_id=cid, seq=2, run_id=None))], "second flush"
            )
            assert done == p.Done(4, ())  # failures are reported once

        status = d.status()
        assert d.proc is not None and d.proc.poll() is None
        assert status["rejected_frames"] == 0
        assert status["received"] == 4
        assert status["committed"] == 2
        assert status["failed"] == 2

    client = MlflowClient(tracking_uri=d.backend_uri)
    assert set(client.get_run(run_id).data.metrics) == {"ok"}
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "ok"))
    assert history == [(0, 0.5), (1, 0.25)]


@pytest.mark.timeout(120)
def test_data_with_seq_below_one_is_dropped_not_pinned(tmp_path: Path) -> None:
    """PROTOCOL.md: seq >= 1. A first message with seq 0 from an unknown client must be treated
    like a duplicate (dropped, acked with 0), not journaled and delivered but never settled."""
    cid = "raw-client-seq-zero"
    with running_daemon(tmp_path, "--max-frame-bytes", str(MAX_FRAME)) as d:
        with raw_dealer(d.address) as sock:
            started = request(
                sock,
                [p.encode(p.StartRun(req=1, client_id=cid, experiment_name="seq-zero"))],
                "start_run",
            )
            assert isinstance(started, p.RunStarted)
            run_id = started.run_id
            zero = p.Metric(run_id, "zero", 1.0, TS, 0)
            one = p.Metric(run_id, "one", 2.0, TS, 0)
            for seq, rec in ((0, zero), (-5, zero), (1, one)):
                sock.send(p.encode(p.Data(client_id=cid, seq=seq, records=(rec,))))
            # acks are cumulative and may be coalesced: read until seq 1 is acked
            acks = [recv_reply(sock, "acks")]
            while acks[-1] != p.Ack(1):
                acks.append(recv_reply(sock, "acks"))
            assert set(acks) <= {p.Ack(0), p.Ack(1)}, acks
            flush = p.encode(p.Flush(req=2, client_id=cid, seq=1, run_id=None))
            assert request(sock, [flush], "flush seq 1") == p.Done(2, ())

        status = wait_for(
            lambda: (s := d.status())["journal_outstanding_entries"] == 0 and s,
            30,
            "the journal to release every settled entry",
        )
        assert status["received"] == status["committed"] == 1
        assert status["duplicate_frames"] == 2
        assert status["rejected_frames"] == 0
        assert d.proc is not None and d.proc.poll() is None

    client = MlflowClient(tracking_uri=d.backend_uri)
    assert set(client.get_run(run_id).data.metrics) == {"one"}


@pytest.mark.timeout(60)
def test_resent_duplicate_is_acked(tmp_path: Path) -> None:
    cid = "raw-client-resend"
    with running_daemon(tmp_path, "--max-frame-bytes", str(MAX_FRAME)) as d:
        with raw_dealer(d.address) as sock:
            started = request(
                sock,
                [p.encode(p.StartRun(req=1, client_id=cid, experiment_name="resend"))],
                "start_run",
            )
            assert isinstance(started, p.RunStarted)
            frame = p.encode(
                p.Data(client_id=cid, seq=1, records=(p.Metric(started.run_id, "k", 1.0, TS, 0),))
            )
            assert request(sock, [frame], "data seq 1") == p.Ack(1)
            sock.send(frame)  # a resend, e.g. after a lost ack: must be dropped but acked
            assert recv_reply(sock, "the duplicate's ack", timeout=10.0) == p.Ack(1)
        assert d.status()["duplicate_frames"] == 1
