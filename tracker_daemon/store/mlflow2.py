"""Store calls of MLflow 2.x workers whose signature or result changed in MLflow 3 (the daemon
runs MLflow 3): tracing's v2 API.

A ``tracker://`` worker on MLflow 2.x sends these methods as ``mlflow2.<name>`` (the client knows
its own MLflow; the daemon cannot tell an MLflow 2 ``get_trace_info(id)`` from an MLflow 3 one).
Found by comparing MLflow 2.22's ``mlflow/store/tracking/abstract_store.py`` with MLflow 3's:

============================================== ================================================
MLflow 2.22 store method                       run on MLflow 3's store as
============================================== ================================================
``start_trace(experiment_id, timestamp_ms,      ``deprecated_start_trace_v2`` (MLflow 3 takes one
request_metadata, tags)``                       ``TraceInfo`` V3)
``end_trace(request_id, timestamp_ms, status,   ``deprecated_end_trace_v2`` (gone from MLflow 3's
request_metadata, tags)``                       abstract store)
``get_trace_info(request_id, should_query_v3)`` ``get_trace_info(trace_id)``
``search_traces(experiment_ids, ...)``          the same (MLflow 3 adds keywords)
``set_trace_tag`` / ``delete_trace_tag``        the same, ``request_id`` renamed ``trace_id``
(``request_id``, ...)
``delete_traces(..., request_ids)``             ``delete_traces(..., trace_ids)``
============================================== ================================================

Trace infos come back as MLflow 2's class, ``mlflow.entities.trace_info:TraceInfo``, from the
``mlflow.TraceInfo`` protobuf that both versions share (MLflow 3 calls that class
``TraceInfoV2``). The other methods whose signatures differ only gained optional parameters in
MLflow 3 (``log_inputs``, ``create_model_version``, ``create_registered_model``,
``update_registered_model``): an MLflow 2 call of them is a valid MLflow 3 call, and is sent as is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from tracker_client.mlflow.entities import EXT_PROTO

__all__ = ["METHODS", "PREFIX", "encode_result", "invoke", "method_of"]

PREFIX = "mlflow2."
_V2_INFO_CLASS = "mlflow.entities.trace_info:TraceInfo"  # MLflow 2's name of a v2 TraceInfo


def _v2(info: Any) -> Any:
    from mlflow.entities.trace_info_v2 import TraceInfoV2

    return info if isinstance(info, TraceInfoV2) else TraceInfoV2.from_v3(info)


def _start_trace(
    store: Any,
    experiment_id: str,
    timestamp_ms: int,
    request_metadata: dict[str, str],
    tags: dict[str, str],
) -> Any:
    return store.deprecated_start_trace_v2(experiment_id, timestamp_ms, request_metadata, tags)


def _end_trace(
    store: Any,
    request_id: str,
    timestamp_ms: int,
    status: Any,
    request_metadata: dict[str, str],
    tags: dict[str, str],
) -> Any:
    return store.deprecated_end_trace_v2(request_id, timestamp_ms, status, request_metadata, tags)


def _get_trace_info(store: Any, request_id: str, should_query_v3: bool = False) -> Any:
    return _v2(store.get_trace_info(request_id))


def _search_traces(
    store: Any,
    experiment_ids: list[str],
    filter_string: str | None = None,
    max_results: int = 100,
    order_by: list[str] | None = None,
    page_token: str | None = None,
) -> Any:
    infos, token = store.search_traces(
        experiment_ids=experiment_ids,
        filter_string=filter_string,
        max_results=max_results,
        order_by=order_by,
        page_token=page_token,
    )
    return [_v2(info) for info in infos], token


def _set_trace_tag(store: Any, request_id: str, key: str, value: str) -> Any:
    return store.set_trace_tag(request_id, key, value)


def _delete_trace_tag(store: Any, request_id: str, key: str) -> Any:
    return store.delete_trace_tag(request_id, key)


def _delete_traces(
    store: Any,
    experiment_id: str,
    max_timestamp_millis: int | None = None,
    max_traces: int | None = None,
    request_ids: list[str] | None = None,
) -> Any:
    return store.delete_traces(
        experiment_id,
        max_timestamp_millis=max_timestamp_millis,
        max_traces=max_traces,
        trace_ids=request_ids,
    )


METHODS: dict[str, Callable[..., Any]] = {
    "start_trace": _start_trace,
    "end_trace": _end_trace,
    "get_trace_info": _get_trace_info,
    "search_traces": _search_traces,
    "set_trace_tag": _set_trace_tag,
    "delete_trace_tag": _delete_trace_tag,
    "delete_traces": _delete_traces,
}


def method_of(wire_name: str) -> str | None:
    """The MLflow 2 method a ``mlflow2.<name>`` call names (None: not such a call)."""
    return wire_name[len(PREFIX) :] if wire_name.startswith(PREFIX) else None


def invoke(store: Any, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run MLflow 2's ``name(*args, **kwargs)`` on an MLflow 3 tracking store. A call that does
    not fit MLflow 2's signature raises TypeError (as the method itself would)."""
    return METHODS[name](store, *args, **kwargs)


def _default(obj: Any) -> Any:
    from mlflow.entities.trace_info_v2 import TraceInfoV2

    if isinstance(obj, TraceInfoV2):
        proto = obj.to_proto()
        payload = [_V2_INFO_CLASS, proto.DESCRIPTOR.full_name, proto.SerializeToString()]
        return msgpack.ExtType(EXT_PROTO, msgpack.packb(payload, use_bin_type=True))
    raise TypeError(f"cannot send a value of type {type(obj).__module__}.{type(obj).__name__}")


def encode_result(result: Any) -> bytes:
    """A result of :func:`invoke` in the ``entities`` encoding, as an MLflow 2 worker decodes it
    (its results are None, str, int, trace infos, and a (list, token) pair)."""
    return msgpack.packb(result, default=_default, use_bin_type=True)  # type: ignore[no-any-return]
