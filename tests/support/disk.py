"""Small real filesystems: a tmpfs mounted for one test, filled up to ENOSPC."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (e.g. "8m") mounted at ``path``, unmounted at the end; the
    test is skipped, with the reason, where mounting is not permitted (not root); in CI it fails."""
    from tests.support.prereq import require

    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    require(
        "a tmpfs mount (needs root)",
        proc.returncode == 0,
        f"run the tests as root (CI does); mount said: {proc.stderr.strip()}",
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(path: Path) -> int:
    """Append to the file ``path`` until its filesystem has no room left; returns bytes written."""
    import errno

    chunk = b"\0" * (256 * 1024)
    written = 0
    with open(path, "ab", buffering=0) as fh:
        while True:
            try:
                n = fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
            if not n:
                return written
            written += n
