"""The entry points the docs, the Makefile and the packaging name keep working after the daemon's
modules moved into subpackages: ``python -m tracker_daemon.cli`` (tests, systemd-less runs),
``python -m tracker_daemon.demo`` (``make demo``), ``python -m tracker_daemon.bench.sqlwriter``
(docs/performance.md), ``python -m tracker_daemon.bench MODE SPEC`` (the bench's children, found
by harness.py) and the ``tracker-daemon`` console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(
    ("module", "usage"),
    [
        ("tracker_daemon.cli", "usage: tracker-daemon"),
        ("tracker_daemon.demo", "usage: python -m tracker_daemon.demo"),
        ("tracker_daemon.bench.sqlwriter", "--transactions"),
    ],
)
def test_python_m_entry_points_answer_help(module: str, usage: str) -> None:
    done = run(sys.executable, "-m", module, "--help")
    assert done.returncode == 0, done.stderr
    assert usage in done.stdout


def test_the_bench_children_are_found_by_mode() -> None:
    done = run(sys.executable, "-m", "tracker_daemon.bench", "no-such-mode", "{}")
    assert done.returncode != 0
    assert "KeyError: 'no-such-mode'" in done.stderr  # the children's table was reached


def test_the_console_script_runs_the_cli() -> None:
    script = Path(sys.executable).with_name("tracker-daemon")
    done = run(str(script), "--version")
    assert done.returncode == 0, done.stderr
    version = (REPO / "client" / "tracker_client" / "VERSION").read_text().strip()
    assert version in done.stdout
