"""Shared test helpers: a real daemon subprocess, worker subprocesses, condition waits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tracker_client

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "worker.py"


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Return the first truthy value of ``condition()``; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def short_tmpdir() -> Path:
    """A short directory for ipc sockets (AF_UNIX paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_DAEMON_")}
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow changes its session checks under pytest
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env


@dataclass
class Daemon:
    state_dir: Path
    address: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    def start(self, ready_timeout: float = 60.0) -> Daemon:
        cmd = [
            sys.executable,
            "-m",
            "tracker_daemon.cli",
            "run",
            "--state-dir",
            str(self.state_dir),
            "--address",
            self.address,
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=daemon_env(self.env),
                cwd=REPO,
            )
        self.wait_ready(ready_timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} before it was ready:\n{self.log()}"
                )
            if "event=ready" in self.log():
                try:
                    self.status(timeout=2.0)
                    return
                except tracker_client.DaemonUnavailable:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready within {timeout} s:\n{self.log()}")

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        return tracker_client.query_status(self.address, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon did not exit within {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@contextmanager
def running_daemon(root: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    sock_dir = short_tmpdir()
    d = Daemon(
        root / "state", f"ipc://{sock_dir / 'd.sock'}", root / "daemon.log", list(args), env or {}
    )
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def start_worker(address: str, spec: dict[str, Any], out: Path) -> subprocess.Popen[bytes]:
    """A real worker process running tests/worker.py with ``spec`` (see that file)."""
    env = daemon_env({"TRACKER_DAEMON_ADDRESS": address})
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec), str(out)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


def finish_workers(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[str]:
    """Wait for every worker; return their stderr; fail on a non-zero exit."""
    deadline = time.monotonic() + timeout
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"worker {proc.pid} did not finish:\n{err.decode()}") from None
        if proc.returncode != 0:
            raise AssertionError(f"worker {proc.pid} exited {proc.returncode}:\n{err.decode()}")
        errors.append(err.decode())
    return errors


_LOCK_SCRIPT = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
con.close()
"""


@contextmanager
def sqlite_locked(db_path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock on an SQLite database from another process: every writer (the
    daemon's sink) blocks, then fails with 'database is locked' — a real backend outage."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCK_SCRIPT, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the lock is held (or the process dies)
        if line.strip() != b"locked":
            raise AssertionError(f"could not lock {db_path}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        yield
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.write(b"release\n")
            proc.stdin.flush()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def daemon_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``tracker-daemon ARGS`` in a subprocess (clean environment), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env(),
        cwd=REPO,
    )


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (e.g. "8m") mounted at ``path``, unmounted at the end; the
    test is skipped, with the reason, where mounting is not permitted (not root)."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(path: Path) -> int:
    """Append to the file ``path`` until its filesystem has no room left; returns bytes written."""
    import errno

    chunk = b"\0" * (256 * 1024)
    written = 0
    with open(path, "ab", buffering=0) as fh:
        while True:
            try:
                n = fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
            if not n:
                return written
            written += n
