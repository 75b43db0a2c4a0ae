"""A missing build prerequisite of ``make test`` (tests/support/prereq.py), for real: the C
conformance test run in a child pytest whose ``cc`` cannot include ``msgpack.h`` (as on a machine
with a C compiler and libzmq3-dev but no libmsgpack-dev). Outside CI it is skipped with the
install command; with ``CI=true`` it fails with the same text."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO

pytestmark = pytest.mark.integration

MISSING = "msgpack.h missing: apt-get install -y --no-install-recommends libmsgpack-dev"


def _conformance_without_msgpack_h(
    tmp_path: Path, ci: str | None
) -> subprocess.CompletedProcess[str]:
    real_cc = shutil.which("cc")
    if real_cc is None:
        pytest.skip("no C compiler (cc) on PATH: nothing to hide msgpack.h from")
    # A msgpack.h found first that fails like a missing one: a real compiler, no header.
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "msgpack.h").write_text("#error msgpack.h: No such file or directory\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "cc"
    wrapper.write_text(f'#!/bin/sh\nexec {real_cc} -I{inc} "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_CURRENT_TEST")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration/test_conformance.py"]
        + ["-q", "-rsf", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_missing_msgpack_h_skips_outside_ci_naming_the_install_command(tmp_path: Path) -> None:
    proc = _conformance_without_msgpack_h(tmp_path, ci=None)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 skipped" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-3000:]
    assert MISSING in proc.stdout


def test_missing_msgpack_h_fails_in_ci(tmp_path: Path) -> None:
    proc = _conformance_without_msgpack_h(tmp_path, ci="true")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "skipped" not in proc.stdout, proc.stdout[-3000:]
    assert MISSING in proc.stdout and "CI=true" in proc.stdout
