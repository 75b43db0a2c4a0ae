"""MLflow store calls on behalf of ``tracker://`` clients (the ``call`` message).

Only methods that MLflow's own ``AbstractStore`` classes define can be called (tracking store and
model-registry store); anything else is refused with ``ENDPOINT_NOT_FOUND``. Arguments and results
are encoded with :mod:`tracker_client.mlflow.entities` (MLflow protobuf inside msgpack; no pickle).
Blocking: the daemon runs :meth:`StoreCalls.invoke` in a worker thread.

Arguments decode only into the classes of ``entities.allowed_classes`` (built here, once, when
the store is loaded): any other class name is refused with ``INVALID_PARAMETER_VALUE`` naming the
field and the name, and nothing is imported for it. Each of ``args`` and ``kwargs`` decodes within
a budget of values (``entities.call_value_budget``, from ``max_records_per_frame`` and
``max_frame_bytes``), the wire's mechanism: a larger one is refused the same way, naming the
limit. A call that raises anything at all — even a ``BaseException`` such as ``SystemExit`` from
MLflow code — is answered with an error (``INTERNAL_ERROR`` for one that is not an
``Exception``, naming its type, which the call's ``event=call_failed`` log line shows); it never
leaves the worker thread to end the daemon.

``mlflow2.<name>`` (target ``tracking``) is a method of MLflow 2.x's store API whose signature or
result changed in MLflow 3, called by a worker on MLflow 2 (tracing's v2 API): mlflow2.py
translates it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from tracker_client.mlflow.entities import (
    DecodeError,
    allowed_classes,
    call_value_budget,
    decode_value,
    encode_value,
)
from tracker_client.protocol import DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_RECORDS

from ..errors import PermanentSinkError, RetryableSinkError, SinkError
from . import mlflow2
from .sink import Sink, classify

__all__ = ["READ_PREFIXES", "StoreCalls"]

READ_PREFIXES = ("get_", "search_", "list_", "batch_get_", "query_", "find_", "calculate_")
# Named like a read but writes (runs under the writer limiter: one writer for SQLite).
_WRITE_PREFIXES = ("get_or_create_",)
# Reads whose names have no read prefix (they need no writer slot).
_READS = frozenset(
    {"filter_active_experiment_ids", "resolve_trace_archival_config", "sum_gateway_trace_cost"}
)
_NOT_FORWARDED = ("__init__",)
# Store methods MlflowClient calls that the abstract tracking store does not declare (every
# concrete store has them): MlflowClient.delete_tag calls store.delete_tag.
_UNDECLARED_TRACKING = frozenset({"delete_tag"})


def _public_methods(cls: type) -> frozenset[str]:
    names = set()
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in _NOT_FORWARDED or "async" in name:
            continue
        if isinstance(inspect.getattr_static(cls, name), property):
            continue
        if callable(member):
            names.add(name)
    return frozenset(names)


class StoreCalls:
    def __init__(
        self,
        sink: Sink,
        *,
        check_location: Callable[[str, str], None] | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_frame: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryStore
        from mlflow.store.tracking.abstract_store import AbstractStore as TrackingStore
        from mlflow.tracking._model_registry.utils import set_registry_uri
        from mlflow.tracking._tracking_service.utils import set_tracking_uri

        # MLflow's stores resolve ``models:/`` and ``runs:/`` sources with a fresh
        # ``MlflowClient()`` on the process's global tracking URI (e.g. the registry store's
        # create_model_version looks the logged model up that way): point it at the backend, as
        # ``mlflow server`` does — otherwise the lookup misses and creates ./mlflow.db in the cwd.
        set_tracking_uri(sink.backend_uri)
        set_registry_uri(sink.backend_uri)
        self.sink = sink
        self._check_location = check_location  # artifact_roots.ArtifactRoots.check
        # values decoded per args/kwargs: the daemon's max_records_per_frame and frame limit
        self.max_values = call_value_budget(max_records, max_frame)
        self.allowed = {
            "tracking": _public_methods(TrackingStore) | _UNDECLARED_TRACKING,
            "registry": _public_methods(RegistryStore),
        }
        self._registry: Any = None
        allowed_classes()  # the decode table, built now rather than during a client's call

    @staticmethod
    def is_read(method: str) -> bool:
        method = mlflow2.method_of(method) or method
        if method.startswith(_WRITE_PREFIXES):
            return False
        return method.startswith(READ_PREFIXES) or method in _READS

    def _target(self, target: str) -> Any:
        if target == "tracking":
            return self.sink.store
        if self._registry is None:
            from mlflow.tracking._model_registry.utils import _get_store

            self._registry = _get_store(self.sink.backend_uri)  # type: ignore[no-untyped-call]
        return self._registry

    def check(self, target: str, method: str) -> None:
        allowed = self.allowed.get(target)
        if allowed is None:
            raise PermanentSinkError(
                "INVALID_PARAMETER_VALUE", f"call target {target!r}: must be tracking or registry"
            )
        if target == "tracking" and mlflow2.method_of(method) in mlflow2.METHODS:
            return
        if method not in allowed:
            raise PermanentSinkError(
                "ENDPOINT_NOT_FOUND",
                f"{target} store method {method!r} is not part of MLflow's store API",
            )

    def invoke(self, target: str, method: str, args: bytes, kwargs: bytes) -> tuple[Any, bytes]:
        """Call the method; returns (raw result, encoded result). Raises only SinkError."""
        self.check(target, method)
        try:
            a = decode_value(args, "call.args", self.max_values)
            kw = decode_value(kwargs, "call.kwargs", self.max_values)
            if not isinstance(a, list) or not isinstance(kw, dict):
                raise PermanentSinkError(
                    "INVALID_PARAMETER_VALUE", "call: args must be an array and kwargs a map"
                )
            if target == "tracking" and method == "create_experiment":
                self._check_new_location(a, kw)
            v2 = mlflow2.method_of(method)
            if v2 is not None:
                result = mlflow2.invoke(self._target(target), v2, a, kw)
                return result, mlflow2.encode_result(result)
            result = getattr(self._target(target), method)(*a, **kw)
            return result, encode_value(result)
        except DecodeError as exc:
            raise PermanentSinkError("INVALID_PARAMETER_VALUE", str(exc)) from exc
        except Exception as exc:
            raise _call_error(exc) from exc
        except BaseException as exc:  # e.g. SystemExit from MLflow code: not the daemon's end
            reason = f"{type(exc).__name__}: {exc}"[:300]  # logged as the call's failure
            raise PermanentSinkError(
                "INTERNAL_ERROR", f"{target} store method {method!r} raised {reason}"
            ) from exc

    def _check_new_location(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """``create_experiment(name, artifact_location=None, tags=None)``: a local location
        outside the daemon's artifact roots is refused (artifact_roots.py)."""
        location = kwargs.get("artifact_location", args[1] if len(args) > 1 else None)
        if location is not None and location != "" and self._check_location is not None:
            if not isinstance(location, str):
                raise PermanentSinkError(
                    "INVALID_PARAMETER_VALUE", "create_experiment.artifact_location: not a str"
                )
            self._check_location(location, "create_experiment.artifact_location")


def _call_error(exc: BaseException) -> SinkError:
    """Like :func:`classify`, but an MLflow error that only says INTERNAL_ERROR (the code every
    ``MlflowException`` without one gets: "logged model not found", a bad argument) is final for
    a call — retrying it for 30 s only delays the caller's exception. Locks and connection
    errors stay retryable."""
    err = classify(exc)
    if (
        isinstance(err, RetryableSinkError)
        and err.code == "INTERNAL_ERROR"
        and "database is locked" not in err.message
    ):
        return PermanentSinkError(err.code, err.message)
    return err
