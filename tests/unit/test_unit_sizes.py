"""No unit over the line (issue 20): no module of either package over 500 lines, no class over 30
methods. A module that grows past it is split by what it does (e.g. intake/server.py gave its
bind checks to endpoints.py and its CURVE provider to curve_auth.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "tracker_daemon", ROOT / "client" / "tracker_client")
MAX_LINES = 500
MAX_METHODS = 30


def _modules(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_module_over_500_lines(package: Path) -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules(package)}
    assert len(sizes) > 20  # the walk saw the tree
    assert max(sizes.values()) > 300  # and counts lines
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_class_over_30_methods(package: Path) -> None:
    counts: dict[str, int] = {}
    for path in _modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = [
                    n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                counts[f"{path.relative_to(ROOT)}:{node.name}"] = len(methods)
    assert max(counts.values()) > 15  # the count sees methods
    assert {c: n for c, n in counts.items() if n > MAX_METHODS} == {}
