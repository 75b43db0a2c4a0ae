"""Artifact staging, client side: a copy of the file or directory, taken before the log call
returns, in ``<staging dir>/<client id>/<uuid>/<name>`` — the only shape the daemon accepts.

The staging dir is the daemon's (from its welcome); the client's dir and the slot are made
group-writable with setgid (mode 2770) because the daemon, which deletes them after the upload,
may run as another user of the same group. A directory's symlinks are copied as the files they
point to (``symlinks=False``), so no link ends up in the staging dir.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["stage"]


def stage(staging_dir: Path, client_id: str, src: Path, *, is_dir: bool) -> Path:
    """Copy ``src`` into a fresh slot of this client under ``staging_dir``; returns the copy."""
    mine = staging_dir / client_id
    slot = mine / uuid.uuid4().hex
    slot.mkdir(parents=True)
    for d in (mine, slot):  # the daemon (same group, maybe another user) deletes them
        os.chmod(d, 0o2770)
    target = slot / src.name
    if is_dir:
        shutil.copytree(src, target, symlinks=False)
    else:
        shutil.copyfile(src, target)
    return target
