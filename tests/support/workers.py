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


def good_client(address: str, backend_uri: str, experiment: str, points: int = 200) -> float:
    """A well-formed client beside a hostile one: ``points`` points, flush, end; checks every
    point landed in the store. Returns the flush's seconds."""
    from mlflow import MlflowClient

    import tracker_client

    t = tracker_client.connect(address, offline=False)
    try:
        run = t.start_run(experiment, run_name="good", timeout=30)
        for i in range(points):
            run.log_metric("good", float(i), step=i)
        started = time.monotonic()
        run.flush(timeout=30)
        flushed = time.monotonic() - started
        run.end()
    finally:
        t.close()
    history = MlflowClient(tracking_uri=backend_uri).get_metric_history(run.run_id, "good")
    assert sorted(m.step for m in history) == list(range(points))
    return flushed
