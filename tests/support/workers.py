"""Worker processes running tests/worker.py against a daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import REPO, daemon_env

WORKER = Path(__file__).resolve().parents[1] / "worker.py"


def start_worker(
    address: str, spec: dict[str, Any], out: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real worker process running tests/worker.py with ``spec`` (see that file); ``env``
    added to its environment."""
    env = daemon_env({"TRACKER_DAEMON_ADDRESS": address, **(env or {})})
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
