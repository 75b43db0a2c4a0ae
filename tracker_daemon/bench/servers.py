"""The servers some scenarios read or write through: a private PostgreSQL and ``mlflow server``.

PostgreSQL comes from the system (``/usr/lib/postgresql/*/bin``); ``initdb`` runs as the
``postgres`` user when the bench runs as root; the server listens on 127.0.0.1 only, on a free
port, with PostgreSQL's default durability settings (no ``fsync=off``: the figures must hold on a
real deployment), and is stopped at the end. ``mlflow server`` is this interpreter's own
(``sys.executable -m mlflow server``) on a free loopback port, ready once ``/health`` answers.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .harness import BenchError, Procs, clean_env

__all__ = ["free_port", "mlflow_server", "pg_bindir", "pg_driver", "postgres", "wait_healthy"]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait until ``url``/health answers 200: "" then, else what went wrong ("exited", "not up
    within N s")."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            return "exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return ""
        except OSError:
            pass
        if time.monotonic() > deadline:
            return f"not up within {timeout:g} s"
        time.sleep(0.2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def pg_driver() -> str | None:
    """The SQLAlchemy URL scheme of an importable PostgreSQL driver: ``postgresql`` (psycopg2,
    SQLAlchemy's default), else ``postgresql+psycopg`` (psycopg 3), else None."""
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql"
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg"
    return None


def _as_postgres(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if os.getuid() == 0:  # initdb and postgres refuse to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)


@contextmanager
def postgres(databases: list[str]) -> Iterator[dict[str, str]]:
    """A private PostgreSQL server; yields a SQLAlchemy URL per fresh database in ``databases``."""
    bindir, scheme = pg_bindir(), pg_driver()
    if bindir is None or scheme is None:
        raise BenchError("PostgreSQL or its driver is missing")
    root = Path(tempfile.mkdtemp(prefix="tdb-pg-", dir="/tmp"))
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port, user = root / "data", free_port(), "bench"
    try:
        init = _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user])
        if init.returncode != 0:
            raise BenchError(f"initdb failed: {init.stderr[-2000:]}")
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
        ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
        start = _as_postgres([*ctl, "-o", opts, "-l", str(root / "pg.log"), "-w", "start"])
        if start.returncode != 0:
            log = (root / "pg.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"PostgreSQL did not start: {start.stderr[-1000:]}\n{log}")
        try:
            for name in databases:
                created = subprocess.run(
                    [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", user]
                    + ["-d", "postgres", "-c", f"CREATE DATABASE {name}"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if created.returncode != 0:
                    raise BenchError(f"CREATE DATABASE {name}: {created.stderr}")
            yield {name: f"{scheme}://{user}@127.0.0.1:{port}/{name}" for name in databases}
        finally:
            _as_postgres([*ctl, "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mlflow_server(procs: Procs, backend: str, artifacts: Path, workers: int) -> Iterator[str]:
    """``mlflow server`` on ``backend``; yields its http URL once ``/health`` answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers)]
    proc = procs.spawn(cmd, clean_env(), "mlflow-server", pipe=False)
    url = f"http://127.0.0.1:{port}"
    try:
        problem = wait_healthy(url, proc, 180)
        if problem:
            raise BenchError(f"mlflow server {problem}:\n{procs.log(proc)}")
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the uvicorn workers too
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
