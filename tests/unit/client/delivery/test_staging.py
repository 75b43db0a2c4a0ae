"""Client-side staging (client/PROTOCOL.md, section 5.3): the slot layout and the modes a daemon
of another user in the same group needs to read the copy and delete the slot, whatever the
process's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tracker_client.delivery.staging import DIR_MODE, FILE_MODE, stage

CID = "6f1c2a9e0b3d4c5e8f7a1b2c3d4e5f60"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_staged_tree_is_group_readable_and_deletable_under_a_strict_umask(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src" / "ckpt"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "deeper" / "b.bin").write_bytes(b"b")
    os.chmod(src / "sub", 0o700)
    os.chmod(src / "a.txt", 0o600)
    old = os.umask(0o077)
    try:
        copy = stage(tmp_path / "staging", CID, src, is_dir=True)
    finally:
        os.umask(old)
    slot = copy.parent
    assert slot.parent == tmp_path / "staging" / CID and len(slot.name) == 32
    assert int(slot.name, 16) >= 0 and copy.name == "ckpt"
    dirs = [slot.parent, slot, copy, copy / "sub", copy / "sub" / "deeper"]
    assert [_mode(d) for d in dirs] == [DIR_MODE] * 5 == [0o2770] * 5
    files = [copy / "a.txt", copy / "sub" / "deeper" / "b.bin"]
    assert [_mode(f) for f in files] == [FILE_MODE] * 2 == [0o640] * 2
    assert (copy / "sub" / "deeper" / "b.bin").read_bytes() == b"b"


def test_a_staged_file_gets_the_file_mode(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights")
    os.chmod(src, 0o600)
    copy = stage(tmp_path / "staging", CID, src, is_dir=False)
    assert copy.read_bytes() == b"weights" and copy.name == "model.pt"
    assert (_mode(copy.parent), _mode(copy)) == (0o2770, 0o640)
