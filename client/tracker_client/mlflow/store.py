"""MLflow store classes for ``tracker://`` URIs (imported by MLflow, so mlflow is available).

Writes of metrics, params and tags (``log_batch``, ``log_metric``, ``log_param``, ``set_tag``) are
non-blocking: they become records on the process's connection, exactly like
:class:`tracker_client.Run` calls. Each record is first checked with MLflow's rules for that call
(:func:`metric_wire`, :func:`param_wire`, :func:`tag_wire`): what MLflow's store would refuse —
a bad name, a non-numeric value, a step or timestamp outside int64 — raises ``MlflowException``
(``INVALID_PARAMETER_VALUE``) at the call and nothing is sent; a param or tag value over MLflow's
limit is truncated where MLflow truncates it (``MLFLOW_TRUNCATE_LONG_VALUES``). Every other method
MLflow's ``AbstractStore`` defines is a ``call`` to the daemon, which runs it on the real backend
store after everything this process sent before it is committed (read-your-writes). Errors come
back as ``MlflowException`` with MLflow's error code; failures of earlier non-blocking writes are
raised at the next call (the barrier), naming the run of each (:func:`deferred_failures`).

On MLflow 2.x (its tracing API takes ``start_trace(experiment_id, ...)``), the store methods whose
signature or result changed in MLflow 3 (:data:`MLFLOW2_METHODS`: tracing's v2 API) are called
as ``mlflow2.<name>``, which the daemon (on MLflow 3) translates: the traces of an MLflow 2 worker
are stored like any other.
"""

from __future__ import annotations

import inspect
import json
import numbers
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.abstract_store import AbstractStore as _RegistryBase
from mlflow.store.tracking.abstract_store import AbstractStore as _TrackingBase

from .. import protocol as p
from ..api import Tracker
from ..errors import DaemonError, DaemonUnavailable, TrackerError
from ..run import BARRIER_TIMEOUT, CONNECT_TIMEOUT
from ..wire import validation as v
from .entities import decode_value, encode_value, result_value_budget
from .uri import address_of

__all__ = [
    "MLFLOW2_METHODS",
    "SHOWN_FAILURES",
    "TrackerRegistryStore",
    "TrackerStore",
    "deferred_failures",
    "metric_wire",
    "param_wire",
    "tag_wire",
]

# Tracking-store methods that MLflow 2.x defines differently from MLflow 3 (the daemon's
# tracker_daemon/store/mlflow2.py translates them); sent as "mlflow2.<name>" by an MLflow 2 worker.
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


_MONITOR_THREAD = "SystemMetricsMonitor"  # the thread MLflow's in-process monitor logs from
_sampled: dict[str, bool] = {}  # run id -> the daemon samples it (the worker's monitor stops)


def _daemon_samples(tracker: Tracker, run_id: str) -> bool:
    """MLflow's in-process monitor logs for ``run_id`` (``log_system_metrics=True``,
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``, ``mlflow.enable_system_metrics_logging()``): hand
    the run to the daemon's sampler once (``start_run`` resuming it with ``system_metrics``) and
    stop that monitor. False, and the monitor keeps logging as with any store, when the daemon
    does not announce the feature or does not answer."""
    with _lock:
        known = _sampled.get(run_id)
    if known is not None:
        return known
    transport = tracker._transport
    cid = transport.client_id
    taken = p.FEATURE_SYSTEM_METRICS in transport.session.features
    if taken:

        def make(req: int, seq: int) -> p.ClientMessage:
            return p.StartRun(req, cid, run_id=run_id, system_metrics=1)

        try:
            transport.request(make, CONNECT_TIMEOUT)
        except TrackerError:
            taken = False
    if taken:
        from mlflow.tracking import fluent

        monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).get(run_id)
        stop = getattr(monitor, "_shutdown_event", None)
        if isinstance(stop, threading.Event):
            stop.set()  # its loop ends; mlflow.end_run() joins it as usual
    with _lock:
        if len(_sampled) >= 10_000:
            _sampled.pop(next(iter(_sampled)))
        _sampled[run_id] = taken
    return taken


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
    failures = [*reply.failures, *transport.take_refused()]
    if failures:
        raise _mlflow_error(failures[0].code, deferred_failures(failures))
    return decode_value(reply.value, "result", result_value_budget(len(reply.value)))


SHOWN_FAILURES = 3  # failures an error for earlier writes spells out (the rest are counted)


def deferred_failures(failures: Sequence[p.Failure]) -> str:
    """The message for failures of earlier non-blocking writes, raised by a later call (which may
    concern another run): the first :data:`SHOWN_FAILURES`, each with its run, then a count."""
    n = len(failures)
    shown = "; ".join(_describe(f) for f in failures[:SHOWN_FAILURES])
    more = f"; and {n - SHOWN_FAILURES} more" if n > SHOWN_FAILURES else ""
    return (
        f"{n} earlier write(s) of this process were not committed (reported by this later "
        f"call): {shown}{more}"
    )


def _describe(f: p.Failure) -> str:
    rec = f.record
    if rec is None:  # an artifact, or a record the daemon could not read: the message says
        return f"{f.code}: {f.message}"
    kind = {p.Metric: "metric", p.Param: "param", p.Tag: "tag"}[type(rec)]
    return f"run {rec.run_id}: {kind} {rec.key!r}: {f.code}: {f.message}"


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


def _checked_batch(
    run_id: str, metrics: Sequence[Any], params: Sequence[Any], tags: Sequence[Any]
) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
    """The checks MLflow's ``SqlAlchemyStore.log_batch`` makes before it touches the database,
    MLflow's own functions (its exceptions, its truncation of long values)."""
    from mlflow.utils.validation import (
        _validate_batch_log_data,
        _validate_batch_log_limits,
        _validate_param_keys_unique,
        _validate_run_id,
    )

    _validate_run_id(run_id)  # type: ignore[no-untyped-call]
    metrics, params, tags = _validate_batch_log_data(metrics, params, tags)  # type: ignore[no-untyped-call]
    _validate_batch_log_limits(metrics, params, tags)  # type: ignore[no-untyped-call]
    _validate_param_keys_unique(params)  # type: ignore[no-untyped-call]
    return metrics, params, tags


def _invalid(message: str) -> MlflowException:
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _invalid_value(path: str, value: object, why: str) -> MlflowException:
    """MLflow's ``invalid_value`` message (mlflow.utils.validation), as its store raises it."""
    try:
        shown = json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        shown = repr(value)
    return _invalid(f"Invalid value {shown} for parameter '{path}' supplied: {why}")


def _int64(path: str, n: object, minimum: int, why: str) -> int:
    """``n`` as the int the wire carries, where MLflow takes any number: outside ``minimum`` ..
    2**63-1, or not finite, it raises as MLflow's store does (its SQL column is int64; MLflow
    itself fails such a value at the call, with an INTERNAL_ERROR from the database)."""
    if not isinstance(n, numbers.Number):
        raise _invalid_value(path, n, why)
    try:
        out: int = int(n)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):  # NaN, infinities, complex
        raise _invalid_value(path, n, why) from None
    if not minimum <= out <= 2**63 - 1:
        raise _invalid_value(path, n, why)
    return out


def metric_wire(run_id: str, m: Any) -> list[Any]:
    """The wire record of MLflow ``Metric`` ``m`` for ``run_id``, checked in the order of
    MLflow's ``_validate_metric`` (name, value, timestamp, step) plus the int64 range of its
    columns; raises ``MlflowException`` (``INVALID_PARAMETER_VALUE``) and sends nothing."""
    key, value = m.key, m.value
    try:
        key = v.check_key(key, "metric key")
    except (TypeError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    if value is None:
        raise _invalid("Missing value for required parameter 'value'.")
    if not isinstance(value, numbers.Number) or isinstance(value, bool):
        raise _invalid_value(
            "value",
            value,
            f"(timestamp={m.timestamp}). Please specify value as a valid double (64-bit floating "
            "point)",
        )
    about = f"metric '{key}' (value={value}). "
    ts = _int64(
        "timestamp",
        m.timestamp,
        0,
        about + "Timestamp must be a nonnegative long (64-bit integer) ",
    )
    step = 0 if m.step is None else m.step
    step = _int64("step", step, -(2**63), about + "Step must be a valid long (64-bit integer).")
    try:
        checked = v.check_metric(key, value, step, ts)
        extras = v.check_metric_extras(
            getattr(m, "model_id", None),
            getattr(m, "dataset_name", None),
            getattr(m, "dataset_digest", None),
        )
    except (TypeError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    return p.metric_wire(run_id, checked[0], checked[1], checked[3], checked[2], *extras)


def param_wire(run_id: str, param: Any) -> list[Any]:
    """The wire record of MLflow ``Param`` ``param``: MLflow's name rules, and a value over
    6000 characters truncated as MLflow truncates it (``MLFLOW_TRUNCATE_LONG_VALUES``)."""
    try:
        key, value = v.check_param(param.key, param.value)
    except (TypeError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    return ["p", run_id, key, value]


def tag_wire(run_id: str, tag: Any) -> list[Any]:
    """The wire record of MLflow ``RunTag`` ``tag`` (values truncated at 8000 characters, as
    MLflow's store truncates them)."""
    try:
        key, value = v.check_tag(tag.key, tag.value)
    except (TypeError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    return ["t", run_id, key, value]


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
        """One unit, as MLflow's ``log_batch``: MLflow's own checks of the call raise here,
        before anything is sent; what only the store decides (a changed param) fails the whole
        unit in the daemon, which stores none of it (reported at the next blocking call)."""
        metrics, params, tags = _checked_batch(run_id, metrics, params, tags)
        if threading.current_thread().name == _MONITOR_THREAD and _daemon_samples(
            self._tracker, run_id
        ):
            return  # the daemon samples this run: the worker's own figures are not logged
        records = [param_wire(run_id, x) for x in params]
        records += [metric_wire(run_id, x) for x in metrics]  # int64 columns: MLflow's DB fails
        records += [tag_wire(run_id, x) for x in tags]
        transport = self._tracker._transport
        if len(records) < 2:
            for record in records:
                transport.put(record)
            return
        if not transport.welcomed.is_set():
            # units go only to a daemon that announced them: know which one this is first
            try:
                transport.wait_welcome(CONNECT_TIMEOUT)
            except DaemonUnavailable as exc:
                raise _mlflow_error("TEMPORARILY_UNAVAILABLE", str(exc)) from None
        transport.put_unit(records)

    def log_metric(self, run_id: str, metric: Any) -> None:
        self._tracker._transport.put(metric_wire(run_id, metric))

    def log_param(self, run_id: str, param: Any) -> None:
        self._tracker._transport.put(param_wire(run_id, param))

    def set_tag(self, run_id: str, tag: Any) -> None:
        self._tracker._transport.put(tag_wire(run_id, tag))

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
