"""Hostile clients against a real daemon, from raw DEALER sockets in real processes: hellos that
claim pid 1 or vanish, runs of processes that are already dead, and another process using a
victim's client id (hello with a large acked_floor, a forged DATA frame, a flush). The daemon's
fds stay flat, real clients are served at once, dead clients' runs end FAILED, and the victim's
every point lands while the intruder is refused."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import REPO, Daemon, daemon_env, running_daemon
from tests.support.net import free_port, raw_dealer
from tests.support.waiting import wait_for
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

HOST = os.uname().nodename
TS = 1_700_000_000_000

# A raw client: ``python raw.py ADDRESS < CONNS_JSON``; CONNS is a list of connections, each a
# list of hex frames. Each connection sends its frames one at a time, waits for one reply to
# each, and is closed; prints, per connection, [kind, code-or-run_id] of each reply. With
# RAW_ROUTING_ID (hex) set, its sockets choose that ZeroMQ routing identity.
RAW = """
import json, os, sys, zmq
from tracker_client import protocol as p
address, conns = sys.argv[1], json.loads(sys.stdin.read())
ctx = zmq.Context()
out = []
for frames in conns:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if os.environ.get("RAW_ROUTING_ID"):
        sock.setsockopt(zmq.ROUTING_ID, bytes.fromhex(os.environ["RAW_ROUTING_ID"]))
    sock.connect(address)
    replies = []
    for frame in frames:
        sock.send(bytes.fromhex(frame))
        if not sock.poll(30000):
            replies.append(["none", ""])
            break
        msg = p.decode(sock.recv())
        extra = getattr(msg, "code", None) or getattr(msg, "run_id", "") or ""
        replies.append([type(msg).__name__, extra])
    sock.close(0)
    out.append(replies)
ctx.term()
print(json.dumps(out), flush=True)
"""


def raw_clients(
    tmp_path: Path, address: str, conns: list[list[bytes]], routing_id: bytes = b""
) -> list[list[list[str]]]:
    """Run the connections in a new process (which exits); return its replies."""
    script = tmp_path / "raw.py"
    script.write_text(RAW)
    done = subprocess.run(
        [sys.executable, str(script), address],
        input=json.dumps([[f.hex() for f in c] for c in conns]).encode(),
        env=daemon_env({"RAW_ROUTING_ID": routing_id.hex()}),
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )
    result: list[list[list[str]]] = json.loads(done.stdout)
    return result


def hello(cid: str, pid: int, floor: int = 0, req: int = 1) -> bytes:
    return p.encode(p.Hello(req, cid, pid, HOST, "0.0.0", floor))


def start_run(cid: str, req: int, name: str) -> bytes:
    return p.encode(p.StartRun(req, cid, experiment_name="hostile", run_name=name))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def tcp_daemon(root: Path, env: dict[str, str] | None = None) -> AbstractContextManager[Daemon]:
    """A daemon on tcp loopback: no kernel credentials, so claimed pids are what it has."""
    return running_daemon(root, env=env, address=f"tcp://127.0.0.1:{free_port()}")


def log_and_flush(address: str, points: int) -> tuple[str, float]:
    """A real client: start a run, log ``points`` metrics, flush, end; (run id, seconds)."""
    started = time.monotonic()
    t = tracker_client.connect(address, offline=False)
    run = t.start_run("hostile", run_name="good", timeout=10)
    for i in range(points):
        run.log_metric("good", float(i), step=i)
    run.flush(timeout=10)
    run.end()
    t.close()
    return run.run_id, time.monotonic() - started


# ---------------------------------------------------------------------- 9: fds


@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_2000_hellos_claiming_pid_1_keep_fds_flat_under_a_low_fd_limit(
    tmp_path: Path, transport: str
) -> None:
    ctx = running_daemon(tmp_path) if transport == "ipc" else tcp_daemon(tmp_path)
    with ctx as d:
        assert d.proc is not None
        pid = d.proc.pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))  # below 2,000 hellos
        before = fd_count(pid)
        conns = [[hello(f"pid1-{i:04d}", 1 if i % 2 else pid)] for i in range(2000)]
        replies = raw_clients(tmp_path, d.address, conns)
        kinds = [r[0][0] for r in replies]
        assert "none" not in kinds
        if transport == "ipc":  # the kernel's pid counts, not the claim: one process, 16 ids
            assert kinds.count("Welcome") == 16
            assert [r[0] for r in replies].count(["ErrorReply", "limit_exceeded"]) == 1984
        else:  # one id per connection; pid 1 watched once
            assert kinds.count("Welcome") == 2000
        after = fd_count(pid)
        status = d.status()
        assert after - before <= 4, (before, after)
        assert status["pidfds"] <= 2
        assert d.proc.poll() is None
        run_id, took = log_and_flush(d.address, 100)
        assert took < 10
        assert len(MlflowClient(d.backend_uri).get_metric_history(run_id, "good")) == 100
    print(f"{transport}: daemon fds {before} -> {after}; good client served in {took:.2f} s")


# ---------------------------------------------------------------------- 10: max_clients


@pytest.mark.timeout(180)
def test_2000_vanished_identities_do_not_lock_out_a_new_client(tmp_path: Path) -> None:
    with running_daemon(tmp_path, env={"TRACKER_DAEMON_MAX_CLIENTS": "50"}) as d:
        # 4 processes x 500 connections: connect, hello, close; each process then exits
        for n in range(4):
            conns = [[hello(f"gone-{n}-{i:03d}", 4242)] for i in range(500)]
            replies = raw_clients(tmp_path, d.address, conns)
            assert [r[0][0] for r in replies].count("Welcome") == 16  # per-process cap
        rejections = d.status()["limit_rejections"]
        assert rejections["max_clients_per_process"] == 4 * 484
        # and 2,000 more from this (live) process: 16 count, the rest are refused
        refused = 0
        for i in range(2000):
            with raw_dealer(d.address) as sock:
                sock.send(hello(f"here-{i:04d}", os.getpid()))
                assert sock.poll(30_000)
                refused += isinstance(p.decode(sock.recv()), p.ErrorReply)
        assert refused == 2000 - 16
        # a new client in a new process is served at once
        started = time.monotonic()
        out = tmp_path / "worker.json"
        worker = subprocess.run(
            [sys.executable, "-m", "tests.worker", json.dumps({"keys": ["m"], "steps": 50}), out],
            env=daemon_env({"TRACKER_DAEMON_ADDRESS": d.address}),
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        took = time.monotonic() - started
        assert worker.returncode == 0, worker.stderr.decode()[-2000:]
        run_id = json.loads(out.read_text())["run_id"]
        assert len(MlflowClient(d.backend_uri).get_metric_history(run_id, "m")) == 50
        assert took < 20
    print(f"new client's whole run after 4,000 vanished hellos: {took:.2f} s")


# ---------------------------------------------------------------------- 11: orphans


@pytest.mark.timeout(180)
def test_runs_of_dead_processes_and_dead_claimed_pids_become_failed(tmp_path: Path) -> None:
    runs: list[str] = []
    for sub in ("ipc", "tcp"):
        (tmp_path / sub).mkdir()
    # ipc: real processes start 50 runs (10 per process) and exit without ending them
    with running_daemon(tmp_path / "ipc") as d:
        for n in range(5):
            cid = f"exits-{n}"
            frames = [hello(cid, 1)] + [start_run(cid, 2 + i, f"r{i}") for i in range(10)]
            (replies,) = raw_clients(tmp_path, d.address, [frames])
            assert [k for k, _ in replies] == ["Welcome"] + ["RunStarted"] * 10
            runs += [rid for _, rid in replies[1:]]
        client = MlflowClient(d.backend_uri)
        wait_for(
            lambda: all(client.get_run(r).info.status == "FAILED" for r in runs),
            30,
            "the runs of the exited processes to be FAILED",
        )
        assert d.status()["orphaned_runs"] == 50
    # tcp: 50 runs from connections that claim an already dead pid (no kernel pid here)
    with tcp_daemon(tmp_path / "tcp") as d:
        gone = dead_pid()
        tcp_runs = []
        with raw_dealer(d.address) as sock:
            for n in range(5):
                cid = f"claims-dead-{n}"
                sock.send(hello(cid, gone))
                assert sock.poll(30_000) and isinstance(p.decode(sock.recv()), p.Welcome)
                for i in range(10):
                    sock.send(start_run(cid, 2 + i, f"d{i}"))
                    assert sock.poll(30_000)
                    reply = p.decode(sock.recv())
                    assert isinstance(reply, p.RunStarted), reply
                    tcp_runs.append(reply.run_id)
            client = MlflowClient(d.backend_uri)
            wait_for(
                lambda: all(client.get_run(r).info.status == "FAILED" for r in tcp_runs),
                30,
                "the runs of clients claiming a dead pid to be FAILED",
            )
        assert d.status()["orphaned_runs"] == 50
        tags = client.get_run(tcp_runs[0]).data.tags
        assert f"client process {gone}" in tags["tracker.end_reason"]


# ---------------------------------------------------------------------- 13-15: identity


@pytest.mark.timeout(180)
def test_another_process_cannot_use_a_victims_client_id(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        victim = tracker_client.connect(d.address, offline=False)
        run = victim.start_run("identity", run_name="victim")
        run.log_param("optimizer", "adam")
        run.flush()
        cid = victim.client_id
        assert all(cid not in json.dumps(c) for c in d.status()["clients"])  # only a prefix
        seq = victim._transport.session.seq
        forged = p.Metric(run.run_id, "forged", 666.0, TS, 0)
        attacks = [
            [hello(cid, os.getpid(), floor=10**9)],  # 13: ack the victim's frames away
            [p.encode(p.Data(cid, seq + 1, (forged,)))],  # 14: replace its next frame
            [p.encode(p.Flush(7, cid, 0, None))],  # 15: take its failures
        ]
        run.log_param("optimizer", "sgd")  # a failure the victim must be told about
        for i in range(500):
            run.log_metric("loss", float(i), step=i)
        replies = raw_clients(tmp_path, d.address, attacks)
        assert replies == [[["ErrorReply", "client_id_in_use"]]] * 3
        with pytest.raises(tracker_client.CommitError) as err:
            run.flush()
        assert [f.record.value for f in err.value.failures if f.record] == ["sgd"]
        for i in range(500, 1000):
            run.log_metric("loss", float(i), step=i)
        run.flush()
        run.end()
        victim.close()
        status = d.status()
        assert status["client_id_in_use"] == 3
        assert status["limit_rejections"]["client_id_in_use"] == 3
        client = MlflowClient(d.backend_uri)
        assert len(client.get_metric_history(run.run_id, "loss")) == 1000
        assert client.get_metric_history(run.run_id, "forged") == []
        assert client.get_run(run.run_id).data.params == {"optimizer": "adam"}


@pytest.mark.timeout(120)
def test_a_reconnecting_client_keeps_its_id_and_its_data_lands(tmp_path: Path) -> None:
    """The same process on a new connection (a daemon restart) is the same peer."""
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("identity", run_name="reconnect")
        for i in range(200):
            run.log_metric("m", float(i), step=i)
        run.flush()
        assert d.stop() == 0
        d.start()
        for i in range(200, 400):
            run.log_metric("m", float(i), step=i)
        run.flush(timeout=30)
        run.end()
        t.close()
        assert d.status()["client_id_in_use"] == 0
        assert len(MlflowClient(d.backend_uri).get_metric_history(run.run_id, "m")) == 400


@pytest.mark.timeout(120)
def test_a_routing_identity_reused_by_another_process_does_not_carry_the_binding(
    tmp_path: Path,
) -> None:
    """A peer may choose its ZeroMQ routing identity; after the victim's connection closes,
    another process takes it over. The kernel's pid, read for every frame, still tells them
    apart: the victim's id stays its own while the victim process lives."""
    rid = b"chosen-routing-id"
    cid = "v" * 32
    with running_daemon(tmp_path) as d:
        with raw_dealer(d.address, rid) as sock:
            sock.send(hello(cid, os.getpid()))
            assert sock.poll(30_000) and isinstance(p.decode(sock.recv()), p.Welcome)
        frames = [hello(cid, os.getpid(), floor=10**9), p.encode(p.Flush(2, cid, 0, None))]
        replies = raw_clients(tmp_path, d.address, [frames], routing_id=rid)
        assert replies == [[["ErrorReply", "client_id_in_use"]] * 2]
        with raw_dealer(d.address, rid) as sock:  # the victim process itself: still its id
            sock.send(hello(cid, os.getpid()))
            assert sock.poll(30_000)
            welcome = p.decode(sock.recv())
            assert isinstance(welcome, p.Welcome) and welcome.acked_seq == 0
