"""MLflow 2.x store calls on the daemon's MLflow 3 store (tracker_daemon/store/mlflow2.py), on a
real
SQLite ``SqlAlchemyStore``: tracing's v2 API by MLflow 2's signatures, and trace infos encoded as
MLflow 2's ``TraceInfo`` class (the ``mlflow.TraceInfo`` protobuf both versions share)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from mlflow.entities.trace_info_v2 import TraceInfoV2
from mlflow.entities.trace_status import TraceStatus
from mlflow.protos.service_pb2 import TraceInfo as ProtoTraceInfo
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from tracker_client.mlflow import store as mlflow_store
from tracker_client.mlflow.entities import EXT_PROTO, decode_value, encode_value
from tracker_daemon.store import mlflow2
from tracker_daemon.store.calls import StoreCalls

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqlAlchemyStore:
    root = tmp_path_factory.mktemp("mlflow2")
    return SqlAlchemyStore(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))


def v2_infos(encoded: bytes) -> Any:
    """Decode as an MLflow 2 worker would: trace infos as (class name, TraceInfoV2)."""

    def hook(code: int, data: bytes) -> Any:
        assert code == EXT_PROTO
        name, full_name, payload = msgpack.unpackb(data)
        assert full_name == "mlflow.TraceInfo"
        proto = ProtoTraceInfo()
        proto.ParseFromString(payload)
        return name, TraceInfoV2.from_proto(proto)

    return msgpack.unpackb(encoded, ext_hook=hook)


def call(store: SqlAlchemyStore, name: str, *args: Any, **kwargs: Any) -> tuple[Any, bytes]:
    # arguments as they arrive: through the entities encoding
    a, kw = decode_value(encode_value(list(args))), decode_value(encode_value(kwargs))
    result = mlflow2.invoke(store, name, a, kw)
    return result, mlflow2.encode_result(result)


def test_a_v2_trace_round_trip(store: SqlAlchemyStore) -> None:
    exp = store.create_experiment("traces")
    _, raw = call(
        store,
        "start_trace",
        experiment_id=exp,
        timestamp_ms=T0,
        request_metadata={"mlflow.traceInputs": '{"x": 3}'},
        tags={"mlflow.traceName": "predict", "team": "a"},
    )
    name, started = v2_infos(raw)
    assert name == "mlflow.entities.trace_info:TraceInfo"  # MLflow 2's class
    rid = started.request_id
    assert (started.experiment_id, started.timestamp_ms, started.status) == (
        exp,
        T0,
        TraceStatus.IN_PROGRESS,
    )
    assert started.tags["mlflow.artifactLocation"].endswith(f"/traces/{rid}/artifacts")
    _, raw = call(
        store,
        "end_trace",
        request_id=rid,
        timestamp_ms=T0 + 25,
        status=TraceStatus.OK,
        request_metadata={"mlflow.traceOutputs": "8"},
        tags={},
    )
    ended = v2_infos(raw)[1]
    assert (ended.status, ended.execution_time_ms) == (TraceStatus.OK, 25)
    call(store, "set_trace_tag", rid, "reviewed", "yes")
    call(store, "set_trace_tag", request_id=rid, key="drop", value="me")
    call(store, "delete_trace_tag", request_id=rid, key="drop")
    _, raw = call(store, "get_trace_info", rid, should_query_v3=False)
    info = v2_infos(raw)[1]
    assert info.request_id == rid and info.status == TraceStatus.OK
    assert info.tags["reviewed"] == "yes" and "drop" not in info.tags
    assert info.request_metadata["mlflow.traceOutputs"] == "8"
    _, raw = call(store, "search_traces", experiment_ids=[exp], max_results=10)
    infos, token = v2_infos(raw)
    assert [i.request_id for _, i in infos] == [rid] and token is None
    result, raw = call(store, "delete_traces", experiment_id=exp, request_ids=[rid])
    assert result == 1 and msgpack.unpackb(raw) == 1
    assert v2_infos(call(store, "search_traces", [exp])[1]) == [[], None]


def test_a_call_that_does_not_fit_mlflow2s_signature_raises(store: SqlAlchemyStore) -> None:
    with pytest.raises(TypeError):
        mlflow2.invoke(store, "start_trace", [], {"trace_info": None})  # MLflow 3's form


def test_names_and_kinds() -> None:
    assert mlflow2.method_of("mlflow2.get_trace_info") == "get_trace_info"
    assert mlflow2.method_of("get_trace_info") is None
    assert set(mlflow2.METHODS) == {
        "start_trace",
        "end_trace",
        "get_trace_info",
        "search_traces",
        "set_trace_tag",
        "delete_trace_tag",
        "delete_traces",
    }
    assert mlflow_store.MLFLOW2_METHODS == set(mlflow2.METHODS)  # what the client sends
    assert not mlflow_store._MLFLOW2  # (this process has MLflow 3: it sends plain names)
    assert StoreCalls.is_read("mlflow2.get_trace_info")
    assert StoreCalls.is_read("mlflow2.search_traces")
    assert not StoreCalls.is_read("mlflow2.start_trace")
    assert not StoreCalls.is_read("mlflow2.delete_traces")
