"""Decoding ``call`` values never runs code: a class name decodes only if it is, exactly, a key of
the table of allowed classes (every public class defined in ``mlflow.entities``, and the few
store-API result classes of ``EXTRA_CLASSES``). Any other name is a ``DecodeError`` naming the
field and the name, raised before anything is imported — before, ``_resolve`` imported any
``mlflow.*`` module a client named (``mlflow.pyfunc.stdin_server`` calls ``sys.exit(2)`` at
import: that ended the daemon). The values MLflow's store API takes and returns still round-trip.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
import sys
from typing import Any

import msgpack
import pytest
from mlflow.entities import Experiment, LoggedModelStatus, Metric, Run, RunData, RunInfo, RunStatus
from mlflow.entities.model_registry import Prompt
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryStore
from mlflow.store.tracking.abstract_store import AbstractStore as TrackingStore
from mlflow.tracing.analysis import TraceFilterCorrelationResult

from tracker_client.mlflow.entities import (
    EXT_DICT,
    EXT_ENUM,
    EXT_PROTO,
    EXT_STATE,
    EXTRA_CLASSES,
    DecodeError,
    allowed_classes,
    decode_value,
    encode_value,
)

pytestmark = pytest.mark.compat  # the class table follows MLflow's store API: every version

STDIN_SERVER = "mlflow.pyfunc.stdin_server"  # sys.exit(2) at import (argparse)


def ext(code: int, *fields: Any) -> bytes:
    """``[value]`` holding one ext value of ``code`` with ``fields`` (as a raw client sends it)."""
    return msgpack.packb([msgpack.ExtType(code, msgpack.packb(list(fields)))])


HOSTILE = [
    pytest.param(ext(EXT_ENUM, f"{STDIN_SERVER}:X", 1), f"{STDIN_SERVER}:X", id="stdin_server"),
    pytest.param(
        ext(EXT_ENUM, "mlflow.utils.file_utils:os.system", "true"),
        "mlflow.utils.file_utils:os.system",
        id="function-as-attribute",
    ),
    pytest.param(
        ext(EXT_PROTO, "mlflow.store.tracking.sqlalchemy_store:SqlAlchemyStore", "mlflow.Run", b""),
        "mlflow.store.tracking.sqlalchemy_store:SqlAlchemyStore",
        id="mlflow-class-not-an-entity",
    ),
    pytest.param(
        ext(EXT_DICT, "mlflow.server.auth:X", {}), "mlflow.server.auth:X", id="unimported-module"
    ),
    pytest.param(ext(EXT_DICT, "os:system", {}), "os:system", id="not-mlflow"),
    pytest.param(
        ext(EXT_STATE, "mlflow.entities.run:Run.__init__", {}),
        "mlflow.entities.run:Run.__init__",
        id="method-of-an-entity",
    ),
    pytest.param(
        ext(EXT_STATE, "mlflow.store.workspace.abstract_store:ResolvedTraceArchivalConfig", {}),
        "mlflow.store.workspace.abstract_store:ResolvedTraceArchivalConfig",
        id="extra-class-as-raw-state",
    ),
    pytest.param(ext(EXT_ENUM, ["mlflow.entities"], 1), "['mlflow.entities']", id="not-a-str"),
]


@pytest.mark.parametrize(("data", "name"), HOSTILE)
def test_a_name_outside_the_table_is_refused_without_any_import(
    data: bytes, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed_classes()  # built (the fixed import of mlflow.entities) before the spy starts
    imported: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def spy_import(name: str, *args: Any, **kwargs: Any) -> Any:
        imported.append(name)
        return real_import(name, *args, **kwargs)

    def spy_import_module(name: str, package: str | None = None) -> Any:
        imported.append(name)
        return real_import_module(name, package)

    monkeypatch.setattr(builtins, "__import__", spy_import)
    monkeypatch.setattr(importlib, "import_module", spy_import_module)
    with pytest.raises(DecodeError) as err:
        decode_value(data, "call.args")
    monkeypatch.undo()
    assert not [m for m in imported if m.startswith(("mlflow", "os"))], imported
    assert STDIN_SERVER not in sys.modules and "mlflow.server.auth" not in sys.modules
    message = str(err.value)
    assert message.startswith("call.args: refusing to decode a value of type ")
    assert name in message and "not an allowed MLflow entity class" in message


def test_the_wrong_kind_for_its_ext_type_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"kwargs: .*'mlflow.entities.run:Run'.*not an Enum"):
        decode_value(ext(EXT_ENUM, "mlflow.entities.run:Run", 1), "kwargs")
    with pytest.raises(DecodeError, match="an Enum travels as ext type 3"):
        decode_value(ext(EXT_STATE, "mlflow.entities.logged_model_status:LoggedModelStatus", {}))


def test_a_malformed_payload_is_a_decode_error_naming_the_field() -> None:
    bad = [
        msgpack.packb([msgpack.ExtType(EXT_ENUM, b"\xc1")]),  # not msgpack
        ext(EXT_ENUM, "mlflow.entities.run:Run"),  # too few fields
        ext(EXT_PROTO, "mlflow.entities.run:Run", "no.such.Message", b""),
        ext(EXT_ENUM, "mlflow.entities.logged_model_status:LoggedModelStatus", "NOPE"),
        b"\x92\x01",  # truncated
    ]
    for data in bad:
        with pytest.raises(DecodeError, match=r"^call\.kwargs: "):
            decode_value(data, "call.kwargs")


def test_the_table_is_exact_classes_of_mlflow_entities() -> None:
    table = allowed_classes()
    assert table["mlflow.entities.run:Run"] is Run
    assert table["mlflow.entities.run_info:RunInfo"] is RunInfo
    assert "mlflow.entities:Run" not in table  # re-exported, not defined there
    for name, cls in table.items():
        module, _, qual = name.partition(":")
        assert module == "mlflow.entities" or module.startswith("mlflow.entities.")
        assert (cls.__module__, cls.__qualname__) == (module, qual)
        assert not any(part.startswith("_") for part in qual.split("."))


def _store_api_classes() -> set[str]:
    """The mlflow classes MLflow's store API names in its signatures, as "module:QualName"."""
    names = set()
    for store in (TrackingStore, RegistryStore):
        for attr in dir(store):
            member = getattr(store, attr)
            if attr.startswith("_") or not callable(member):
                continue
            text = str(inspect.signature(member))
            for dotted in re.findall(r"mlflow\.[\w.]+", text):
                module, _, qual = dotted.rpartition(".")
                names.add(f"{module}:{qual}")
    return names


def test_every_class_the_store_api_names_decodes() -> None:
    """A guard for MLflow upgrades: every class in the store API's signatures is in the table,
    in EXTRA_CLASSES, or travels otherwise (PagedList: ext 2; RunOperations: async methods,
    which are not forwarded)."""
    otherwise = {
        "mlflow.store.entities.paged_list:PagedList",
        "mlflow.utils.async_logging.run_operations:RunOperations",
    }
    named = _store_api_classes()
    assert "mlflow.entities.logged_model:LoggedModel" in named  # the scan finds them
    missing = named - set(allowed_classes()) - EXTRA_CLASSES - otherwise
    assert not missing


def test_store_values_still_round_trip() -> None:
    info = RunInfo("r1", "0", "u", RunStatus.to_string(RunStatus.RUNNING), 1, None, "active")
    run = Run(info, RunData(metrics=[Metric("m", 1.0, 2, 3)]))
    prompt = Prompt("p", creation_timestamp=1, tags={"a": "b"})
    result = TraceFilterCorrelationResult(0.5, 1, 2, 1, 10)  # an EXTRA_CLASSES dataclass
    value = {
        "run": run,
        "status": LoggedModelStatus.READY,
        "metrics": [Metric("m", 1.0, 2, 3)],
        "page": PagedList([Experiment("1", "e", "/a", "active")], "tok"),
        "prompt": prompt,
        "result": result,
        "set": {1, 2},
    }
    back = decode_value(encode_value(value), "value")
    assert type(back["run"]) is Run and back["run"].info.run_id == "r1"
    assert back["run"].data.metrics == {"m": 1.0}
    assert back["status"] is LoggedModelStatus.READY
    assert back["metrics"][0].value == 1.0
    assert back["page"].token == "tok" and back["page"][0].name == "e"
    assert type(back["prompt"]) is Prompt and back["prompt"].name == "p"
    assert back["result"] == result and type(back["result"]) is TraceFilterCorrelationResult
    assert back["set"] == {1, 2}
