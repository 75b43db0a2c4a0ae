"""MLflow store classes for ``tracker://`` URIs (imported by MLflow, so mlflow is available).

Writes of metrics, params and tags (``log_batch``, ``log_metric``, ``log_param``, ``set_tag``) are
non-blocking: they become records on the process's connection, exactly like
:class:`tracker_client.Run` calls. Every other method MLflow's ``AbstractStore`` defines is a
``call`` to the daemon, which runs it on the real backend store after everything this process sent
before it is committed (read-your-writes). Errors come back as ``MlflowException`` with MLflow's
error code; failures of earlier non-blocking writes are raised at the next call (the barrier).

On MLflow 2.x (its tracing API takes ``start_trace(experiment_id, ...)``), the store methods whose
signature or result changed in MLflow 3 (:data:`MLFLOW2_METHODS`: tracing's v2 API) are called
as ``mlflow2.<name>``, which the daemon (on MLflow 3) translates: the traces of an MLflow 2 worker
are stored like any other.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.abstract_store import AbstractStore as _RegistryBase
from mlflow.store.tracking.abstract_store import AbstractStore as _TrackingBase

from . import protocol as p
from .api import Tracker
from .entities import decode_value, encode_value
from .errors import DaemonError, DaemonUnavailable
from .mlflow_plugin import address_of
from .run import BARRIER_TIMEOUT, CONNECT_TIMEOUT

__all__ = ["MLFLOW2_METHODS", "TrackerRegistryStore", "TrackerStore"]

# Tracking-store methods that MLflow 2.x defines differently from MLflow 3 (the daemon's
# tracker_daemon/mlflow2.py translates them); sent as "mlflow2.<name>" by an MLflow 2 worker.
MLFLOW2_METHODS = frozenset(
    {
        "start_trace",
        "end_trace",
        "get_trace_info",
        "search_traces",
        "set_trace_tag",
        "delete_trace_tag",
        "delete_traces",
    }
)
# This process's MLflow has the 2.x tracing API (start_trace takes an experiment id).
_MLFLOW2 = "experiment_id" in inspect.signature(_TrackingBase.start_trace).parameters

_trackers: dict[str, Tracker] = {}
_lock = threading.Lock()
_looked_up_missing: dict[str, float] = {}  # experiment name -> when a lookup found nothing
_RACE_WINDOW_S = 60.0
_uris: dict[str, str] = {}  # address -> the tracking URI that named it first (for messages)


def _tracker(store_uri: str) -> Tracker:
    address = address_of(store_uri)
    _uris.setdefault(address, store_uri)
    with _lock:
        tracker = _trackers.get(address)
        if tracker is None:
            # Reads and blocking writes must not go "offline": fail clearly instead.
            tracker = _trackers[address] = Tracker(address, offline=False)
        return tracker


def _for_uri(message: str, uri: str) -> str:
    """A no-answer message in the plugin's terms: its address comes from the tracking URI (only
    a bare ``tracker://`` reads ``$TRACKER_DAEMON_ADDRESS``)."""
    if uri.rstrip("/") in ("tracker:", ""):
        return message.replace(
            " or set TRACKER_DAEMON_ADDRESS",
            " or set TRACKER_DAEMON_ADDRESS (the tracking URI tracker:// uses it)",
        )
    return message.replace(
        " or set TRACKER_DAEMON_ADDRESS",
        f" or point the tracking URI {uri} at the daemon's socket (tracker:///PATH/TO.sock or "
        "tracker+tcp://HOST:PORT)",
    )


def _call(
    tracker: Tracker, target: str, method: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    transport = tracker._transport
    cid = transport.client_id
    a, kw = encode_value(list(args)), encode_value(kwargs)

    def make(req: int, seq: int) -> p.ClientMessage:
        return p.Call(req, cid, seq, target, method, a, kw)

    try:
        if not transport.welcomed.is_set():
            # First contact: fail within the connect timeout, not the (long) call timeout, when
            # no daemon answers — and before the request is queued, so it is not left in the
            # spool to be replayed later by a process that already saw it fail.
            transport.wait_welcome(CONNECT_TIMEOUT)
        reply = transport.request(make, BARRIER_TIMEOUT)
    except DaemonError as exc:
        raise _mlflow_error(exc.code, exc.message) from None
    except DaemonUnavailable as exc:
        message = _for_uri(str(exc), _uris.get(transport.address, ""))
        raise _mlflow_error("TEMPORARILY_UNAVAILABLE", message) from None
    assert isinstance(reply, p.Result)
    if reply.failures:
        first = reply.failures[0]
        n = len(reply.failures)
        more = f" (and {n - 1} more failed record(s))" if n > 1 else ""
        raise _mlflow_error(
            first.code, f"an earlier write was not committed: {first.message}{more}"
        )
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
    wire = (
        f"mlflow2.{name}" if _MLFLOW2 and target == "tracking" and name in MLFLOW2_METHODS else name
    )

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _call(self._tracker, target, wire, args, kwargs)

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
    return p.metric_wire(
        run_id,
        m.key,
        float(m.value),
        int(m.timestamp),
        int(m.step or 0),
        getattr(m, "model_id", None),
        getattr(m, "dataset_name", None),
        getattr(m, "dataset_digest", None),
    )


class TrackerStore(_TrackingBase):  # type: ignore[misc, unused-ignore]
    """MLflow tracking store that talks to tracker-daemon."""

    _LOCAL = frozenset(
        {
            "log_batch",
            "log_metric",
            "log_param",
            "set_tag",
            "get_experiment_by_name",
            "create_experiment",
        }
    )

    def __init__(self, store_uri: str, artifact_uri: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self.store_uri = store_uri
        self.artifact_uri = artifact_uri
        self._tracker = _tracker(store_uri)

    def log_batch(
        self, run_id: str, metrics: Sequence[Any], params: Sequence[Any], tags: Sequence[Any]
    ) -> None:
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

    def delete_tag(self, run_id: str, key: str) -> None:
        """``MlflowClient.delete_tag`` calls it on every store, but MLflow's ``AbstractStore``
        does not declare it (so it is not forwarded by :func:`_forward_all`): a call."""
        _call(self._tracker, "tracking", "delete_tag", [run_id, key], {})

    # get-or-create races. ``mlflow.set_experiment`` looks the name up and, when it is missing,
    # creates it; the loser of a race with another process gets RESOURCE_ALREADY_EXISTS, and
    # MLflow (3.x) then returns the experiment *without activating it*, so that process's runs
    # silently land in the Default experiment. With many processes per host sharing one daemon
    # that race is the normal case, so: a bare ``create_experiment(name)`` (no artifact location,
    # no tags) that follows this process's own lookup of ``name`` finding nothing, and loses to
    # a concurrent creator, returns the winner's (active) experiment id — the outcome the
    # caller's get-or-create intended. Any other duplicate create still raises.

    def get_experiment_by_name(self, experiment_name: str) -> Any:
        exp = _call(self._tracker, "tracking", "get_experiment_by_name", [experiment_name], {})
        with _lock:
            if exp is None:
                _looked_up_missing[experiment_name] = time.monotonic()
            else:
                _looked_up_missing.pop(experiment_name, None)
        return exp

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: Any = None
    ) -> Any:
        with _lock:
            missing_at = _looked_up_missing.pop(name, None)
        try:
            return _call(
                self._tracker,
                "tracking",
                "create_experiment",
                [name],
                {"artifact_location": artifact_location, "tags": tags},
            )
        except MlflowException as exc:
            raced = (
                exc.error_code == "RESOURCE_ALREADY_EXISTS"
                and missing_at is not None
                and time.monotonic() - missing_at < _RACE_WINDOW_S
                and artifact_location is None
                and not tags
            )
            if not raced:
                raise
            exp = _call(self._tracker, "tracking", "get_experiment_by_name", [name], {})
            if exp is None or exp.lifecycle_stage != "active":
                raise
            return exp.experiment_id


class TrackerRegistryStore(_RegistryBase):  # type: ignore[misc, unused-ignore]
    """MLflow model-registry store that talks to tracker-daemon (writes are rare: all calls)."""

    def __init__(self, store_uri: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self.store_uri = store_uri
        self._tracker = _tracker(store_uri)


_forward_all(TrackerStore, _TrackingBase, "tracking", TrackerStore._LOCAL)
_forward_all(TrackerRegistryStore, _RegistryBase, "registry", frozenset())
