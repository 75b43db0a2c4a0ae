"""A virtual environment with MLflow 2.x (``mlflow-skinny``) and this repository's client, for
tests of MLflow 2 workers against the daemon (which runs MLflow 3).

Built once into ``<repo>/.venv-mlflow2`` (git-ignored) and reused while its key — the requirement,
this Python's version and the client's path and pyproject — is unchanged, so ``make test``
installs nothing on later runs. Only the package registry is needed to build it: when it cannot
be reached (and no venv is cached), :func:`mlflow2_python` skips the calling test, saying so;
any other failure to build it fails the test.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO

__all__ = ["MLFLOW2_REQUIREMENTS", "VENV", "mlflow2_python"]

# MLflow 2.22's span processor never calls its base class's __init__; opentelemetry-sdk 1.45
# reads an attribute that __init__ sets, so every span end raises there and no trace is exported
# (MLflow's own incompatibility, README "MLflow versions of workers").
MLFLOW2_REQUIREMENTS = ("mlflow-skinny>=2.22,<3", "opentelemetry-sdk<1.45")
VENV = REPO / ".venv-mlflow2"


def _key() -> str:
    client = REPO / "client"
    parts = [
        *MLFLOW2_REQUIREMENTS,
        sys.version,
        str(client),
        hashlib.sha256((client / "pyproject.toml").read_bytes()).hexdigest(),
    ]
    return json.dumps(parts)


def _pip(python: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _registry_unreachable(python: Path) -> str | None:
    """Why the package registry cannot be reached (None: it answers)."""
    res = _pip(python, "index", "versions", "mlflow-skinny", timeout=120)
    if res.returncode == 0:
        return None
    return (res.stderr or res.stdout).strip().splitlines()[-1][:300] or f"exit {res.returncode}"


def mlflow2_python(venv: Path = VENV) -> Path:
    """The venv's python (building the venv first if needed); skips when it cannot be built for
    want of the package registry."""
    python = venv / "bin" / "python"
    stamp = venv / ".key"
    key = _key()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (parallel test processes)
        if python.exists() and stamp.exists() and stamp.read_text() == key:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        wanted = " ".join(MLFLOW2_REQUIREMENTS)
        res = _pip(
            python, "install", *MLFLOW2_REQUIREMENTS, "-e", str(REPO / "client"), timeout=900
        )
        if res.returncode != 0:
            why = _registry_unreachable(python)
            shutil.rmtree(venv, ignore_errors=True)
            if why is not None:
                pytest.skip(f"package registry unreachable, cannot install {wanted}: {why}")
            raise AssertionError(f"pip install {wanted} failed:\n{res.stderr[-3000:]}")
        stamp.write_text(key)
    return python
