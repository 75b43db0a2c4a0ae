"""CURVE with only one of its two environment variables set (PROTOCOL.md section 1.1) is a
configuration error naming the missing variable, never a plain-text connection: a real client
process (``connect()``, ``query_status()``) and ``tracker-daemon import`` refuse to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, daemon_cli, daemon_env

pytestmark = pytest.mark.integration

SERVER, CLIENT = "TRACKER_CURVE_SERVER_KEY", "TRACKER_CURVE_CLIENT_KEY"
BOTH = f"set both {SERVER} and {CLIENT}, or neither"


@pytest.mark.parametrize(("given", "missing"), [(SERVER, CLIENT), (CLIENT, SERVER)])
@pytest.mark.parametrize("call", ["connect", "query_status"])
@pytest.mark.timeout(60)
def test_a_client_with_one_curve_variable_names_the_missing_one(
    tmp_path: Path, given: str, missing: str, call: str
) -> None:
    code = f"import tracker_client; tracker_client.{call}('ipc://{tmp_path}/none.sock')"
    env = daemon_env({given: str(tmp_path / "some.key"), missing: ""})
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (
        f"tracker_client.wire.curve.CurveConfigError: CURVE: {missing} is not set; {BOTH}"
    )


@pytest.mark.timeout(60)
def test_import_with_one_curve_variable_is_a_configuration_error(tmp_path: Path) -> None:
    spool = tmp_path / ("a" * 32 + ".spool")
    spool.write_bytes(b"")
    r = daemon_cli(
        "import",
        str(spool),
        "--address",
        f"ipc://{tmp_path}/none.sock",
        env={SERVER: str(tmp_path / "server.key")},
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"tracker-daemon: configuration error: CURVE: {CLIENT} is not set; {BOTH}"
    )


@pytest.mark.parametrize("content", [b"", b"not a spool at all"], ids=["empty", "garbage"])
def test_import_configuration_error_leaves_the_spool_file_untouched(
    tmp_path: Path, content: bytes
) -> None:
    """A configuration error is raised before any spool is opened: the user's file (even an
    empty one, which a started import would remove) is still there, byte for byte."""
    spool = tmp_path / ("b" * 32 + ".spool")
    spool.write_bytes(content)
    before = spool.stat()
    r = daemon_cli(
        "import",
        str(spool),
        "--address",
        f"ipc://{tmp_path}/none.sock",
        env={CLIENT: str(tmp_path / "client.key_secret")},
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"tracker-daemon: configuration error: CURVE: {SERVER} is not set; {BOTH}"
    )
    assert spool.exists(), "the configuration error removed the user's spool file"
    assert spool.read_bytes() == content
    assert spool.stat().st_mtime_ns == before.st_mtime_ns
