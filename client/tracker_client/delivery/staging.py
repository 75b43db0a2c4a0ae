"""Artifact staging, client side: a copy of the file or directory, taken before the log call
returns, in ``<staging dir>/<client id>/<uuid>/<name>`` — the only shape the daemon accepts.

The staging dir is the daemon's (from its welcome); the daemon, which reads the copy and deletes
the slot after the upload, may run as another user of the same group. So (client/PROTOCOL.md,
section 5.3) the client's dir, the slot and every directory of a copied tree get mode 2770
(group rwx: the daemon can list them and unlink their entries) and every file 0640 (group
readable), whatever the process's umask. A directory's symlinks are copied as the files they
point to (``symlinks=False``), so no link ends up in the staging dir.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "stage"]

DIR_MODE = 0o2770  # setgid, group rwx: the daemon (same group) lists and deletes
FILE_MODE = 0o640  # group readable: the daemon (same group) reads


def stage(staging_dir: Path, client_id: str, src: Path, *, is_dir: bool) -> Path:
    """Copy ``src`` into a fresh slot of this client under ``staging_dir``; returns the copy."""
    mine = staging_dir / client_id
    slot = mine / uuid.uuid4().hex
    slot.mkdir(parents=True)
    for d in (mine, slot):  # the daemon (same group, maybe another user) deletes them
        os.chmod(d, DIR_MODE)
    target = slot / src.name
    if is_dir:
        shutil.copytree(src, target, symlinks=False, copy_function=shutil.copyfile)
        for top, _dirs, files in os.walk(target):
            os.chmod(top, DIR_MODE)
            for name in files:
                os.chmod(os.path.join(top, name), FILE_MODE)
    else:
        shutil.copyfile(src, target)
        os.chmod(target, FILE_MODE)
    return target
