"""The layering contracts of .importlinter (run by ``make lint``): the tree keeps them, and a wrong
import breaks them with a failure naming the import. Runs the real ``lint-imports`` on the real
tree, then on a copy of it with wrong imports injected."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``tree``'s .importlinter, importing the packages from ``tree``."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'client'}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "tracker_daemon", dst / "tracker_daemon", ignore=ignore)
    client = Path("client", "tracker_client")
    shutil.copytree(ROOT / client, dst / client, ignore=ignore)
    shutil.copy(ROOT / ".importlinter", dst / ".importlinter")
    return dst


def inject(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}  # injected by test_layers\n")


def test_the_tree_keeps_its_contracts() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
    assert "The daemon's layers" in done.stdout and "KEPT" in done.stdout


def test_commit_importing_the_cli_breaks_the_layers(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    assert lint_imports(tree).returncode == 0  # the copy itself is clean
    inject(tree / "tracker_daemon" / "commit" / "committer.py", "from ..cli import cli as _cli")
    done = lint_imports(tree)
    assert done.returncode != 0
    assert "The daemon's layers" in done.stdout and "BROKEN" in done.stdout
    assert "tracker_daemon.commit is not allowed to import tracker_daemon.cli" in done.stdout
    assert "tracker_daemon.commit.committer -> tracker_daemon.cli.cli" in done.stdout


def test_io_in_a_pure_module_and_the_daemon_in_the_client_break_their_contracts(
    tmp_path: Path,
) -> None:
    tree = copy_tree(tmp_path)
    inject(tree / "tracker_daemon" / "commit" / "batcher.py", "import anyio as _anyio")
    inject(tree / "client" / "tracker_client" / "errors.py", "import tracker_daemon.errors as _d")
    done = lint_imports(tree)
    assert done.returncode != 0
    assert "tracker_daemon.commit.batcher -> anyio" in done.stdout
    assert "tracker_client.errors -> tracker_daemon.errors" in done.stdout
    assert ", 2 broken." in done.stdout  # and no other contract
