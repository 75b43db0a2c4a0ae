"""What every scenario runs on: the bench's child processes (``Procs``), a daemon per repeat,
the run context (``Ctx``: arguments, results, count checks) and counting what the store holds."""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tracker_client

TS0 = 1_700_000_000_000  # timestamp (ms) of step 0 in the synthetic workloads


class BenchError(RuntimeError):
    pass


class Skipped(Exception):
    """A scenario that cannot run here (e.g. no PostgreSQL): reported with its reason, not an
    error."""


# --------------------------------------------------------------------------- processes


class Procs:
    """Every child of the bench, each in its own session (``kill_all`` ends what is left), its
    stderr in a log file (a pipe nobody reads could fill up and block the child)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.items: list[subprocess.Popen[bytes]] = []
        self.log_of: dict[int, Path] = {}

    def spawn(
        self, cmd: list[str], env: dict[str, str], name: str, pipe: bool = True
    ) -> subprocess.Popen[bytes]:
        """``pipe``: stdout is a pipe to read; else it goes to the log file too."""
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{len(self.items):03d}-{name}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
                bufsize=0,
                env=env,
                start_new_session=True,
            )
        self.items.append(proc)
        self.log_of[proc.pid] = path
        return proc

    def child(self, mode: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tracker_daemon.bench", mode, json.dumps(spec)]
        return self.spawn(cmd, clean_env(), mode)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        path = self.log_of.get(proc.pid)
        return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""

    def read_line(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
        """One line from a child's stdout (unbuffered), or BenchError with its log."""
        assert proc.stdout is not None
        deadline, buf = time.monotonic() + timeout, b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise BenchError(f"{what}: no answer within {timeout:g} s")
            byte = proc.stdout.read(1)
            if not byte:
                raise BenchError(f"{what}: exited with {proc.wait(10)}:\n{self.log(proc)}")
            buf += byte
        return buf.decode().strip()

    def finish(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> Any:
        """Wait for a child; return the JSON document it printed last."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            raise BenchError(f"{what}: exited with {proc.returncode}:\n{self.log(proc)}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def kill_all(self) -> None:
        for proc in self.items:
            if proc.poll() is None:  # the group leader is alive: kill its whole group
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self.items.clear()


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_DAEMON_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **(extra or {})}


def send_line(proc: subprocess.Popen[bytes], line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")


@dataclass
class BenchDaemon:
    """A ``tracker-daemon run`` process of one repeat, and where its store is."""

    proc: subprocess.Popen[bytes]
    address: str
    backend: str

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = tracker_client.query_status(self.address, timeout=30)
        return status


@contextmanager
def daemon(
    ctx: Ctx,
    rep_dir: Path,
    backend: str | None = None,
    graceful: bool = True,
    state: str = "state",
    sink: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[BenchDaemon]:
    """``tracker-daemon run`` on ``rep_dir/state`` (``--sink sink`` if given, ``env`` added to
    its environment); stopped at the end: SIGTERM (no drain), or SIGKILL when not ``graceful``
    or on an error (its state is thrown away anyway)."""
    backend = backend or ctx.args.backend_store_uri
    sock_dir = Path(tempfile.mkdtemp(prefix="tdb-", dir="/tmp"))
    state_dir = rep_dir / state
    address = f"ipc://{sock_dir / 'd.sock'}"  # AF_UNIX paths are short: not under rep_dir
    cmd = [
        sys.executable,
        "-m",
        "tracker_daemon.cli",
        "run",
        "--state-dir",
        str(state_dir),
        "--address",
        address,
        "--log-level",
        "WARNING",
    ]
    cmd += ["--backend-store-uri", backend] if backend else []
    cmd += ["--sink", sink] if sink else []
    # all is verified before the stop: no drain
    full_env = clean_env({"TRACKER_DAEMON_DRAIN_TIMEOUT_S": "0", **(env or {})})
    proc = ctx.procs.spawn(cmd, full_env, "daemon", pipe=False)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise BenchError(f"daemon exited with {proc.returncode}:\n{ctx.procs.log(proc)}")
            try:
                tracker_client.query_status(address, timeout=0.5)
                break
            except tracker_client.DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise BenchError(f"daemon not ready:\n{ctx.procs.log(proc)}") from None
        yield BenchDaemon(proc, address, backend or f"sqlite:///{state_dir / 'mlflow.db'}")
    except BaseException:
        graceful = False
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(sock_dir, ignore_errors=True)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def count_metrics(ctx: Ctx, uri: str, runs: list[str], keys: list[str]) -> tuple[int, str]:
    """How many metric points the store holds for ``runs``, and how that was counted."""
    db = sqlite_path(uri)
    if db is None:
        child = ctx.procs.child("count", {"uri": uri, "runs": runs, "keys": keys})
        return int(ctx.procs.finish(child, 600, "count")["n"]), "get_metric_history"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        sql = f"SELECT COUNT(*) FROM metrics WHERE run_uuid IN ({','.join('?' * len(runs))})"
        return int(con.execute(sql, runs).fetchone()[0]), "sql-count"
    finally:
        con.close()


@dataclass
class Ctx:
    args: argparse.Namespace
    procs: Procs
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    rate: float = 0.0  # the latency scenario's offered load, once known

    def experiment(self, scenario: str) -> str:
        return f"tracker-daemon-bench-{scenario}-{uuid.uuid4().hex[:8]}"

    def store(self, rep_dir: Path, name: str) -> str:
        """A fresh store for the ceiling / direct baselines (or the user's backend)."""
        return self.args.backend_store_uri or f"sqlite:///{rep_dir / name}"

    def note(self, scen: str, text: str) -> None:
        notes = self.results.setdefault(scen, {}).setdefault("notes", [])
        if text not in notes:
            notes.append(text)

    def check(self, scen: str, rep: int, what: str, sent: int, got: int, method: str) -> None:
        self.results.setdefault(scen, {}).setdefault("checks", []).append(
            {
                "repeat": rep,
                "what": what,
                "sent": sent,
                "committed": got,
                "method": method,
                "ok": sent == got,
            }
        )
        if sent != got:
            print(
                f"bench: {scen} {rep}: {what}: sent {sent}, found {got} ({method})", file=sys.stderr
            )
