"""A real ``tracker-daemon run`` subprocess (``Daemon``, ``running_daemon``), the command line
and clean environment it runs with, and one-shot ``tracker-daemon`` commands (``daemon_cli``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tracker_client
from tests.support.users import TestUser, as_user

REPO = Path(__file__).resolve().parents[2]


def short_tmpdir() -> Path:
    """A short directory for ipc sockets (AF_UNIX paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_DAEMON_")}
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow changes its session checks under pytest
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env


def daemon_command(state_dir: Path, address: str, *args: str, prelude: str = "") -> list[str]:
    """``tracker-daemon run`` on ``state_dir`` and ``address`` in this interpreter; ``prelude``:
    Python run in the daemon process before the CLI (to stand in for a fault that cannot be
    produced for real, e.g. an MLflow version the daemon was not tested with)."""
    start = ["-m", "tracker_daemon.cli"]
    if prelude:
        start = ["-c", f"{prelude}\nfrom tracker_daemon.cli.cli import main\nmain()"]
    return [
        sys.executable,
        *start,
        "run",
        "--state-dir",
        str(state_dir),
        "--address",
        address,
        *args,
    ]


@dataclass
class Daemon:
    state_dir: Path
    address: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    prelude: str = ""
    # Run as this user (tests/support/users.py) instead of the test process's own uid.
    user: TestUser | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    def start(self, ready_timeout: float = 60.0) -> Daemon:
        cmd = daemon_command(self.state_dir, self.address, *self.args, prelude=self.prelude)
        env = daemon_env(self.env)
        if self.user is not None:
            cmd = as_user(self.user, cmd)
            env = {**self.user.env(self.state_dir.parent), **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
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
def running_daemon(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    address: str | None = None,
    prelude: str = "",
    user: TestUser | None = None,
) -> Iterator[Daemon]:
    """A daemon process for the duration of the block: on an ipc socket in a short private dir,
    or on ``address``."""
    sock_dir = short_tmpdir()
    if user is not None:  # as the unit's RuntimeDirectory: the daemon's, its group may traverse
        os.chown(sock_dir, user.uid, user.gid)
        sock_dir.chmod(0o750)
    address = address or f"ipc://{sock_dir / 'd.sock'}"
    d = Daemon(root / "state", address, root / "daemon.log", list(args), env or {}, prelude, user)
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def daemon_cli(
    *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tracker-daemon ARGS`` in a subprocess (clean environment plus ``env``), capturing
    its output."""
    return subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env(env),
        cwd=REPO,
    )
