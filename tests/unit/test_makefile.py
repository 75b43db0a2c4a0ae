"""``make setup`` on first use says what it does before the (quiet, minute-long) install of the
lock, so it does not look hung; read from make's dry run of the recipe (nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_setup_announces_the_install_before_it_runs_quietly() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed (apt-get install make)")
    res = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    pip = [i for i, line in enumerate(lines) if "-m pip install" in line]
    assert pip, res.stdout
    said = [i for i, line in enumerate(lines) if line.startswith("echo ")]
    assert said and said[0] < pip[0], res.stdout
    assert "installing the locked dependencies (constraints.txt)" in lines[said[0]]
    assert "a minute or two" in lines[said[0]]
    assert all("-q -q" in lines[i] and "-c constraints.txt" in lines[i] for i in pip)
