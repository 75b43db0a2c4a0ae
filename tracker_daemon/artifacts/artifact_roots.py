"""Where the daemon may write artifacts: the local artifact roots (``artifact_roots`` and the
default artifact root) and the rule that places a location below one of them (pure; no I/O).

An artifact location is *local* when MLflow would hand it to its local repository: a plain path
or a ``file:`` URI (MLflow ignores a ``file:`` URI's host). A local location must be absolute and,
compared as written (normalised lexically, nothing resolved, no ``..``), lie at or below a root;
anything else is refused (:class:`LocationRefused`). Remote stores (``s3://``,
``mlflow-artifacts:``, ``http(s)://`` ...) are not the daemon's to police and go to MLflow as
before, except ``runs:`` and ``models:``, which are references that MLflow resolves to another
location (possibly a local one) and are never a run's own store.

A root is trusted as the administrator configured it (its own path may pass through a link);
everything below it is walked by fd without following links
(:mod:`~tracker_daemon.artifacts.artifact_writer`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from ..errors import PermanentSinkError

__all__ = [
    "REFERENCE_SCHEMES",
    "SETTING",
    "ArtifactRoots",
    "LocalPlace",
    "LocationRefused",
    "local_path",
    "refusal",
    "root_path",
]

SETTING = "artifact_roots"  # the configuration key that lists the roots
REFERENCE_SCHEMES = frozenset({"runs", "models"})


class LocationRefused(ValueError):
    """A local artifact location the daemon will not write to (the message says why)."""


@dataclass(frozen=True, slots=True)
class LocalPlace:
    """A local artifact location: ``root`` (as configured) and the components below it."""

    root: str
    parts: tuple[str, ...]


def local_path(location: str) -> str | None:
    """The local path of an artifact location as MLflow would write it (a plain path, a ``file:``
    URI's unquoted path), or None for a remote store. Raises LocationRefused for a reference
    scheme (``runs:``, ``models:``)."""
    scheme = urlparse(location).scheme
    if scheme == "":
        return location
    if scheme == "file":
        return unquote(urlparse(location).path)
    if len(scheme) == 1 and scheme.isalpha():  # MLflow: a Windows drive letter is a local path
        return location
    if scheme.lower() in REFERENCE_SCHEMES:
        raise LocationRefused(
            f"{scheme}:/ names another run's or model's artifacts, not a store to write to"
        )
    return None


def _normal(path: str) -> str:
    """``path`` normalised lexically: no empty or ``.`` components, no trailing ``/``; refuses a
    relative path and any ``..`` (it could only be resolved by following what is on disk)."""
    if not path.startswith("/"):
        raise LocationRefused(f"{path[:300]!r} is not an absolute path")
    if "\x00" in path:
        raise LocationRefused("the path holds a NUL character")
    if ".." in path.split("/"):
        raise LocationRefused(f"{path[:300]!r} has a '..' component")
    normal = posixpath.normpath(path)
    return normal[1:] if normal.startswith("//") else normal  # POSIX keeps a leading "//"


def _below(path: str, root: str) -> tuple[str, ...] | None:
    if path == root:
        return ()
    prefix = root if root.endswith("/") else root + "/"
    if path.startswith(prefix):
        return tuple(path[len(prefix) :].split("/"))
    return None


@dataclass(frozen=True, slots=True)
class ArtifactRoots:
    """The local artifact roots: each as configured and, when different, its real path at
    start (MLflow may store either form in a run's artifact URI)."""

    roots: tuple[tuple[str, str], ...]  # (configured root, a form a location may use)

    @classmethod
    def of(cls, roots: Iterable[str], *, resolve: bool = True) -> ArtifactRoots:
        """Roots from configured local paths (absolute). ``resolve``: also accept each root's
        real path (read once, here; the administrator's links are trusted)."""
        pairs: list[tuple[str, str]] = []
        for root in roots:
            configured = root_path(root)
            forms = [configured]
            if resolve:
                forms.append(os.path.realpath(configured))
            for form in forms:
                if (configured, form) not in pairs:
                    pairs.append((configured, form))
        return cls(tuple(pairs))

    @property
    def paths(self) -> list[str]:
        """The configured roots, in order, once each (for messages)."""
        return list(dict.fromkeys(configured for configured, _ in self.roots))

    def place(self, location: str) -> LocalPlace | None:
        """Where a local location lies below a root; None for a remote store. Raises
        LocationRefused when it is local and not below any root (or malformed)."""
        path = local_path(location)
        if path is None:
            return None
        normal = _normal(path)
        best: LocalPlace | None = None
        for configured, form in self.roots:
            parts = _below(normal, form)
            if parts is not None and (best is None or len(parts) < len(best.parts)):
                best = LocalPlace(configured, parts)
        if best is None:
            raise LocationRefused(
                f"it is outside the daemon's local artifact roots ({SETTING} = {self.paths})"
            )
        return best

    def check(self, location: str, field: str) -> None:
        """Refuse (INVALID_PARAMETER_VALUE, naming ``field`` and the setting) a location the
        daemon would not upload to."""
        try:
            self.place(location)
        except LocationRefused as exc:
            message = refusal(field, location, exc)
            raise PermanentSinkError("INVALID_PARAMETER_VALUE", message) from None


def refusal(field: str, location: str, exc: LocationRefused) -> str:
    """The message of a refused location: the field, the value, why, and what to do."""
    return (
        f"{field} {location[:300]!r} is refused: {exc}. The daemon writes artifacts only below "
        f"its local artifact roots (setting {SETTING}) or to a remote store (s3://, "
        "mlflow-artifacts:/, ...); choose a location below a root, or ask the daemon's "
        f"administrator to add one to {SETTING}"
    )


def root_path(entry: str) -> str:
    """The local directory of a configured root (a path or a ``file:`` URI), normalised.
    Raises LocationRefused for a remote store or a relative path."""
    path = local_path(entry)
    if path is None:
        raise LocationRefused("a remote store is not a local root (remote stores need none)")
    return _normal(path)
