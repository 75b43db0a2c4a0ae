"""A start that can never succeed fails at once, naming the path or address, the cause and the
fix, before the daemon makes its journal or store: an unopenable SQLite store (exit 2), a busy
tcp port (exit 3), a typo in an explicit store path (exit 2, no directory tree made).
Real ``tracker-daemon run`` processes; the permission case runs as another uid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import users as accounts
from tests.support.daemon import REPO, daemon_cli, daemon_env, running_daemon, short_tmpdir
from tests.support.disk import mounted_tmpfs

pytestmark = pytest.mark.integration

FAST_S = 20.0  # the daemon's imports take a few seconds on a busy 2-core machine; MLflow's
# retries of an unopenable store took 126 s


def _run(
    state: Path, *args: str, address: str = ""
) -> tuple[subprocess.CompletedProcess[str], float]:
    sock = short_tmpdir()
    started = time.monotonic()
    res = daemon_cli(
        "run", "--state-dir", str(state), "--address", address or f"ipc://{sock}/d.sock", *args
    )
    return res, time.monotonic() - started


@pytest.mark.timeout(60)
def test_a_store_in_a_directory_that_takes_no_files_fails_at_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    res, took = _run(state, "--backend-store-uri", "sqlite:////proc/mlflow.db")
    assert res.returncode == 2, res.stderr
    assert "configuration error: backend_store_uri sqlite:////proc/mlflow.db" in res.stderr
    assert "cannot create /proc/mlflow.db: the file system does not allow new files" in res.stderr
    assert "TEMPORARILY_UNAVAILABLE" not in res.stderr
    assert took < FAST_S
    assert not state.exists()  # neither journal nor lock: nothing was made


@pytest.mark.timeout(60)
def test_a_file_that_is_not_a_database_fails_at_once(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a database\n")
    state = tmp_path / "state"
    res, took = _run(state, "--backend-store-uri", f"sqlite:///{notes}")
    assert res.returncode == 2, res.stderr
    assert f"{notes} is not an SQLite database" in res.stderr
    assert took < FAST_S
    assert notes.read_text().startswith("these are my notes")
    assert not state.exists()


@pytest.mark.timeout(60)
def test_a_typo_in_the_store_path_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "experimnts" / "vision" / "mlflow.db"
    state = tmp_path / "state"
    res, took = _run(state, "--backend-store-uri", f"sqlite:///{typo}")
    assert res.returncode == 2, res.stderr
    assert f"the directory {tmp_path / 'experimnts'} does not exist" in res.stderr
    assert "check the path for a typo" in res.stderr
    assert took < FAST_S
    assert not (tmp_path / "experimnts").exists()
    assert not state.exists()


@pytest.mark.timeout(120)
def test_only_the_store_files_own_directory_is_created(tmp_path: Path) -> None:
    store = tmp_path / "stores" / "mlflow.db"
    with running_daemon(tmp_path, "--backend-store-uri", f"sqlite:///{store}") as d:
        assert d.status()["sink"]
    assert store.is_file()


@pytest.mark.timeout(60)
def test_a_store_on_a_read_only_file_system_fails_at_once(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "1m") as mnt:
        (mnt / "db").mkdir()
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True
        )
        assert remount.returncode == 0, remount.stderr
        res, took = _run(tmp_path / "state", "--backend-store-uri", f"sqlite:///{mnt}/db/m.db")
    assert res.returncode == 2, res.stderr
    assert f"cannot create {mnt}/db/m.db: read-only file system" in res.stderr
    assert took < FAST_S


@pytest.mark.timeout(60)
def test_a_store_the_daemons_user_may_not_write_fails_at_once() -> None:
    users = accounts.test_users()  # (by module: pytest would collect test_users)
    root = (
        accounts.shared_tmpdir()
    )  # 0755, owned by root: the daemon's user may not create files here
    locked = root / "team"
    locked.mkdir(mode=0o755)
    state = accounts.shared_tmpdir()
    os.chown(state, users.daemon.uid, users.daemon.gid)
    sock = short_tmpdir()
    os.chown(sock, users.daemon.uid, users.daemon.gid)
    cmd = [sys.executable, "-m", "tracker_daemon.cli", "run", "--state-dir", str(state / "s")]
    cmd += ["--address", f"ipc://{sock}/d.sock", "--backend-store-uri"]
    cmd += [f"sqlite:///{locked}/mlflow.db"]
    env = {**daemon_env(), **users.daemon.env(state)}
    started = time.monotonic()
    res = subprocess.run(
        accounts.as_user(users.daemon, cmd),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert f"cannot create {locked}/mlflow.db: permission denied" in res.stderr
    assert f"uid {users.daemon.uid}" in res.stderr
    assert time.monotonic() - started < FAST_S


@pytest.mark.timeout(60)
def test_a_busy_tcp_port_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = tmp_path / "state"
        res, took = _run(state, address=f"tcp://127.0.0.1:{port}")
    assert res.returncode == 3, res.stderr
    assert f"tcp://127.0.0.1:{port} is already in use by another process" in res.stderr
    assert "give this daemon another --address" in res.stderr
    assert took < FAST_S
    assert not state.exists()  # no journal, no store, no lock file


@pytest.mark.timeout(120)
def test_a_second_daemon_on_the_same_tcp_port_and_state_dir_is_named_by_its_pid(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with running_daemon(tmp_path, address=address) as d:
        res, took = _run(d.state_dir, address=address)
        assert res.returncode == 3, res.stderr
        assert f"in use by tracker-daemon pid {d.proc.pid}" in res.stderr  # type: ignore[union-attr]
        other, _ = _run(tmp_path / "other", address=address)
        assert other.returncode == 3, other.stderr
        assert f"{address} is already in use" in other.stderr
        assert not (tmp_path / "other").exists()
        assert d.status()["pid"] == d.proc.pid  # type: ignore[union-attr]
