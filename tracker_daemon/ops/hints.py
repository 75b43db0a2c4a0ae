"""The ``mlflow ui`` command the daemon (and the demo) prints for browsing the runs it wrote.

A bare ``mlflow`` only works when the ``mlflow`` on PATH is the MLflow installed next to the
daemon; a user who installed the daemon into a virtual environment without activating it has no
``mlflow`` on PATH (or another one). The hint therefore names ``mlflow`` only when PATH resolves
to the script of this interpreter's environment, and otherwise ``<this python> -m mlflow ui``,
which always runs the MLflow the daemon itself writes with."""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["mlflow_ui_command"]


def mlflow_ui_command(
    backend_uri: str,
    *,
    which: Callable[[str], str | None] = shutil.which,
    executable: str = sys.executable,
) -> str:
    """A shell command that opens the MLflow UI on ``backend_uri`` (pass it redacted)."""
    args = ["ui", "--backend-store-uri", backend_uri]
    if _is_own_mlflow(which("mlflow"), executable):
        return shlex.join(["mlflow", *args])
    return shlex.join([executable, "-m", "mlflow", *args])


def _is_own_mlflow(found: str | None, executable: str) -> bool:
    """``found`` is the ``mlflow`` script installed with this interpreter: in the same bin dir
    (a venv's or the system's), or a script whose ``#!`` line runs this interpreter."""
    if not found or not executable:
        return False
    script, python = Path(found).absolute(), Path(executable).absolute()
    if script.parent == python.parent:
        return True
    try:
        with open(script, "rb") as f:
            first = f.readline(4096).decode(errors="replace")
    except OSError:
        return False
    if not first.startswith("#!"):
        return False
    words = first[2:].split()
    return bool(words) and Path(words[0]).absolute() in (python, Path(executable).resolve())
