"""When the daemon tries a failed spool import again (tracker_daemon.runs.spool_backoff)."""

from __future__ import annotations

import os
from pathlib import Path

from tracker_daemon.runs.spool_backoff import MAX_DELAY_S, SpoolBackoff


def test_failures_back_off_doubling_up_to_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    path.write_bytes(b"x")
    b = SpoolBackoff()
    assert b.due(path, 0.0)
    delays = [b.failed(path, 0.0) for _ in range(9)]
    assert delays[:4] == [30.0, 60.0, 120.0, 240.0]
    assert delays[-1] == MAX_DELAY_S
    assert b.attempts(path) == 9
    assert not b.due(path, MAX_DELAY_S - 1)
    assert b.due(path, MAX_DELAY_S)
    b.forget(path)
    assert b.attempts(path) == 0 and b.due(path, 0.0)


def test_a_refused_spool_waits_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "b.spool"
    path.write_bytes(b"x")
    b = SpoolBackoff()
    assert b.failed(path, 0.0, permanent=True) == float("inf")
    assert not b.due(path, 10**9)
    path.write_bytes(b"xy")  # replaced by an operator
    os.utime(path, ns=(1, 1))
    assert b.due(path, 0.0)
