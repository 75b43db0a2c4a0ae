"""The compatibility set against the ends of the supported MLflow range: ``make compat``.

The suite runs on the lock's MLflow (constraints.txt). The range the pyprojects declare
(``mlflow>=FLOOR,<CEILING``) must be what is proven, so the tests marked ``compat`` (the SQL
writer's differential on SQLite and PostgreSQL, the schema guard, the client's agreement with
MLflow's validation, a ``tracker://`` round trip, a daemon on the SQL writer) also run against

- the **oldest** supported MLflow: the floor of the range, and
- the **newest** the package index serves inside the range,

each in a side venv ``.venv-mlflow-VERSION`` (git-ignored), built once and reused while its key
(the version, this Python, the pyprojects) is unchanged. A version that equals the lock's MLflow
was proven by the main suite and is not run twice. The newest version is asked of the package
index; when the index cannot be reached the newest is skipped, saying so. Any other failure
fails ``make compat``.

Usage: ``python -m tests.compat [VERSION ...]`` (default: the floor and the newest).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PIP = ["-m", "pip", "--disable-pip-version-check"]


def mlflow_range() -> SpecifierSet:
    """The ``mlflow`` requirement of tracker-daemon's pyproject."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        if req.name == "mlflow":
            return req.specifier
    raise SystemExit("pyproject.toml declares no mlflow requirement")


def floor(spec: SpecifierSet) -> str:
    lows = [s.version for s in spec if s.operator in (">=", "==", "~=")]
    if len(lows) != 1:
        raise SystemExit(f"cannot tell the oldest supported MLflow from {spec}")
    return lows[0]


def newest(spec: SpecifierSet) -> tuple[str | None, str]:
    """The newest release in ``spec`` the package index serves, or None and why not."""
    res = subprocess.run(
        [sys.executable, *PIP, "index", "versions", "mlflow"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if res.returncode != 0:
        return None, (res.stderr or res.stdout).strip().splitlines()[-1][:300]
    found = re.search(r"Available versions: (.*)", res.stdout)
    versions = [Version(v.strip()) for v in found.group(1).split(",")] if found else []
    inside = [v for v in versions if not v.is_prerelease and spec.contains(v)]
    if not inside:
        return None, f"the index serves no mlflow release in {spec}"
    return str(max(inside)), ""


def _key(version: str) -> str:
    files = ("pyproject.toml", "client/pyproject.toml")
    digests = [hashlib.sha256((REPO / f).read_bytes()).hexdigest() for f in files]
    return json.dumps([version, sys.version, str(REPO), *digests])


def side_venv(version: str) -> Path:
    """The side venv's python for MLflow ``version`` (built when missing or stale)."""
    venv = REPO / f".venv-mlflow-{version}"
    python, stamp = venv / "bin" / "python", venv / ".key"
    with open(REPO / f".venv-mlflow-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text() == _key(version):
            return python
        shutil.rmtree(venv, ignore_errors=True)
        print(f"compat: building {venv.name} (mlflow=={version}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}
        req = [f"mlflow=={version}", "-e", str(REPO / "client"), "-e", f"{REPO}[test,postgres]"]
        res = subprocess.run(
            [str(python), *PIP, "install", "-q", *req],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
        if res.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise SystemExit(f"compat: pip install mlflow=={version} failed:\n{res.stderr[-3000:]}")
        stamp.write_text(_key(version))
    return python


def run_set(version: str) -> int:
    python = side_venv(version)
    print(f"compat: the compatibility set on mlflow {version}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["TRACKER_COMPAT_LOCK_PYTHON"] = sys.executable  # stores made by the lock's MLflow
    cmd = [str(python), "-m", "pytest", "-m", "compat", "-q", "-p", "no:cacheprovider", "tests"]
    return subprocess.run(cmd, cwd=REPO, env=env, timeout=3600).returncode


def main(argv: list[str]) -> int:
    spec = mlflow_range()
    locked = metadata.version("mlflow")
    versions = list(argv)
    if not versions:
        versions = [floor(spec)]
        latest, why = newest(spec)
        if latest is None:
            print(f"compat: SKIPPED the newest MLflow: package index unreachable ({why})")
        else:
            versions.append(latest)
    failed = []
    for version in dict.fromkeys(versions):
        if not spec.contains(Version(version)):
            raise SystemExit(f"compat: mlflow {version} is outside the supported range {spec}")
        if version == locked:
            print(f"compat: mlflow {version} is the lock's: proven by the main suite")
            continue
        if run_set(version) != 0:
            failed.append(version)
    if failed:
        print(f"compat: FAILED on mlflow {', '.join(failed)}")
        return 1
    print(f"compat: mlflow {spec} proven on {', '.join(dict.fromkeys(versions))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
