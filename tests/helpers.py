"""Deprecated: import from ``tests.support`` (this module only re-exports it, for branches that
still import ``tests.helpers``)."""

from tests.support.daemon import (
    REPO,
    Daemon,
    daemon_cli,
    daemon_command,
    daemon_env,
    running_daemon,
    short_tmpdir,
)
from tests.support.disk import fill_disk, mounted_tmpfs
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tests.support.workers import WORKER, finish_workers, start_worker

__all__ = [
    "REPO",
    "WORKER",
    "Daemon",
    "daemon_cli",
    "daemon_command",
    "daemon_env",
    "fill_disk",
    "finish_workers",
    "mounted_tmpfs",
    "running_daemon",
    "short_tmpdir",
    "sqlite_locked",
    "start_worker",
    "wait_for",
]
