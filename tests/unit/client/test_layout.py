"""The client's tree keeps its shape: the import contracts of .importlinter hold (no circles,
wire/ < delivery/ < mlflow/, pure modules without I/O libraries) and every public name imports
from the path the docs give it (issue 20; the sizes: tests/unit/test_unit_sizes.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.support.daemon import REPO

CLIENT = REPO / "client" / "tracker_client"
MAX_LINES = 500
MAX_METHODS = 30


@pytest.mark.timeout(60)
def test_client_import_contracts_hold() -> None:
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache"], capture_output=True, text=True, timeout=50, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for contract in (
        "tracker_client: no import circles",
        "tracker_client.wire imports nothing",
        "tracker_client.delivery imports nothing",
        "only tracker_client.mlflow imports mlflow",
    ):
        assert contract in proc.stdout, proc.stdout
    assert "Contracts: 10 kept, 0 broken." in proc.stdout, proc.stdout


PUBLIC = {
    "tracker_client": [
        "connect",
        "query_status",
        "Tracker",
        "Run",
        "TrackerError",
        "DaemonUnavailable",
        "DaemonError",
        "CommitError",
        "RecordsDropped",
        "default_tags",
        "__version__",
    ],
    "tracker_client.errors": [
        "TrackerError",
        "DaemonUnavailable",
        "DaemonError",
        "CommitError",
        "RecordsDropped",
    ],
    "tracker_client.run": ["Run"],
    "tracker_client.api": ["Tracker", "connect", "query_status"],
    "tracker_client.mlflow_plugin": ["tracking_store", "registry_store", "address_of"],
    "tracker_client.protocol": ["encode", "decode", "Metric", "Hello", "FEATURES", "ProtocolError"],
    # what the daemon imports of the client
    "tracker_client.delivery.spool": ["Spool", "SpoolBusy", "ImportRefused", "SUFFIX"],
    "tracker_client.delivery.spool_import": ["import_spool"],
    "tracker_client.wire.framing": ["encode_frame", "scan", "HEADER"],
    "tracker_client.wire.address": ["client_default_address", "daemon_default_address", "ipc_path"],
    "tracker_client.wire.curve": ["CurveKeys", "CurveConfigError", "curve_from_env"],
    "tracker_client.wire.validation": ["record_problem", "artifact_path_problem"],
    "tracker_client.mlflow.entities": ["encode_value", "decode_value", "EXT_PROTO", "EXT_ENUM"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import_from_their_documented_path(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert missing == []
    if module != "tracker_client":
        exported = set(getattr(mod, "__all__", ()))
        assert set(PUBLIC[module]) - {"__version__"} <= exported | {"SUFFIX"}


def test_protocol_namespace_is_messages_plus_codec() -> None:
    from tracker_client import protocol as p
    from tracker_client.wire import codec, messages

    assert sorted(p.__all__) == sorted({*messages.__all__, *codec.__all__})
    assert all(getattr(p, name) is getattr(messages, name) for name in messages.__all__)
    assert all(getattr(p, name) is getattr(codec, name) for name in codec.__all__)


def test_tracker_uri_entry_points_resolve() -> None:
    """client/pyproject.toml's entry points (what mlflow.set_tracking_uri("tracker://") loads)."""
    from tracker_client.mlflow.plugin import registry_store, tracking_store

    found = {
        (group, ep.name): ep
        for group in ("mlflow.tracking_store", "mlflow.model_registry_store")
        for ep in entry_points(group=group)
        if ep.name in ("tracker", "tracker+tcp")
    }
    assert len(found) == 4
    for (group, _), ep in found.items():
        assert ep.value.startswith("tracker_client.mlflow_plugin:")
        want = tracking_store if group == "mlflow.tracking_store" else registry_store
        assert ep.load() is want
