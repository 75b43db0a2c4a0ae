"""Every test under tests/faults is marked ``faults`` (``pytest -m faults`` / ``-m "not faults"``),
including files added later, without a marker line in each."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.faults)
