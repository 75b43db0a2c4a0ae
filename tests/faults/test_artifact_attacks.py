"""A hostile group member against the artifact lane, with a real daemon, a real SQLite store and
real files: nothing outside the sender's own staging slot is read or deleted, one poison
artifact fails alone, and partial upload files do not outlive a restart.

The attacking client is a real ``tracker_client`` whose transport is handed a hand-made
``artifact`` message (the public API would refuse to build it), or a raw DEALER socket.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import Daemon, running_daemon
from tests.support.disk import mounted_tmpfs
from tests.support.net import raw_dealer, recv_reply
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tracker_client import protocol as p
from tracker_daemon.artifacts.staging import PARTIAL_PREFIX

pytestmark = pytest.mark.integration

SECRET = b"top secret: not for the attacker " + uuid.uuid4().hex.encode()


# ------------------------------------------------------------------ helpers


def slot_of(t: tracker_client.Tracker) -> Path:
    """A fresh slot in the client's own staging dir, laid out as the client library does."""
    slot = t._staging_dir() / t.client_id / uuid.uuid4().hex
    slot.mkdir(parents=True)
    return slot


def send_artifact(
    t: tracker_client.Tracker, run_id: str, staged: Path | str, artifact_path: str | None
) -> None:
    """Send an ``artifact`` message with any staged path, through the client's real transport."""
    cid = t.client_id

    def make(req: int, seq: int) -> p.ClientMessage:
        return p.LogArtifact(cid, seq, run_id, str(staged), artifact_path)

    t._transport.send_sequenced(make)


def fingerprint(root: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime of every file under ``root`` (or of ``root`` itself)."""
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def run_files(d: Daemon, run_id: str) -> dict[str, bytes]:
    """The run's artifacts as stored: relative path -> content (hidden partial files too)."""
    uri = MlflowClient(tracking_uri=d.backend_uri).get_run(run_id).info.artifact_uri
    root = Path(uri.removeprefix("file://"))
    if not root.exists():
        return {}
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() or f.is_symlink()
    }


def stored_anywhere(d: Daemon, needle: bytes) -> list[Path]:
    """Files under the daemon's artifact root and private upload dir containing ``needle``."""
    hits = []
    for top in (d.state_dir / "artifacts", d.state_dir / "uploads"):
        for f in top.rglob("*"):
            if f.is_file() and not f.is_symlink() and needle in f.read_bytes():
                hits.append(f)
    return hits


def failures_of(run: tracker_client.Run) -> list[str]:
    try:
        run.flush(timeout=60)
    except tracker_client.CommitError as exc:
        return [f"{f.code}: {f.message}" for f in exc.failures]
    return []


@contextmanager
def stopped(d: Daemon) -> Iterator[None]:
    """The daemon SIGSTOPped: what clients send waits in the socket until SIGCONT."""
    assert d.proc is not None
    pid = d.proc.pid
    d.proc.send_signal(signal.SIGSTOP)
    try:
        stat = Path(f"/proc/{pid}/stat")
        wait_for(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "T", 10, "SIGSTOP")
        yield
    finally:
        d.proc.send_signal(signal.SIGCONT)


# ------------------------------------------------------------------ 1. links inside a staged dir


@pytest.mark.timeout(90)
def test_symlinks_in_a_staged_dir_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("attacks", run_name="links")
        db = d.state_dir / "mlflow.db"
        slot = slot_of(t)
        tree = slot / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "ok.txt").write_text("fine")
        (tree / "secret-link").symlink_to(secret)
        (tree / "sub" / "db-link").symlink_to(db)
        single = slot_of(t)
        (single / "db").symlink_to(db)  # the staged entry itself a link
        before = fingerprint(secret)
        send_artifact(t, run.run_id, tree, "stolen")
        send_artifact(t, run.run_id, single / "db", None)
        failures = failures_of(run)
        assert len(failures) == 2, failures
        assert failures[0].startswith("INVALID_PARAMETER_VALUE: artifact 'stolen': staged entry")
        assert "is a symlink" in failures[0]
        assert (
            failures[1] == "INVALID_PARAMETER_VALUE: artifact 'db': staged entry 'db' is a symlink"
        )
        assert run_files(d, run.run_id) == {}  # the whole artifact refused: nothing uploaded
        assert stored_anywhere(d, SECRET) == []
        assert stored_anywhere(d, b"SQLite format 3") == []
        assert not slot.exists() and not single.exists()  # its own slots: deleted
        assert (d.state_dir / "staging" / t.client_id).is_dir()
        assert d.status()["failed"] == 2
        run.end()
        t.close()
    assert fingerprint(secret) == before
    assert db.stat().st_size > 0


# ------------------------------------------------------------------ 2. dir -> symlink swap


@pytest.mark.timeout(90)
def test_staged_dir_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "inner" / "private.key").write_bytes(SECRET)
    (victim / "private2.key").write_bytes(SECRET)
    before = fingerprint(victim)
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("attacks", run_name="swap")
        top = slot_of(t) / "ckpt"
        (top / "sub").mkdir(parents=True)
        (top / "a.txt").write_text("a")
        nested = slot_of(t) / "ckpt2"
        (nested / "sub").mkdir(parents=True)
        (nested / "sub" / "b.txt").write_text("b")
        with stopped(d):
            # the checks and the upload both happen after the swap: nothing between the path
            # the client named and the bytes read may follow a link
            send_artifact(t, run.run_id, top, "top")
            send_artifact(t, run.run_id, nested, "nested")
            for path in (top, nested / "sub"):
                os.rename(path, path.with_name(path.name + ".orig"))
                path.symlink_to(victim if path is top else victim / "inner")
        failures = failures_of(run)
        assert len(failures) == 2, failures
        assert (
            failures[0]
            == "INVALID_PARAMETER_VALUE: artifact 'top': staged entry 'ckpt' is a symlink"
        )
        assert failures[1] == (
            "INVALID_PARAMETER_VALUE: artifact 'nested': staged entry 'ckpt2/sub' is a symlink"
        )
        assert run_files(d, run.run_id) == {}
        assert stored_anywhere(d, SECRET) == []
        assert not top.parent.exists() and not nested.parent.exists()
        run.end()
        t.close()
    assert fingerprint(victim) == before


# ------------------------------------------------------------------ 3. outside path, spilled


@pytest.mark.timeout(120)
def test_outside_path_delivered_from_the_spilled_backlog_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "dir"
    outside.mkdir(parents=True)
    (outside / "file.txt").write_bytes(SECRET)
    (outside / "sentinel").write_text("must survive")
    before = fingerprint(outside.parent)
    with running_daemon(tmp_path, "--max-buffered-records", "1000") as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("attacks", run_name="spill")
        with sqlite_locked(d.state_dir / "mlflow.db"):  # nothing commits: the backlog grows
            for step in range(3000):
                run.log_metric("x", float(step), step=step)
            wait_for(lambda: d.status()["received"] >= 3000, 30, "3000 points received")
            send_artifact(t, run.run_id, outside / "file.txt", None)
            wait_for(lambda: d.status()["received"] == 3001, 30, "the artifact received")
            assert "event=spill " in d.log()  # it sits in the journal, behind the backlog
        failures = failures_of(run)
        assert failures == [
            f"INVALID_PARAMETER_VALUE: artifact 'file.txt': staged_path "
            f"'{outside / 'file.txt'}' is not inside the staging dir {d.state_dir / 'staging'}"
        ]
        points = MlflowClient(tracking_uri=d.backend_uri).get_metric_history(run.run_id, "x")
        assert len(points) == 3000
        assert run_files(d, run.run_id) == {}
        assert stored_anywhere(d, SECRET) == []
        run.end()
        t.close()
    assert fingerprint(outside.parent) == before


# ------------------------------------------------------------------ 4. another client's dir


@pytest.mark.timeout(90)
def test_another_clients_staging_dir_is_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        victim = tracker_client.connect(d.address)
        vrun = victim.start_run("attacks", run_name="victim")
        held: list[object] = []
        send = victim._transport.send_sequenced
        victim._transport.send_sequenced = held.append  # type: ignore[assignment]
        for i in range(2):
            src = tmp_path / f"v{i}.txt"
            src.write_text(f"victim artifact {i}")
            vrun.log_artifact(src, "mine")  # staged now, sent below
        victim._transport.send_sequenced = send  # type: ignore[method-assign]
        vdir = d.state_dir / "staging" / victim.client_id
        vslots = sorted(vdir.iterdir())
        assert len(vslots) == 2

        attacker = tracker_client.connect(d.address)
        arun = attacker.start_run("attacks", run_name="attacker")
        send_artifact(attacker, arun.run_id, vdir, "grab-all")
        send_artifact(attacker, arun.run_id, next(vslots[0].iterdir()), "grab-one")
        send_artifact(attacker, arun.run_id, d.state_dir / "staging", "grab-staging")
        failures = failures_of(arun)
        assert len(failures) == 3, failures
        assert "is not of the form" in failures[0]
        assert "is not in this client's staging dir" in failures[1]
        assert "is not inside the staging dir" in failures[2]
        assert all(f.startswith("INVALID_PARAMETER_VALUE: artifact 'grab-") for f in failures)
        assert sorted(vdir.iterdir()) == vslots  # untouched

        for make in held:
            send(make)  # type: ignore[arg-type]
        assert failures_of(vrun) == []
        assert run_files(d, vrun.run_id) == {
            "mine/v0.txt": b"victim artifact 0",
            "mine/v1.txt": b"victim artifact 1",
        }
        assert run_files(d, arun.run_id) == {}
        assert list(vdir.iterdir()) == []
        assert (d.state_dir / "staging").is_dir()
        status = d.status()
        assert status["artifacts"] == 2 and status["failed"] == 3
        vrun.end()
        arun.end()
        victim.close()
        attacker.close()


# ------------------------------------------------------------------ 5. poison artifact_path


@pytest.mark.timeout(90)
def test_poison_artifact_path_fails_alone(tmp_path: Path) -> None:
    poisons = ["./x/./y", "a//b", "a/"]
    with running_daemon(tmp_path) as d:
        good = tracker_client.connect(d.address)
        grun = good.start_run("attacks", run_name="good")
        src = tmp_path / "model.txt"
        src.write_text("good model")
        with pytest.raises(ValueError, match=r"^artifact_path 'a//b': must be a normalised"):
            grun.log_artifact(src, "a//b")  # refused at the call site

        staging = d.state_dir / "staging"
        cid = "raw-poison-" + uuid.uuid4().hex[:8]
        with raw_dealer(d.address) as sock:
            sock.send(p.encode(p.Hello(1, cid, os.getpid(), "elsewhere", "0")))
            assert isinstance(recv_reply(sock, "hello"), p.Welcome)
            for seq, poison in enumerate(poisons, start=1):
                slot = staging / cid / uuid.uuid4().hex
                slot.mkdir(parents=True)
                (slot / "p.txt").write_text("poison")
                frame = p.encode(p.LogArtifact(cid, seq, grun.run_id, str(slot / "p.txt"), poison))
                sock.send(frame)
                assert isinstance(recv_reply(sock, f"ack {seq}"), p.Ack)
            started = time.monotonic()
            grun.log_artifact(src, "models")  # queued behind the poison
            assert failures_of(grun) == []
            assert time.monotonic() - started < 10
            sock.send(p.encode(p.Flush(2, cid, 3, None)))
            done = recv_reply(sock, "flush")
            while isinstance(done, p.Ack):  # a late cumulative ack
                done = recv_reply(sock, "flush")
        assert isinstance(done, p.Done)
        assert [(f.code, f.message.split(":")[0]) for f in done.failures] == [
            ("INVALID_PARAMETER_VALUE", f"artifact '{poison}'") for poison in poisons
        ]
        assert all("must be a normalised relative path" in f.message for f in done.failures)
        assert run_files(d, grun.run_id) == {"models/model.txt": b"good model"}
        assert list((staging / cid).iterdir()) == []
        status = d.status()
        assert status["artifacts"] == 1 and status["failed"] == 3
        assert status["artifacts_pending"] == 0 and status["artifacts_retrying"] == 0
        assert status["last_sink_error"] in ("", None)
        grun.end()
        good.close()


# ------------------------------------------------------------------ 6. partial upload files


@pytest.mark.timeout(120)
def test_partial_upload_files_are_removed_on_restart(tmp_path: Path) -> None:
    outside = tmp_path / (PARTIAL_PREFIX + "outside")
    outside.write_text("not the daemon's")
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("attacks", run_name="partial")
        src = tmp_path / "weights.bin"
        src.write_bytes(b"w" * 1000)
        run.log_artifact(src, "ckpt")
        run.end()
        t.close()
        uri = MlflowClient(tracking_uri=d.backend_uri).get_run(run.run_id).info.artifact_uri
    art = Path(uri.removeprefix("file://"))
    partials = [art / "ckpt" / (PARTIAL_PREFIX + "abc123"), art / (PARTIAL_PREFIX + "x")]
    for f in partials:  # what a kill -9 in the middle of an upload leaves
        f.write_bytes(b"half an upload")
    (art / (PARTIAL_PREFIX + "link")).symlink_to(outside)
    with running_daemon(tmp_path) as d:
        wait_for(lambda: "event=partial_uploads_removed count=2" in d.log(), 30, "cleanup")
        assert not any(f.exists() for f in partials)
        assert run_files(d, run.run_id) == {
            "ckpt/weights.bin": b"w" * 1000,
            PARTIAL_PREFIX + "link": b"not the daemon's",  # a link: not the daemon's to delete
        }
        assert outside.read_text() == "not the daemon's"
        assert list((d.state_dir / "uploads").iterdir()) == []


# ------------------------------------------------------------------ retries out of line


@pytest.mark.timeout(120)
def test_a_retrying_upload_does_not_hold_up_other_clients(tmp_path: Path) -> None:
    """A real retryable fault: one run's artifact location is a full tmpfs (ENOSPC). Its upload
    is retried after the others, another client's artifact uploads meanwhile, and the first
    one lands once space comes back."""
    with (
        mounted_tmpfs(tmp_path / "small", "1m") as small,
        running_daemon(tmp_path, "--artifact-roots", str(small)) as d,
    ):
        filler = small / "filler"
        filler.write_bytes(b"f" * (900 * 1024))
        exp = MlflowClient(tracking_uri=d.backend_uri).create_experiment(
            "on-a-full-disk", artifact_location=str(small / "runs")
        )
        stuck = tracker_client.connect(d.address)
        srun = stuck.start_run(experiment_id=exp, run_name="full")
        big = tmp_path / "big.bin"
        big.write_bytes(b"b" * (300 * 1024))
        srun.log_artifact(big, "weights")
        wait_for(lambda: d.status()["artifacts_retrying"] == 1, 30, "the upload retrying")

        other = tracker_client.connect(d.address)
        orun = other.start_run("attacks", run_name="other")
        src = tmp_path / "small.txt"
        src.write_text("uploaded while the other one waits")
        started = time.monotonic()
        orun.log_artifact(src)
        assert failures_of(orun) == []
        assert time.monotonic() - started < 10
        assert run_files(d, orun.run_id) == {"small.txt": b"uploaded while the other one waits"}
        status = d.status()
        assert status["artifacts_retrying"] == 1 and status["artifacts"] == 1
        assert "No space left on device" in status["last_sink_error"]

        filler.unlink()  # space comes back
        assert failures_of(srun) == []
        assert run_files(d, srun.run_id) == {"weights/big.bin": b"b" * (300 * 1024)}
        assert d.status()["artifacts"] == 2
        for t, r in ((stuck, srun), (other, orun)):
            r.end()
            t.close()
