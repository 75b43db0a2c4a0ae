"""Access control and the limits that protect the daemon, over real sockets against a real daemon
process: ipc permissions, CURVE on tcp (allowed key, unknown key, plain-text client, keys added
while running), the refusal of non-loopback tcp without CURVE, and the ``limit_exceeded`` replies
for max_records_per_frame, max_open_runs_per_client, max_clients and max_frame_bytes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
import zmq
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import REPO, Daemon, daemon_env, running_daemon, short_tmpdir
from tests.support.net import free_port, raw_dealer
from tests.support.waiting import wait_for
from tracker_client import protocol as p
from tracker_client.wire.curve import ENV_CLIENT_KEY, ENV_SERVER_KEY

pytestmark = pytest.mark.integration

TS0 = 1_700_000_000_000


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tracker-daemon ARGS`` with TRACKER_CURVE_* from ``env`` only."""
    full = {k: v for k, v in daemon_env().items() if not k.startswith("TRACKER_CURVE_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=REPO,
        timeout=120,
    )


def use_keys(monkeypatch: pytest.MonkeyPatch, server: Path | None, client: Path | None) -> None:
    """Point TRACKER_CURVE_* (read by connect() and query_status) at these files, or unset."""
    for name, path in ((ENV_SERVER_KEY, server), (ENV_CLIENT_KEY, client)):
        if path is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(path))


# --------------------------------------------------------------------------------------------
# ipc


@pytest.mark.timeout(120)
def test_ipc_socket_is_0660_in_a_0770_dir_whatever_the_umask(tmp_path: Path) -> None:
    base = short_tmpdir()
    sock = base / "run" / "tracker-daemon" / "d.sock"
    old = os.umask(0)  # inherited by the daemon: without the chmods, everything would be 0777
    try:
        d = Daemon(tmp_path / "state", f"ipc://{sock}", tmp_path / "daemon.log").start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o770
        assert d.status()["auth"] == "none"
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
def test_existing_socket_dir_keeps_its_mode(tmp_path: Path) -> None:
    base = short_tmpdir()
    os.chmod(base, 0o750)
    try:
        d = Daemon(tmp_path / "state", f"ipc://{base}/d.sock", tmp_path / "daemon.log").start()
        try:
            assert stat.S_IMODE(base.stat().st_mode) == 0o750
            assert stat.S_IMODE((base / "d.sock").stat().st_mode) == 0o660
        finally:
            assert d.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# tcp and CURVE


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """server, alice (allowed) and bob (not allowed) key pairs from `tracker-daemon keygen`."""
    keydir = tmp_path / "keys"
    for name in ("server", "alice", "bob"):
        res = cli("keygen", str(keydir), "--name", name)
        assert res.returncode == 0, res.stderr
        assert f"{keydir / name}.key_secret" in res.stdout
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(keydir / "alice.key", allowed / "alice.key")
    return {"dir": keydir, "allowed": allowed}


def test_keygen_writes_a_private_secret_and_never_overwrites(keys: dict[str, Path]) -> None:
    from zmq.auth.certs import load_certificate

    keydir = keys["dir"]
    public, none = load_certificate(keydir / "server.key")
    public2, secret = load_certificate(keydir / "server.key_secret")
    assert none is None and public == public2 and secret
    assert stat.S_IMODE((keydir / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((keydir / "server.key").stat().st_mode) == 0o644
    before = (keydir / "server.key_secret").read_bytes()
    res = cli("keygen", str(keydir))  # default name: server
    assert res.returncode == 1 and "exists" in res.stderr
    assert (keydir / "server.key_secret").read_bytes() == before
    assert cli("keygen", str(keydir), "--name", "../x").returncode == 2


@contextmanager
def curve_daemon(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch, host: str = "127.0.0.1"
) -> Iterator[Daemon]:
    """A daemon on tcp with CURVE; the test process talks to it with the daemon's own key."""
    use_keys(monkeypatch, keys["dir"] / "server.key", keys["dir"] / "server.key_secret")
    monkeypatch.setenv("TRACKER_SPOOL_DIR", str(tmp_path / "spool"))  # refused clients spool
    port = free_port()
    d = Daemon(
        tmp_path / "state",
        f"tcp://{host}:{port}",
        tmp_path / "daemon.log",
        [
            "--curve-secret-key-file",
            str(keys["dir"] / "server.key_secret"),
            "--curve-allowed-clients-dir",
            str(keys["allowed"]),
        ],
    )
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            use_keys(monkeypatch, keys["dir"] / "server.key", keys["dir"] / "server.key_secret")
            assert d.stop() == 0, d.log()


@pytest.mark.timeout(240)
def test_curve_admits_allowed_keys_only(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_pub = keys["dir"] / "server.key"
    with curve_daemon(tmp_path, keys, monkeypatch) as d:
        assert d.status()["auth"] == "curve"
        address = d.address

        # an allowed client logs as usual
        use_keys(monkeypatch, server_pub, keys["dir"] / "alice.key_secret")
        alice = tracker_client.connect(address, offline=False)
        run = alice.start_run("curve", run_name="alice")
        run.log_params({"who": "alice"})
        for step in range(500):
            run.log_metric("loss", step * 0.5, step=step, timestamp=TS0 + step)
        run.end()
        alice.close()

        # an unknown key: the daemon drops the connection during the handshake, no answer
        use_keys(monkeypatch, server_pub, keys["dir"] / "bob.key_secret")
        bob = tracker_client.connect(address, offline=False)
        with pytest.raises(tracker_client.DaemonUnavailable, match="CURVE is on") as err:
            bob.start_run("curve", run_name="bob", timeout=3)
        assert "curve_allowed_clients_dir" in str(err.value)
        with pytest.raises(tracker_client.DaemonUnavailable):
            tracker_client.query_status(address, timeout=2)
        bob.close(timeout=2)

        # a plain-text client cannot even start the handshake
        use_keys(monkeypatch, None, None)
        plain = tracker_client.connect(address, offline=False)
        with pytest.raises(tracker_client.DaemonUnavailable):
            plain.start_run("curve", run_name="plain", timeout=3)
        plain.close(timeout=2)
        with pytest.raises(tracker_client.DaemonUnavailable):
            tracker_client.query_status(address, timeout=2)
        assert cli("status", "--address", address, "--timeout", "2").returncode == 1

        # the daemon's own key pair (an administrator holding its secret) is always accepted
        admin = {
            ENV_SERVER_KEY: str(server_pub),
            ENV_CLIENT_KEY: str(keys["dir"] / "server.key_secret"),
        }
        res = cli("status", "--address", address, env=admin)
        assert res.returncode == 0 and "auth: curve" in res.stdout, res.stdout + res.stderr
        use_keys(monkeypatch, server_pub, keys["dir"] / "server.key_secret")
        status = d.status()
        assert status["auth_denied"] >= 1
        assert "event=auth_denied mechanism=CURVE" in d.log()

        # a key added to the directory is accepted without a restart
        shutil.copy(keys["dir"] / "bob.key", keys["allowed"] / "bob.key")
        use_keys(monkeypatch, server_pub, keys["dir"] / "bob.key_secret")
        bob2 = tracker_client.connect(address, offline=False)
        run2 = bob2.start_run("curve", run_name="bob-now-allowed", timeout=20)
        run2.log_metric("x", 1.0, step=0)
        run2.end()
        bob2.close()
        assert "event=curve_keys_loaded" in d.log()

    client = MlflowClient(tracking_uri=d.backend_uri)
    got = client.get_run(run.run_id)
    assert got.data.params == {"who": "alice"} and got.info.status == "FINISHED"
    assert len(client.get_metric_history(run.run_id, "loss")) == 500
    assert [m.value for m in client.get_metric_history(run2.run_id, "x")] == [1.0]
    names = {r.info.run_name for r in client.search_runs(["1"], max_results=50)}
    assert names == {"alice", "bob-now-allowed"}


@pytest.mark.timeout(180)
def test_non_loopback_tcp_needs_curve(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    res = cli("run", "--state-dir", str(tmp_path / "plain"), "--address", f"tcp://0.0.0.0:{port}")
    assert res.returncode == 2
    assert "tracker-daemon: configuration error: address = 'tcp://0.0.0.0:" in res.stderr
    assert "only allowed on loopback" in res.stderr and "CURVE" in res.stderr
    assert not (tmp_path / "plain").exists()  # refused before touching anything
    # with CURVE, all interfaces are fine
    with curve_daemon(tmp_path, keys, monkeypatch, host="0.0.0.0") as d:
        use_keys(monkeypatch, keys["dir"] / "server.key", keys["dir"] / "alice.key_secret")
        status = tracker_client.query_status(d.address.replace("0.0.0.0", "127.0.0.1"))
        assert status["address"].startswith("tcp://0.0.0.0:") and status["auth"] == "curve"


def test_client_curve_settings_are_checked_at_connect(
    keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, keys["dir"] / "server.key", None)
    with pytest.raises(ValueError, match=f"{ENV_CLIENT_KEY} is not set"):
        tracker_client.connect("tcp://127.0.0.1:1")
    use_keys(monkeypatch, keys["dir"] / "server.key", keys["dir"] / "alice.key")
    with pytest.raises(ValueError, match="holds no secret key"):
        tracker_client.connect("tcp://127.0.0.1:1")
    use_keys(monkeypatch, keys["dir"] / "nope.key", keys["dir"] / "alice.key_secret")
    with pytest.raises(ValueError, match=f"{ENV_SERVER_KEY}=.*nope.key: cannot load it"):
        tracker_client.query_status("tcp://127.0.0.1:1")
    res = cli(
        "status",
        "--address",
        "tcp://127.0.0.1:1",
        env={ENV_SERVER_KEY: str(keys["dir"] / "server.key")},
    )
    assert res.returncode == 2 and f"{ENV_CLIENT_KEY} is not set" in res.stderr


# --------------------------------------------------------------------------------------------
# limits


def replies(sock: zmq.Socket[bytes], seconds: float) -> list[p.Message]:
    """Every reply that arrives within ``seconds``."""
    out: list[p.Message] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            out.append(p.decode(sock.recv(), max_frame=64 * 1024 * 1024))
    return out


def reply(sock: zmq.Socket[bytes], kind: type, timeout: float = 30.0) -> p.Message:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            msg = p.decode(sock.recv(), max_frame=64 * 1024 * 1024)
            if isinstance(msg, kind):
                return msg
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


def metrics(run_id: str, n: int, start: int = 0) -> list[list[object]]:
    return [
        ["m", run_id, "raw", float(i), TS0 + i, i, None, None, None]
        for i in range(start, start + n)
    ]


@pytest.mark.timeout(240)
def test_records_per_frame_open_runs_and_frame_size_limits(tmp_path: Path) -> None:
    env = {
        "TRACKER_DAEMON_MAX_RECORDS_PER_FRAME": "1000",
        "TRACKER_DAEMON_MAX_OPEN_RUNS_PER_CLIENT": "2",
        "TRACKER_DAEMON_MAX_FRAME_BYTES": "65536",
    }
    with running_daemon(tmp_path, env=env) as d:
        assert d.status()["limits"] == {
            "max_frame_bytes": 65536,
            "max_records_per_frame": 1000,
            "max_open_runs_per_client": 2,
            "max_clients": 10_000,
            "max_requests_per_client": 128,
            "max_requests": 4096,
        }
        # max_open_runs_per_client
        t = tracker_client.connect(d.address, offline=False)
        r1 = t.start_run("limits", run_name="r1")
        r2 = t.start_run("limits", run_name="r2")
        with pytest.raises(tracker_client.DaemonError) as err:
            t.start_run("limits", run_name="r3")
        assert err.value.code == "limit_exceeded"
        assert "max_open_runs_per_client = 2" in err.value.message
        assert "already has 2 open runs" in err.value.message
        assert t.start_run(run_id=r2.run_id).run_id == r2.run_id  # resuming its own run is fine
        r1.end()
        r4 = t.start_run("limits", run_name="r4")  # room again

        # max_records_per_frame: refused and not acked; a frame within the limit is
        with raw_dealer(d.address) as sock:
            cid = "raw-client-0001"
            sock.send(p.encode(p.Hello(1, cid, os.getpid(), "elsewhere", "test", 0)))
            assert isinstance(reply(sock, p.Welcome), p.Welcome)
            sock.send(p.encode_data(cid, 1, metrics(r4.run_id, 1001)))
            got = replies(sock, 2.0)
            assert len(got) == 1 and isinstance(got[0], p.ErrorReply), got
            assert got[0].req is None and got[0].code == "limit_exceeded"
            assert "max_records_per_frame = 1000" in got[0].message
            assert "holds 1001 records" in got[0].message and "not acknowledged" in got[0].message
            sock.send(p.encode_data(cid, 1, metrics(r4.run_id, 1000)))
            ack = reply(sock, p.Ack)
            assert isinstance(ack, p.Ack) and ack.seq == 1
            sock.send(p.encode(p.Flush(2, cid, 1, None)))
            done = reply(sock, p.Done)
            assert isinstance(done, p.Done) and done.failures == ()

            # max_frame_bytes: the protocol's frame_too_large, counted with the limits
            big = msgpack.packb([1, "status", {"req": 3, "pad": b"x" * 70_000}])
            assert 65536 < len(big) < 2 * 65536
            sock.send(big)
            err_reply = reply(sock, p.ErrorReply)
            assert isinstance(err_reply, p.ErrorReply) and err_reply.code == "frame_too_large"

        status = d.status()
        assert status["limit_rejections"] == {
            "max_frame_bytes": 1,
            "max_records_per_frame": 1,
            "max_open_runs_per_client": 1,
            "max_clients": 0,
            "max_clients_per_process": 0,
            "client_id_in_use": 0,
            "max_requests_per_client": 0,
            "max_requests": 0,
        }
        assert status["open_runs"] == 2
        log = d.log()
        assert "event=limit_exceeded limit=max_records_per_frame value=1000 kind=Data" in log
        assert "event=limit_exceeded limit=max_open_runs_per_client value=2 kind=StartRun" in log
        r2.end()
        r4.end()
        t.close()
    history = MlflowClient(tracking_uri=d.backend_uri).get_metric_history(r4.run_id, "raw")
    assert sorted(m.step for m in history) == list(range(1000))  # the refused frame never landed


HOLDER = """
import sys, tracker_client
t = tracker_client.connect(offline=False)
run = t.start_run("limits", run_name="holder", timeout=60)
print(run.run_id, flush=True)
sys.stdin.readline()
run.end()
"""


@pytest.mark.timeout(240)
def test_max_clients(tmp_path: Path) -> None:
    with running_daemon(tmp_path, env={"TRACKER_DAEMON_MAX_CLIENTS": "2"}) as d:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            env=daemon_env({"TRACKER_DAEMON_ADDRESS": d.address}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert len(holder.stdout.readline().strip()) == 32  # its run started
            t2 = tracker_client.connect(d.address, offline=False)
            t2.start_run("limits", run_name="second").end()
            assert len(d.status()["clients"]) == 2

            t3 = tracker_client.connect(d.address, offline=False)
            with pytest.raises(tracker_client.DaemonError) as err:
                t3.start_run("limits", run_name="third", timeout=30)
            assert err.value.code == "limit_exceeded"
            assert "max_clients = 2" in err.value.message
            t3.close(timeout=2)
            status = d.status()
            assert status["limit_rejections"]["max_clients"] >= 2  # its hello and its start_run
            assert len(status["clients"]) == 2
            assert "event=limit_exceeded limit=max_clients value=2" in d.log()

            # a client stops counting when its process exits
            holder.stdin.write(b"done\n")
            holder.stdin.flush()
            assert holder.wait(60) == 0
            wait_for(lambda: len(d.status()["clients"]) == 1, 60, "the holder to be forgotten")
            t4 = tracker_client.connect(d.address, offline=False)
            run4 = t4.start_run("limits", run_name="fourth", timeout=30)
            run4.log_metric("m", 1.0, step=0)
            run4.end()
            t4.close()
            t2.close()
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.wait(10)
            for pipe in (holder.stdin, holder.stdout, holder.stderr):
                if pipe is not None:
                    pipe.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    exp = client.get_experiment_by_name("limits")
    assert exp is not None
    names = {r.info.run_name for r in client.search_runs([exp.experiment_id])}
    assert names == {"holder", "second", "fourth"}
