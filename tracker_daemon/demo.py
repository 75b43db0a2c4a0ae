"""``make demo``: one daemon, parallel training-like workers, everything read back from MLflow.

Starts ``tracker-daemon run`` on a fresh state dir (default ``./.demo-state``) and a private ipc
socket, runs ``--workers`` processes that each log params, tags, ``--steps`` steps of 3 metrics
and one artifact, stops the daemon with SIGTERM and checks with ``MlflowClient`` that every record
sent is in the SQLite store. Prints what it found, the client's per-call cost and the command to
browse the runs. Exits non-zero if anything is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

import tracker_client

from .ops.hints import mlflow_ui_command

EXPERIMENT = "tracker-daemon-demo"
MARKER = ".tracker-daemon-demo"  # lets a rerun delete the state dir it made, and nothing else
METRICS = ("loss", "accuracy", "lr")
N_PARAMS, N_TAGS = 5, 2

_barrier: Barrier | None = None


@dataclass(frozen=True)
class WorkerResult:
    index: int
    run_id: str
    records: int  # params + tags + metric points + artifacts sent
    first_send_ns: int  # time.monotonic_ns (system-wide on Linux, so comparable across processes)
    logged_ns: int  # when the last log call returned (the "training loop" was done)
    committed_ns: int  # when end() returned: the daemon had committed everything
    call_ns: list[int]


def _init_worker(barrier: Barrier) -> None:
    global _barrier
    _barrier = barrier


def worker(index: int, address: str, steps: int) -> WorkerResult:
    """One training-process stand-in (runs in a spawned process)."""
    rng = random.Random(index)
    tracker = tracker_client.connect(address)
    run = tracker.start_run(experiment=EXPERIMENT, run_name=f"worker-{index}")
    if _barrier is not None:
        _barrier.wait(120)  # every worker starts logging at the same moment
    first_send = time.monotonic_ns()
    base_lr = 0.1 / (index + 1)
    run.log_params(
        {
            "lr": base_lr,
            "batch_size": 32 * (index + 1),
            "optimizer": "sgd",
            "seed": index,
            "steps": steps,
        }
    )
    run.set_tags({"demo": "true", "worker": str(index)})
    calls: list[int] = []
    loss = acc = 0.0
    for step in range(steps):
        loss = 2.5 * math.exp(-step / 500) + 0.05 + rng.gauss(0, 0.02)
        acc = 0.98 - 0.88 * math.exp(-step / 400) + rng.gauss(0, 0.005)
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        for key, value in zip(METRICS, (loss, acc, lr), strict=True):
            t0 = time.perf_counter_ns()
            run.log_metric(key, value, step=step)
            calls.append(time.perf_counter_ns() - t0)
    with tempfile.TemporaryDirectory(prefix="td-demo-") as tmp:
        summary = Path(tmp) / "summary.json"
        summary.write_text(
            json.dumps(
                {"worker": index, "steps": steps, "final_loss": loss, "final_accuracy": acc},
                indent=2,
            )
        )
        run.log_artifact(summary)  # copied now; deleting the original afterwards is fine
    logged = time.monotonic_ns()
    run.end()  # barrier: returns once the daemon has committed everything above
    committed = time.monotonic_ns()
    tracker.close()
    records = N_PARAMS + N_TAGS + len(calls) + 1
    return WorkerResult(index, run.run_id, records, first_send, logged, committed, calls)


def _worker_star(args: tuple[int, str, int]) -> WorkerResult:
    return worker(*args)


# ------------------------------------------------------------------------------- the daemon


def fresh_state_dir(path: Path) -> Path:
    path = path.resolve()
    if path.exists():
        if any(path.iterdir()) and not (path / MARKER).exists():
            sys.exit(
                f"demo: {path} is not empty and was not made by the demo; choose another "
                "--state-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).touch()
    return path


def start_daemon(state: Path, address: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_DAEMON_")}
    cmd = [sys.executable, "-m", "tracker_daemon.cli", "run"]
    cmd += ["--state-dir", str(state), "--address", address]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def wait_ready(proc: subprocess.Popen[bytes], address: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    tracker = tracker_client.Tracker(address)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"demo: the daemon exited with {proc.returncode} before it was "
                    f"ready:\n{log_path.read_text(errors='replace')}"
                )
            try:
                tracker.status(timeout=1.0)
                return
            except tracker_client.DaemonUnavailable:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise SystemExit(
                        f"demo: the daemon was not ready within {timeout:g} s:\n"
                        f"{log_path.read_text(errors='replace')}"
                    ) from None
    finally:
        tracker.close(1.0)


def stop_daemon(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"demo: the daemon ignored SIGTERM for 120 s; see {log_path}") from None
    if code != 0:
        raise SystemExit(
            f"demo: the daemon exited with {code}:\n{log_path.read_text(errors='replace')}"
        )


# ------------------------------------------------------------------------------- the report


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def read_back(db: Path, results: list[WorkerResult]) -> int:
    """Print what MLflow holds for each run; return the number of records found."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    found_total = 0
    print(f"{'run':<10} {'status':<9} {'params':>6} {'tags':>4} {'metric points':>13}  artifacts")
    for res in sorted(results, key=lambda r: r.index):
        run = client.get_run(res.run_id)
        points = sum(len(client.get_metric_history(res.run_id, k)) for k in METRICS)
        tags = sum(1 for k in ("demo", "worker") if k in run.data.tags)
        artifacts = [a.path for a in client.list_artifacts(res.run_id)]
        found_total += len(run.data.params) + tags + points + len(artifacts)
        print(
            f"{run.info.run_name:<10} {run.info.status:<9} {len(run.data.params):>6} "
            f"{tags:>4} {points:>13}  {', '.join(artifacts) or '-'}"
        )
    return found_total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracker_daemon.demo", description=__doc__)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--state-dir", type=Path, default=Path(".demo-state"))
    args = ap.parse_args(argv)
    if args.workers < 1 or args.steps < 1:
        ap.error("--workers and --steps must be >= 1")

    state = fresh_state_dir(args.state_dir)
    sock_dir = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))  # AF_UNIX paths are short
    address = f"ipc://{sock_dir / 'd.sock'}"
    log_path = state / "daemon.log"
    print(f"state dir  {state}\naddress    {address}\ndaemon log {log_path}")
    proc = start_daemon(state, address, log_path)
    try:
        t0 = time.monotonic()
        wait_ready(proc, address, log_path, timeout=90)
        print(
            f"daemon ready in {time.monotonic() - t0:.1f} s; starting {args.workers} workers "
            f"x {args.steps} steps x {len(METRICS)} metrics"
        )
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(args.workers)
        jobs = [(i, address, args.steps) for i in range(args.workers)]
        with ctx.Pool(args.workers, initializer=_init_worker, initargs=(barrier,)) as pool:
            results = pool.map(_worker_star, jobs, chunksize=1)
    finally:
        if proc.poll() is None:
            stop_daemon(proc, log_path)
        shutil.rmtree(sock_dir, ignore_errors=True)

    sent = sum(r.records for r in results)
    wall = (max(r.committed_ns for r in results) - min(r.first_send_ns for r in results)) / 1e9
    loop = max(r.logged_ns - r.first_send_ns for r in results) / 1e9
    calls = sorted(c for r in results for c in r.call_ns)
    print()
    found = read_back(state / "mlflow.db", results)
    print()
    print(f"records sent      {sent:,}  (params, tags, metric points, artifacts)")
    print(f"records in MLflow {found:,}  {'OK' if found == sent else 'MISMATCH'}")
    print(
        f"wall time         {wall:.2f} s from the first send to everything committed "
        f"({sent / wall:,.0f} records/s)"
    )
    print(f"logging loop      {loop:.2f} s in the slowest worker, then end() waited for the commit")
    print(
        f"log_metric cost   p50 {percentile(calls, 0.50) / 1e3:.1f} us, "
        f"p99 {percentile(calls, 0.99) / 1e3:.1f} us, max {calls[-1] / 1e3:.1f} us "
        f"over {len(calls):,} calls"
    )
    browse = mlflow_ui_command(f"sqlite:///{state / 'mlflow.db'}")
    print(f"\nbrowse the runs:  {browse}")
    if found != sent:
        print(f"demo: FAILED: {sent - found} record(s) missing from MLflow", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
