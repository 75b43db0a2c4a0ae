"""Prerequisites of ``make test`` that pip cannot install (compilers, headers, servers, root).

:func:`require` is the one check every test uses: outside CI a missing prerequisite skips the
test with the exact install command; in CI (``CI=true``) it fails the test instead, so nothing
there is skipped silently. The full list is in the README's Development section.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["in_ci", "require"]


def in_ci() -> bool:
    """True when running in CI (``CI=true``): every prerequisite is then required."""
    return os.environ.get("CI") == "true"


def require(what: str, present: bool, install: str) -> None:
    """Skip (outside CI) or fail (``CI=true``) the calling test unless ``present``; the reason
    reads ``"{what} missing: {install}"``."""
    if present:
        return
    reason = f"{what} missing: {install}"
    if in_ci():
        pytest.fail(
            f"{reason} (CI=true: every prerequisite of `make test` is required)", pytrace=False
        )
    pytest.skip(reason)
