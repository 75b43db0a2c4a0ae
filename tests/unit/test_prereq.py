"""tests/support/prereq.require: a missing prerequisite skips outside CI and fails in CI."""

from __future__ import annotations

import pytest

from tests.support.prereq import require


def test_present_prerequisite_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        assert require("cc", True, "apt-get install gcc") is None


def test_missing_prerequisite_skips_outside_ci_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for env in (None, "", "false", "1"):
        if env is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", env)
        with pytest.raises(pytest.skip.Exception) as info:
            require("msgpack.h", False, "apt-get install libmsgpack-dev")
        assert str(info.value) == "msgpack.h missing: apt-get install libmsgpack-dev"


def test_missing_prerequisite_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as info:
        require("msgpack.h", False, "apt-get install libmsgpack-dev")
    assert str(info.value).startswith("msgpack.h missing: apt-get install libmsgpack-dev")
    assert "CI=true" in str(info.value)
