"""The staging dir, read as if every client were hostile (blocking; run in worker threads).

A client stages an artifact as ``<staging>/<client_id>/<slot>/<entry>`` (client/PROTOCOL.md,
section 5.3). The daemon accepts exactly that shape, for the sending client only, and reads it
without following a single link: the staging dir, the client dir and the slot are opened with
``O_NOFOLLOW | O_DIRECTORY`` relative to each other's fds, files with ``O_NOFOLLOW`` relative to
their directory's fd, and directories are walked by fd. Symlinks, devices, fifos, sockets and
files not owned by the slot's owner (which covers hard links to other users' files) refuse the
whole artifact. What was verified is copied through the fds into a private 0700 dir under the
state dir, and only that copy is given to MLflow, so swapping a path after the check changes
nothing. Deleting is by fd as well: only a slot that is a real directory at the slot position.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = [
    "MAX_DEPTH",
    "PARTIAL_PREFIX",
    "SlotMissing",
    "SlotRef",
    "StagingArea",
    "StagingRefused",
    "clean_partial_uploads",
    "closing_fd",
    "copy_bytes",
    "local_root",
    "parse_staged",
]

log = logging.getLogger("tracker_daemon")

PARTIAL_PREFIX = ".artifact.uploading."  # MLflow's LocalArtifactRepository temp file prefix
MAX_DEPTH = 64  # directory levels inside a staged directory (each level holds an fd while walked)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a fifo must not block us
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 30


class StagingRefused(Exception):
    """The staged artifact can never be uploaded (its shape, a link, a device, an owner...)."""


class SlotMissing(StagingRefused):
    """The slot (or its entry) does not exist."""


@dataclass(frozen=True, slots=True)
class SlotRef:
    """``<staging>/<client_id>/<slot>/<entry>``: names, each one path component."""

    client_id: str
    slot: str
    entry: str


def _component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


def parse_staged(staging: str, client_id: str, staged_path: object) -> SlotRef:
    """Accept ``staged_path`` only as a slot of ``client_id``: exactly
    ``<staging>/<client_id>/<slot>/<entry>``, compared as strings (nothing is resolved)."""
    if not isinstance(staged_path, str):
        raise StagingRefused(f"staged_path: expected a str, got {type(staged_path).__name__}")
    prefix = staging.rstrip("/") + "/"
    if not staged_path.startswith(prefix):
        raise StagingRefused(
            f"staged_path {staged_path!r:.300} is not inside the staging dir {staging}"
        )
    parts = staged_path[len(prefix) :].split("/")
    if len(parts) != 3 or not all(_component(part) for part in parts):
        raise StagingRefused(
            f"staged_path {staged_path!r:.300} is not of the form "
            f"{prefix}<client_id>/<slot>/<file or directory name>"
        )
    if parts[0] != client_id:
        raise StagingRefused(
            f"staged_path {staged_path!r:.300} is not in this client's staging dir "
            f"{prefix}{client_id}/"
        )
    return SlotRef(parts[0], parts[1], parts[2])


def _open_dir(name: str, dir_fd: int | None, what: str) -> int:
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        raise SlotMissing(f"{what} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StagingRefused(f"{what} is not a directory (a symlink or another kind)") from None
        raise


@contextmanager
def closing_fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or directory"


def _check_owner(st: os.stat_result, owner: int, rel: str) -> None:
    if st.st_uid != owner:
        linked = f", hard-linked {st.st_nlink} times" if st.st_nlink > 1 else ""
        raise StagingRefused(
            f"staged entry {rel!r} is owned by uid {st.st_uid}{linked}, not by the slot's "
            f"owner uid {owner}"
        )


def copy_bytes(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes (fewer if the file shrank) from fd to fd, in the kernel if it can.
    A full disk raises ENOSPC: ``copy_file_range`` may report it as a short copy returning 0,
    so a 0 is checked with ``read``/``write``, which tell end of file from a failed write."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, _CHUNK))
            if n == 0:
                break
            left -= n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while left > 0:  # the fds' offsets moved with what was copied so far
        chunk = os.read(src, min(left, 1 << 20))
        if not chunk:
            return
        view = memoryview(chunk)
        while view:  # a short write (disk full) is followed by one that raises
            view = view[os.write(dst, view) :]
        left -= len(chunk)


class StagingArea:
    """The staging dir (clients write there) and a private upload dir (only the daemon)."""

    def __init__(self, root: Path, private: Path) -> None:
        self.root = root
        self.private = private

    def prepare(self) -> None:
        """(Re)create the private upload dir, empty, 0700: copies left by a killed daemon go."""
        if self.private.exists() or self.private.is_symlink():
            if self.private.is_symlink() or not self.private.is_dir():
                self.private.unlink()
            else:
                shutil.rmtree(self.private)
        self.private.mkdir(mode=0o700)
        os.chmod(self.private, 0o700)

    def parse(self, client_id: str, staged_path: object) -> SlotRef:
        return parse_staged(str(self.root), client_id, staged_path)

    @contextmanager
    def _client_dir(self, ref: SlotRef) -> Iterator[int]:
        with closing_fd(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as root:
            what = f"client staging dir {ref.client_id!r}"
            with closing_fd(_open_dir(ref.client_id, root, what)) as cdir:
                yield cdir

    def snapshot(self, ref: SlotRef) -> Path:
        """Copy the slot's entry, verified, into a fresh private dir; return the copy's path.
        Raises StagingRefused (never uploadable), SlotMissing, or OSError (I/O)."""
        with self._client_dir(ref) as cdir:
            with closing_fd(_open_dir(ref.slot, cdir, f"slot {ref.slot!r}")) as slot:
                owner = os.fstat(slot).st_uid
                dest = Path(tempfile.mkdtemp(prefix="upload-", dir=self.private))
                try:
                    with closing_fd(os.open(dest, _DIR)) as dest_fd:
                        self._copy_entry(slot, ref.entry, dest_fd, owner, ref.entry, 0)
                except BaseException:
                    shutil.rmtree(dest, ignore_errors=True)
                    raise
        return dest / ref.entry

    def _copy_entry(
        self, src_dir: int, name: str, dst_dir: int, owner: int, rel: str, depth: int
    ) -> None:
        try:
            st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
        except FileNotFoundError:
            raise SlotMissing(f"staged entry {rel!r} does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                raise StagingRefused(f"staged entry {rel!r} is nested deeper than {MAX_DEPTH}")
            with closing_fd(_open_dir(name, src_dir, f"staged entry {rel!r}")) as sub:
                st = os.fstat(sub)  # what was opened, not what was looked at
                _check_owner(st, owner, rel)
                os.mkdir(name, 0o700, dir_fd=dst_dir)
                with closing_fd(os.open(name, _DIR, dir_fd=dst_dir)) as dsub:
                    for child in sorted(os.listdir(sub)):
                        try:
                            self._copy_entry(sub, child, dsub, owner, f"{rel}/{child}", depth + 1)
                        except SlotMissing as exc:  # only a missing slot or entry is "missing"
                            raise StagingRefused(f"{exc} (it vanished while read)") from None
            return
        if not stat.S_ISREG(st.st_mode):
            raise StagingRefused(f"staged entry {rel!r} is {_kind(st.st_mode)}")
        if name.startswith(PARTIAL_PREFIX):
            raise StagingRefused(
                f"staged entry {rel!r}: names starting with {PARTIAL_PREFIX!r} are MLflow's"
            )
        try:
            fd = os.open(name, _FILE, dir_fd=src_dir)
        except FileNotFoundError:
            raise SlotMissing(f"staged entry {rel!r} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StagingRefused(f"staged entry {rel!r} is a symlink") from None
            raise
        with closing_fd(fd):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StagingRefused(f"staged entry {rel!r} is {_kind(st.st_mode)}")
            _check_owner(st, owner, rel)
            with closing_fd(os.open(name, _NEW_FILE, 0o600, dir_fd=dst_dir)) as out:
                copy_bytes(fd, out, st.st_size)
                os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)

    def release(self, copy: Path) -> None:
        """Delete a private copy made by :meth:`snapshot`."""
        shutil.rmtree(copy.parent, ignore_errors=True)

    def discard(self, ref: SlotRef) -> bool:
        """Delete the slot: only a real directory at ``<staging>/<client_id>/<slot>``, by fd,
        following no link. Returns whether it was deleted."""
        try:
            with self._client_dir(ref) as cdir:
                st = os.stat(ref.slot, dir_fd=cdir, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    return False
                try:  # symlink-safe: walks by fd, no following
                    shutil.rmtree(ref.slot, dir_fd=cdir)
                except OSError as exc:
                    log.warning(
                        "event=slot_not_removed client=%s slot=%s reason=%r hint=%s",
                        ref.client_id,
                        ref.slot[:64],
                        str(exc),
                        "the_slot_and_its_directories_need_group_rwx_(2770)",
                    )
                    return False
                return True
        except (StagingRefused, OSError):
            return False


def local_root(artifact_root: str) -> Path | None:
    """The local directory of an artifact root (a path or a ``file:`` URI), or None."""
    if "://" not in artifact_root and not artifact_root.startswith("file:"):
        return Path(artifact_root)
    url = urlparse(artifact_root)
    if url.scheme == "file" and url.netloc in ("", "localhost"):
        return Path(unquote(url.path))
    return None


def clean_partial_uploads(artifact_root: str) -> int:
    """Delete MLflow's partial upload files (``.artifact.uploading.*``, regular files only)
    under a local artifact root, walking by fd without following links. Returns the count."""
    root = local_root(artifact_root)
    if root is None:
        return 0
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    with closing_fd(top):
        return _clean(top, 0)


def _clean(dir_fd: int, depth: int) -> int:
    removed = 0
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return 0
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and name.startswith(PARTIAL_PREFIX):
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
            elif stat.S_ISDIR(st.st_mode) and depth < 4 * MAX_DEPTH:
                with closing_fd(os.open(name, _DIR, dir_fd=dir_fd)) as sub:
                    removed += _clean(sub, depth + 1)
        except OSError:
            continue  # vanished, or not ours to read: leave it
    return removed
