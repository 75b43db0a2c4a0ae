"""The destination side of the artifact lane: an upload goes to a local artifact root written by
fd, following no link, or to a remote store through MLflow (blocking; run in worker threads).

The run's artifact URI is placed below a root (:mod:`.artifact_roots`; a local
location outside every root is refused, however the run got it). The names are checked against the
root's limits (NAME_MAX per name, PATH_MAX for the whole path, read with ``pathconf``) before
anything is written. Then, from the root's fd (the root itself is trusted as configured), each
directory below it is created if missing (``mkdir`` relative to its parent's fd) and opened with
``O_NOFOLLOW | O_DIRECTORY``: a symlink, or anything but a directory, at any level refuses the
upload. Each file is written to a fresh ``.artifact.uploading.<random>`` name (``O_CREAT | O_EXCL |
O_NOFOLLOW``) in its directory, then renamed over the artifact's name within that directory fd —
MLflow's own publish step — so an existing entry (even a link planted there) is replaced, never
written through. A file logged alone keeps its mode and times (``shutil.copystat`` in MLflow); a
directory's files get the default mode (the umask), as ``log_artifacts`` gives them.

Every refusal is a PermanentSinkError ``INVALID_PARAMETER_VALUE`` naming the path and the rule.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from ..errors import PermanentSinkError
from ..store.sink import classify
from .artifact_roots import ArtifactRoots, LocalPlace, LocationRefused, refusal
from .staging import MAX_DEPTH, PARTIAL_PREFIX, closing_fd, copy_bytes

__all__ = ["ArtifactWriter", "NameLimits", "name_problem", "write_local"]

_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the root's own path: as configured
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_TRIES = 8

Remote = Callable[[str, str, "str | None"], None]


def _refused(message: str) -> PermanentSinkError:
    return PermanentSinkError("INVALID_PARAMETER_VALUE", message)


@dataclass(frozen=True, slots=True)
class NameLimits:
    """The file system's limits at a root: bytes per name, bytes per path (with its NUL)."""

    name_max: int = 255
    path_max: int = 4096

    @classmethod
    def at(cls, root: str) -> NameLimits:
        def conf(name: str, default: int) -> int:
            try:
                value = os.pathconf(root, name)
            except (OSError, ValueError):
                return default
            return value if value > 0 else default

        return cls(conf("PC_NAME_MAX", 255), conf("PC_PATH_MAX", 4096))


def name_problem(root: str, parts: tuple[str, ...], limits: NameLimits) -> str | None:
    """Why ``root/parts...`` cannot be written (a name or the whole path too long), or None."""
    for part in parts:
        size = len(os.fsencode(part))
        if size > limits.name_max:
            return (
                f"the name {part[:40]!r}... is {size} bytes long: the limit is "
                f"{limits.name_max} bytes per file or directory name (NAME_MAX)"
            )
    total = len(os.fsencode(root.rstrip("/"))) + sum(1 + len(os.fsencode(p)) for p in parts)
    if total > limits.path_max - 1:
        return (
            f"the path {'/'.join(parts)[:60]!r}... is {total} bytes long with the artifact root "
            f"{root}: the limit is {limits.path_max - 1} bytes (PATH_MAX {limits.path_max}, "
            f"counting its NUL)"
        )
    return None


def _shown(place: LocalPlace, parts: tuple[str, ...]) -> str:
    return "/".join((place.root.rstrip("/"), *parts))[:400]


def _enter(parent: int, name: str, shown: str) -> int:
    """The directory ``name`` in ``parent`` (created if missing), opened without following."""
    with suppress(FileExistsError):
        os.mkdir(name, 0o777, dir_fd=parent)  # the umask applies, as to MLflow's makedirs
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refused(
                f"{shown!r} is a symbolic link or not a directory: the daemon follows no link "
                "below its artifact roots"
            ) from None
        raise


def _publish(src: int, dst_dir: int, name: str, shown: str, keep: os.stat_result | None) -> None:
    """Write the open file ``src`` as ``name`` in ``dst_dir``: a fresh temp name, then a rename
    within the directory. ``keep``: the source's stat, whose mode and times the result gets."""
    for _ in range(_TEMP_TRIES):
        temp = f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
        try:
            out = os.open(temp, _TEMP, 0o600 if keep else 0o666, dir_fd=dst_dir)
            break
        except FileExistsError:
            continue
    else:
        raise _refused(f"{shown!r}: no free temporary name in its directory")
    try:
        with closing_fd(out):
            copy_bytes(src, out, os.fstat(src).st_size)
            if keep is not None:
                os.fchmod(out, stat.S_IMODE(keep.st_mode) & 0o777)
                os.utime(out, ns=(keep.st_atime_ns, keep.st_mtime_ns))
        try:
            os.rename(temp, name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
        except IsADirectoryError:
            raise _refused(f"{shown!r} exists and is a directory") from None
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=dst_dir)
        raise


def _source_entries(
    src: int, prefix: tuple[str, ...], depth: int
) -> Iterator[tuple[tuple[str, ...], bool]]:
    """(relative parts, is a directory) of everything in the daemon's private copy."""
    for name in sorted(os.listdir(src)):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        rel = (*prefix, name)
        if stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                raise _refused(f"{'/'.join(rel)[:200]!r} is nested deeper than {MAX_DEPTH}")
            yield rel, True
            with closing_fd(os.open(name, _DIR, dir_fd=src)) as sub:
                yield from _source_entries(sub, rel, depth + 1)
        elif stat.S_ISREG(st.st_mode):
            yield rel, False
        else:
            raise _refused(f"{'/'.join(rel)[:200]!r} is not a regular file or directory")


def _write_tree(src: int, dst: int, place: LocalPlace, at: tuple[str, ...]) -> None:
    for name in sorted(os.listdir(src)):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        shown = _shown(place, (*at, name))
        if stat.S_ISDIR(st.st_mode):
            with (
                closing_fd(os.open(name, _DIR, dir_fd=src)) as sub,
                closing_fd(_enter(dst, name, shown)) as d,
            ):
                _write_tree(sub, d, place, (*at, name))
        else:
            with closing_fd(os.open(name, _READ, dir_fd=src)) as f:
                _publish(f, dst, name, shown, None)


def write_local(place: LocalPlace, source: str, artifact_path: str | None) -> None:
    """Upload the daemon's private copy ``source`` (a file, or a directory whose contents are
    logged) to ``place`` / ``artifact_path``. Raises PermanentSinkError (refused) or OSError."""
    sub = tuple(artifact_path.split("/")) if artifact_path else ()
    base = (*place.parts, *sub)
    name = os.path.basename(source.rstrip("/"))
    with closing_fd(os.open(source, _READ | os.O_NONBLOCK)) as src:
        st = os.fstat(src)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir:
            targets = [base, *((*base, *rel) for rel, _ in _source_entries(src, (), 0))]
        else:
            if name.startswith(PARTIAL_PREFIX):
                raise _refused(f"names starting with {PARTIAL_PREFIX!r} are MLflow's")
            targets = [(*base, name)]
        limits = NameLimits.at(place.root)
        for parts in targets:  # every name is checked before anything is written
            problem = name_problem(place.root, parts, limits)
            if problem is not None:
                raise _refused(problem)
        try:
            with closing_fd(os.open(place.root, _ROOT)) as top:
                _write_below(top, src, place, base, st, name if not is_dir else None)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise _refused(f"a name or the path is too long: {exc.strerror}") from None
            raise


def _write_below(
    top: int,
    src: int,
    place: LocalPlace,
    base: tuple[str, ...],
    st: os.stat_result,
    name: str | None,
) -> None:
    """From the root's fd down to ``base`` (created as needed), then the file ``name`` or the
    directory's contents."""
    current = os.dup(top)
    try:
        for i, part in enumerate(base):
            child = _enter(current, part, _shown(place, base[: i + 1]))
            os.close(current)
            current = child
        if name is None:
            _write_tree(src, current, place, base)
        else:
            _publish(src, current, name, _shown(place, (*base, name)), st)
    finally:
        os.close(current)


class ArtifactWriter:
    """``upload(artifact_uri, local_copy, artifact_path)`` for the artifact lane: local locations
    below the roots by fd, remote stores through ``remote`` (``Sink.upload_artifact``)."""

    def __init__(self, roots: ArtifactRoots, remote: Remote) -> None:
        self.roots = roots
        self._remote = remote

    def upload(self, artifact_uri: str, local_path: str, artifact_path: str | None) -> None:
        """Raises only SinkError."""
        try:
            place = self.roots.place(artifact_uri)
        except LocationRefused as exc:
            raise _refused(refusal("the run's artifact location", artifact_uri, exc)) from None
        if place is None:
            self._remote(artifact_uri, local_path, artifact_path)
            return
        try:
            write_local(place, local_path, artifact_path)
        except PermanentSinkError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
