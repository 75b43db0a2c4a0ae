"""MLflow store classes for ``tracker://`` URIs (imported by MLflow, so mlflow is available).

Writes of metrics, params and tags (``log_batch``, ``log_metric``, ``log_param``, ``set_tag``) are
non-blocking: they become records on the process's connection, exactly like
:class:`tracker_client.Run` calls. Every other method MLflow's ``AbstractStore`` defines is a
``call`` to the daemon, which runs it on the real backend store after everything this process sent
before it is committed (read-your-writes). Errors come back as ``MlflowException`` with MLflow's
error code; failures of earlier non-blocking writes are raised at the next call (the barrier).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.abstract_store import AbstractStore as _RegistryBase
from mlflow.store.tracking.abstract_store import AbstractStore as _TrackingBase

from . import protocol as p
from .api import BARRIER_TIMEOUT, Tracker
from .entities import decode_value, encode_value
from .errors import DaemonError, DaemonUnavailable
from .mlflow_plugin import address_of

__all__ = ["TrackerRegistryStore", "TrackerStore"]

_trackers: dict[str, Tracker] = {}
_lock = threading.Lock()


def _tracker(store_uri: str) -> Tracker:
    address = address_of(store_uri)
    with _lock:
        tracker = _trackers.get(address)
        if tracker is None:
            # Reads and blocking writes must not go "offline": fail clearly instead.
            tracker = _trackers[address] = Tracker(address, offline=False)
        return tracker


def _call(tracker: Tracker, target: str, method: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    transport = tracker._transport
    cid = transport.client_id
    a, kw = encode_value(list(args)), encode_value(kwargs)

    def make(req: int, seq: int) -> p.ClientMessage:
        return p.Call(req, cid, seq, target, method, a, kw)

    try:
        reply = transport.request(make, BARRIER_TIMEOUT)
    except DaemonError as exc:
        raise _mlflow_error(exc.code, exc.message) from None
    except DaemonUnavailable as exc:
        raise _mlflow_error("TEMPORARILY_UNAVAILABLE", str(exc)) from None
    assert isinstance(reply, p.Result)
    if reply.failures:
        first = reply.failures[0]
        n = len(reply.failures)
        more = f" (and {n - 1} more failed record(s))" if n > 1 else ""
        raise _mlflow_error(first.code, f"an earlier write was not committed: {first.message}{more}")
    return decode_value(reply.value)


# Codes of the daemon's own protocol errors (not MLflow's), as the nearest MLflow error code.
_PROTOCOL_CODES = {
    "timeout": "DEADLINE_EXCEEDED",
    "journal_full": "RESOURCE_EXHAUSTED",
    "frame_too_large": "INVALID_PARAMETER_VALUE",
    "bad_field": "INVALID_PARAMETER_VALUE",
    "bad_msgpack": "INVALID_PARAMETER_VALUE",
    "bad_envelope": "INVALID_PARAMETER_VALUE",
    "invalid_request": "INVALID_PARAMETER_VALUE",
}


def _mlflow_error(code: str, message: str) -> MlflowException:
    """An MlflowException whose ``error_code`` is ``code``. MlflowException takes the *number*
    of an ``ErrorCode``: given a name it silently reports INTERNAL_ERROR, and MLflow code that
    branches on the code (``set_experiment`` and ``register_model`` racing a concurrent creator
    on RESOURCE_ALREADY_EXISTS) would take the wrong branch."""
    from mlflow.protos import databricks_pb2

    name = _PROTOCOL_CODES.get(code, code)
    try:
        number = databricks_pb2.ErrorCode.Value(name)
    except ValueError:
        number = databricks_pb2.INTERNAL_ERROR
        message = f"{code}: {message}"
    return MlflowException(message, error_code=number)


def _forwarder(target: str, name: str, sig: inspect.Signature) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _call(self._tracker, target, name, args, kwargs)

    method.__name__ = name
    method.__qualname__ = name
    method.__signature__ = sig  # type: ignore[attr-defined]
    method.__doc__ = f"Runs ``{name}`` on the daemon's backend {target} store."
    return method


def _forward_all(cls: type, base: type, target: str, local: frozenset[str]) -> None:
    for name, member in inspect.getmembers(base):
        if name.startswith("_") or name in local or "async" in name:
            continue
        if isinstance(inspect.getattr_static(base, name), property) or not callable(member):
            continue
        setattr(cls, name, _forwarder(target, name, inspect.signature(member)))


def _metric_wire(run_id: str, m: Any) -> list[Any]:
    return [
        "m", run_id, m.key, float(m.value), int(m.timestamp), int(m.step or 0),
        getattr(m, "model_id", None), getattr(m, "dataset_name", None),
        getattr(m, "dataset_digest", None),
    ]


class TrackerStore(_TrackingBase):  # type: ignore[misc]
    """MLflow tracking store that talks to tracker-daemon."""

    _LOCAL = frozenset({"log_batch", "log_metric", "log_param", "set_tag"})

    def __init__(self, store_uri: str, artifact_uri: str | None = None) -> None:
        super().__init__()
        self.store_uri = store_uri
        self.artifact_uri = artifact_uri
        self._tracker = _tracker(store_uri)

    def log_batch(self, run_id: str, metrics: Sequence[Any], params: Sequence[Any], tags: Sequence[Any]) -> None:
        put = self._tracker._transport.put
        for param in params:
            put(["p", run_id, param.key, str(param.value)])
        for metric in metrics:
            put(_metric_wire(run_id, metric))
        for tag in tags:
            put(["t", run_id, tag.key, str(tag.value)])

    def log_metric(self, run_id: str, metric: Any) -> None:
        self._tracker._transport.put(_metric_wire(run_id, metric))

    def log_param(self, run_id: str, param: Any) -> None:
        self._tracker._transport.put(["p", run_id, param.key, str(param.value)])

    def set_tag(self, run_id: str, tag: Any) -> None:
        self._tracker._transport.put(["t", run_id, tag.key, str(tag.value)])


class TrackerRegistryStore(_RegistryBase):  # type: ignore[misc]
    """MLflow model-registry store that talks to tracker-daemon (writes are rare: all calls)."""

    def __init__(self, store_uri: str) -> None:
        super().__init__()
        self.store_uri = store_uri
        self._tracker = _tracker(store_uri)


_forward_all(TrackerStore, _TrackingBase, "tracking", TrackerStore._LOCAL)
_forward_all(TrackerRegistryStore, _RegistryBase, "registry", frozenset())
