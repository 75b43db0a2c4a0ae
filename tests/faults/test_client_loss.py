"""Client-side loss: a full spool disk and the offline mode's exit spool (real daemon
subprocesses, real worker processes, a real tmpfs mounted by the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support import store
from tests.support.daemon import REPO, Daemon, daemon_cli, daemon_env, short_tmpdir
from tests.support.disk import fill_disk, mounted_tmpfs
from tests.support.waiting import wait_for
from tracker_client import protocol as p
from tracker_client.delivery.spool import Spool

pytestmark = pytest.mark.integration

# Worker for the full-spool test: logs 200,000 points offline with the default policy "spool"
# and max_buffer 10,000, reports what flush() raised, then waits for a line on stdin and ends
# the run (the daemon is up by then).
FULL_SPOOL_WORKER = """
import json, sys
import tracker_client
t = tracker_client.connect(max_buffer=10_000)
run = t.start_run("loss", timeout=1.0)
errors = 0
for i in range(200_000):
    try:
        run.log_metric("k", float(i), step=i)
    except Exception:
        errors += 1
out = {"errors": errors, "offline_id": run.offline_id}
try:
    run.flush(timeout=1.0)
    out["flush"] = "returned"
except tracker_client.RecordsDropped as exc:
    out.update(flush="RecordsDropped", count=exc.count, message=str(exc))
except Exception as exc:
    out["flush"] = repr(exc)
out["dropped"] = t._transport.outbox.dropped
print(json.dumps(out), flush=True)
sys.stdin.readline()
t._transport.wait_welcome(30)  # the daemon is up: wait for ZeroMQ to reconnect (<= 2 s)
end = {}
try:
    end["end"] = "ok" if run.end(timeout=120) else "not committed within 120 s"
except Exception as exc:
    end["end"] = repr(exc)
end["run_id"] = run.run_id
print(json.dumps(end), flush=True)
t.close()
"""

OFFLINE_EXIT_WORKER = """
import tracker_client
t = tracker_client.connect()
run = t.start_run("offline-exit", timeout=1.0)
for i in range(100_000):
    run.log_metric("k", float(i), step=i)
print(run.offline_id, flush=True)
"""  # exits without ending the run: the exit handler spools the end_run (FINISHED)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as mnt:
        yield mnt


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` completely; returns the filler file."""
    filler = directory / "filler"
    fill_disk(filler)
    return filler


def worker(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=daemon_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def new_daemon(root: Path, address: str) -> Daemon:
    return Daemon(root / "state", address, root / "daemon.log")


def history(d: Daemon, run_id: str) -> list[int]:
    return store.steps(d.backend_uri, run_id, "k")


@pytest.mark.timeout(240)
def test_full_spool_disk_loses_nothing_silently(tmp_path: Path, small_tmpfs: Path) -> None:
    spool_dir = small_tmpfs / "spool"
    spool_dir.mkdir()
    filler = fill(small_tmpfs)
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    env = {
        "TRACKER_DAEMON_ADDRESS": address,
        "TRACKER_SPOOL_DIR": str(spool_dir),
        "TRACKER_CONNECT_TIMEOUT": "1",
    }
    proc = worker(FULL_SPOOL_WORKER, env)
    d = new_daemon(tmp_path, address)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        out = json.loads(line)
        assert out["errors"] == 0  # log calls never raise
        assert out["flush"] == "RecordsDropped", out
        dropped = out["count"]
        assert dropped == out["dropped"] > 0  # every drop is reported, once
        assert f"{dropped} record(s)" in out["message"]
        assert "No space left on device" in out["message"]
        # space comes back: the worker (still alive) writes its overflow to the spool by itself
        filler.unlink()
        wait_for(
            lambda: any(f.stat().st_size > 0 for f in spool_dir.glob("*.spool")),
            30,
            "the worker to write its spool once there is space",
        )
        d.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        end = json.loads(proc.stdout.readline() or "{}")
        assert end.get("end") == "ok", (end, proc.stderr.read() if proc.stderr else "")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
    steps = history(d, end["run_id"])
    assert len(steps) == 200_000 - dropped  # every point not reported as dropped, stored
    assert len(set(steps)) == len(steps)  # exactly once
    assert MlflowClient(d.backend_uri).get_run(end["run_id"]).info.status == "FINISHED"
    print(f"full spool: dropped {dropped}, stored {len(steps)}")


@pytest.mark.timeout(240)
def test_offline_run_that_exits_is_imported_by_the_daemon(tmp_path: Path) -> None:
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    d = new_daemon(tmp_path, address)
    spool_dir = d.state_dir / "spool"  # the daemon's own spool dir: it imports by itself
    spool_dir.mkdir(parents=True)
    env = {
        "TRACKER_DAEMON_ADDRESS": address,
        "TRACKER_SPOOL_DIR": str(spool_dir),
        "TRACKER_CONNECT_TIMEOUT": "1",
    }
    proc = worker(OFFLINE_EXIT_WORKER, env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    offline_id = stdout.strip()
    spools = list(spool_dir.glob("*.spool"))
    assert len(spools) == 1
    s = Spool(spools[0])
    s.open()
    frames = [p.decode(f, max_frame=2**31) for f in s.read_all()]
    s.close(remove_if_empty=False)
    data = [m for m in frames if isinstance(m, p.Data)]
    records = [r for m in data for r in m.records]
    assert sum(isinstance(r, p.Metric) for r in records) == 100_000
    # and the run's offline tag, the one record that is not a metric (set when it went offline)
    assert [(r.key, r.value) for r in records if not isinstance(r, p.Metric)] == [
        ("tracker.offline_id", offline_id)
    ]
    assert max(len(m.records) for m in data) <= 1000  # within every daemon's limits
    d.start()
    try:
        wait_for(lambda: not spools[0].exists(), 120, "the daemon to import the spool")
        # the file goes first, the log line follows it
        wait_for(lambda: "event=spool_imported" in d.log(), 10, "the import's log line")
    finally:
        d.stop()
    run = MlflowClient(d.backend_uri).search_runs(
        [MlflowClient(d.backend_uri).get_experiment_by_name("offline-exit").experiment_id],
        filter_string=f"tags.`tracker.offline_id` = '{offline_id}'",
    )
    assert len(run) == 1
    steps = history(d, run[0].info.run_id)
    assert sorted(steps) == list(range(100_000))  # every point, exactly once
    assert run[0].info.status == "FINISHED"


def old_style_spool(path: Path, client_id: str, offline_id: str, n: int) -> None:
    """A spool as the previous client version wrote it at exit: one data frame of ``n``."""
    now = int(time.time() * 1000)
    records = [["m", offline_id, "k", float(i), now, i, None, None, None] for i in range(n)]
    frames = [
        p.encode(p.Hello(0, client_id, 1, "h", "0.0.9", 0)),
        p.encode(p.StartRun(1, client_id, None, "old", None, None, None, {}, now, offline_id)),
        p.encode_data(client_id, 1, records),
        p.encode(p.EndRun(2, client_id, 1, offline_id, "FINISHED", now)),
    ]
    s = Spool(path)
    s.open()
    s.append(frames)
    s.close(remove_if_empty=False)


@pytest.mark.timeout(240)
def test_import_reframes_an_oversized_old_spool_frame(tmp_path: Path) -> None:
    client_id, offline_id = os.urandom(16).hex(), f"offline-{os.urandom(16).hex()}"
    spool = tmp_path / f"{client_id}.spool"
    d = new_daemon(tmp_path, f"ipc://{short_tmpdir() / 'd.sock'}")
    d.start()
    try:
        for attempt in range(2):  # the second import of the same spool writes nothing twice
            old_style_spool(spool, client_id, offline_id, 37_000)
            r = daemon_cli("import", str(spool), "--address", d.address, "--timeout", "120")
            assert r.returncode == 0, (attempt, r.stdout, r.stderr)
            assert "37000 record(s)" in r.stdout
            assert "event=progress op=import done=37000 total=37000 " in r.stderr, r.stderr
            assert ("1 oversized frame(s)" in r.stdout) == (attempt == 0), r.stdout
            assert not spool.exists()
    finally:
        d.stop()
    client = MlflowClient(d.backend_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("old").experiment_id],
        filter_string=f"tags.`tracker.offline_id` = '{offline_id}'",
    )
    assert len(runs) == 1
    assert sorted(history(d, runs[0].info.run_id)) == list(range(37_000))
    assert runs[0].info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_import_skips_and_reports_what_it_cannot_send(tmp_path: Path) -> None:
    """An undecodable frame (its seq lost with it) is reported, not retried until a timeout: the
    seq gap is closed, the rest lands once and the run ends."""
    client_id, offline_id = os.urandom(16).hex(), f"offline-{os.urandom(16).hex()}"
    now = int(time.time() * 1000)

    def recs(first: int) -> list[list[object]]:
        return [
            ["m", offline_id, "k", float(i), now, i, None, None, None]
            for i in range(first, first + 10)
        ]

    spool = tmp_path / f"{client_id}.spool"
    s = Spool(spool)
    s.open()
    s.append(
        [
            p.encode(p.Hello(0, client_id, 1, "h", "0.1.0", 0)),
            p.encode(p.StartRun(1, client_id, None, "gaps", None, None, None, {}, now, offline_id)),
            p.encode_data(client_id, 1, recs(0)),
            b"\x93\x01\xa4data\x83garbage",  # seq 2, unreadable
            p.encode_data(client_id, 3, recs(20)),
            p.encode(p.EndRun(2, client_id, 3, offline_id, "FINISHED", now)),
        ]
    )
    s.close(remove_if_empty=False)
    d = new_daemon(tmp_path, f"ipc://{short_tmpdir() / 'd.sock'}")
    d.start()
    try:
        t0 = time.monotonic()
        r = daemon_cli("import", str(spool), "--address", d.address, "--timeout", "60")
        took = time.monotonic() - t0
    finally:
        d.stop()
    assert r.returncode == 1, (r.stdout, r.stderr)  # something was not imported: say so
    assert r.stdout.count("failed: spool_frame_skipped") == 2, r.stdout  # the frame, the seq
    assert "frame 3: bad_msgpack" in r.stdout and "seqs 2..2" in r.stdout
    assert not spool.exists() and took < 30
    client = MlflowClient(d.backend_uri)
    runs = client.search_runs([client.get_experiment_by_name("gaps").experiment_id])
    assert sorted(history(d, runs[0].info.run_id)) == [*range(10), *range(20, 30)]
    assert runs[0].info.status == "FINISHED"


@pytest.mark.timeout(60)
def test_an_unexpected_io_thread_error_is_raised_by_flush(tmp_path: Path) -> None:
    """A bug in the I/O thread cannot be produced for real: inject one (the only fake here)."""
    import tracker_client
    from tracker_client.errors import TrackerError

    t = tracker_client.connect(
        f"ipc://{short_tmpdir() / 'none.sock'}", policy="block", offline=False
    )
    transport = t._transport
    real_take = transport.outbox.maker.take
    calls = {"n": 0}

    def take(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real_take(*args)  # type: ignore[arg-type]

    transport.outbox.maker.take = take  # type: ignore[method-assign]
    transport.put(["m", "r" * 32, "k", 1.0, 1, 0, None, None, None])
    with pytest.raises(TrackerError, match="injected"):
        t.flush(timeout=1.0)
    assert transport._thread is not None and transport._thread.is_alive()  # it kept running
    assert len(transport.session.unacked) == 1  # and sent the record after the error
    transport.close(1.0)
    tracker_client.api._TRACKERS.discard(t)


@pytest.mark.timeout(120)
def test_exit_with_a_full_spool_disk_names_what_is_lost(small_tmpfs: Path) -> None:
    spool_dir = small_tmpfs / "spool"
    spool_dir.mkdir()
    fill(small_tmpfs)
    env = {
        "TRACKER_DAEMON_ADDRESS": f"ipc://{short_tmpdir() / 'none.sock'}",
        "TRACKER_SPOOL_DIR": str(spool_dir),
        "TRACKER_CONNECT_TIMEOUT": "1",
    }
    proc = worker(OFFLINE_EXIT_WORKER, env)
    _, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 0, stderr  # the exit handler never raises
    # 100,000 metrics and the tag tracker.offline_id the client adds to a run no daemon answered
    assert (
        "at exit: 100001 record(s) not taken by a daemon could not be written to the spool"
        in stderr
    ), stderr
    assert "No space left on device" in stderr
