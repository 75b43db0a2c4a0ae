"""The MLflow store as the tests see it: what it holds for a metric, and a real outage (another
process holding an exclusive lock on the SQLite database)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

Point = tuple[int, float, int]  # (step, value, timestamp)


def points(backend_uri: str, run_id: str, key: str) -> list[Point]:
    """Every stored point of metric ``key`` of ``run_id``, sorted."""
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=backend_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value, m.timestamp) for m in history)


def steps(backend_uri: str, run_id: str, key: str) -> list[int]:
    """The steps of every stored point of metric ``key`` of ``run_id``, sorted (repeats kept)."""
    return [step for step, _, _ in points(backend_uri, run_id, key)]


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
