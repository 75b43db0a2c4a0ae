"""Importing the client must stay light: never mlflow, never anyio (each checked in a fresh
interpreter, since this test process has imported both already)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.daemon import REPO

HEAVY = ("mlflow", "anyio")

SCRIPT = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
heavy = sorted(
    name for name in sys.modules
    if any(name == h or name.startswith(h + ".") for h in {heavy!r})
)
print(json.dumps({{"module": sys.modules[sys.argv[1]].__name__, "heavy": heavy}}))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "module",
    [
        "tracker_client",
        "tracker_client.protocol",
        "tracker_client.wire.validation",
        "tracker_client.api",
        "tracker_client.delivery.transport",
        "tracker_client.delivery.session",
        "tracker_client.delivery.outbox",
        "tracker_client.delivery.spill",
        "tracker_client.wire.address",
        "tracker_client.errors",
        "tracker_client.wire.messages",
        "tracker_client.wire.codec",
        "tracker_client.delivery.spool_import",
        # MLflow loads the entry points while `import mlflow` runs: they must not import it
        "tracker_client.mlflow_plugin",
        "tracker_client.mlflow.plugin",
        "tracker_client.mlflow.uri",
        "tracker_client.mlflow.entities",
    ],
)
def test_import_does_not_pull_mlflow_or_anyio(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), module],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"module": module, "heavy": []}


@pytest.mark.timeout(60)
def test_the_check_itself_sees_heavy_modules() -> None:
    """Guard against a vacuous test: the same script does report anyio when it is imported."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), "anyio"],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["module"] == "anyio"
    assert "anyio" in result["heavy"]
