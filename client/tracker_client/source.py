"""Default tags of a new run, as MLflow's fluent API sets them (``mlflow.user``,
``mlflow.source.name``, ``mlflow.source.type``, ``mlflow.source.git.commit``). The git commit is
read from the ``.git`` directory around the script, without running git."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

__all__ = ["default_tags"]


def default_tags() -> dict[str, str]:
    """The tags MLflow's fluent API gives a new run: user, source name and type, git commit."""
    tags = {
        "mlflow.user": _user(),
        "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "<console>",
        "mlflow.source.type": "LOCAL",
    }
    commit = _git_commit(
        Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path.cwd()
    )
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _git_commit(start: Path) -> str | None:
    """The commit of the git checkout containing ``start``, read from .git without running git."""
    for d in (start, *start.parents):
        git = d / ".git"
        if git.is_file():  # worktree or submodule: "gitdir: <path>"
            text = git.read_text(errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None
            git = (d / text.split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head or None
            ref = head.split(":", 1)[1].strip()
            common = git
            if (git / "commondir").is_file():
                common = (git / (git / "commondir").read_text().strip()).resolve()
            for base in (git, common):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip()
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
        except OSError:
            return None
        return None
    return None
