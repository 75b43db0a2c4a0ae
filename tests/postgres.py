"""A real PostgreSQL server and a real ``mlflow server`` on loopback, for the multi-host tests.

PostgreSQL comes from Debian's ``postgresql`` package (``.ci/run`` installs it when missing);
initdb runs as the ``postgres`` user in a temporary directory; the server listens on 127.0.0.1
only, on a free port, and is stopped by the context manager.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.daemon import REPO, daemon_env
from tests.support.net import free_port
from tests.support.prereq import require
from tracker_daemon.bench.servers import wait_healthy


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    require(
        "PostgreSQL server (/usr/lib/postgresql/*/bin/initdb)",
        bool(found),
        "apt-get install -y --no-install-recommends postgresql postgresql-client",
    )
    return Path(found[-1]).parent


def _as_postgres(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


@contextmanager
def postgres() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a fresh database ``mlflow`` on a private server."""
    bindir = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port()
    init = _as_postgres(
        [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"]
    )
    assert init.returncode == 0, init.stderr
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    start = _as_postgres(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(root / "pg.log"),
            "-w",
            "-t",
            "60",
            "start",
        ]
    )
    assert start.returncode == 0, start.stderr + (root / "pg.log").read_text(errors="replace")
    try:
        created = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "mlflow",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE mlflow",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, workers: int = 2) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port; yields its http URL."""
    port = free_port()
    log = artifacts.parent / f"mlflow-server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend_uri,
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=daemon_env(),
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        problem = wait_healthy(url, proc, 120)
        assert not problem, f"mlflow server {problem}:\n{log.read_text(errors='replace')}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
