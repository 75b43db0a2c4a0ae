"""Faithful, pickle-free encoding of MLflow store arguments and results for ``call`` messages.

Values are msgpack documents; MLflow entities travel as MLflow's own protobuf bytes:

* ``None``, bool, int, float, str, bytes, lists/tuples and string-keyed dicts: as msgpack;
* an MLflow entity (anything under ``mlflow.entities`` with ``to_proto``/``from_proto``):
  ext type 1 holding msgpack ``["module:QualName", "proto.FullName", proto_bytes]``;
* ``PagedList``: ext type 2 holding msgpack ``[items, token]``;
* an ``enum.Enum`` member of an MLflow module: ext type 3 ``["module:QualName", value]``;
* MLflow entities without protobuf (a few dataclasses): ext type 4
  ``["module:QualName", to_dict() or __dict__]``;
* other ``mlflow.entities`` objects (no protobuf, no ``to_dict``: ``Prompt``, ``PromptVersion``):
  ext type 5 ``["module:QualName", instance __dict__]``, restored without calling ``__init__``;
* a set or frozenset: ext type 6 ``[frozen, items]`` (an array would come back as a list).

A span still being recorded (``LiveSpan``, which tracing passes to ``log_spans``) travels as the
immutable ``Span`` it becomes (its own ``from_dict`` refuses to rebuild it).

Decoding never runs code it was not built to run: a name decodes only if it is, exactly
(``module:QualName``, as ``type.__module__`` and ``__qualname__`` spell it), a key of
:func:`allowed_classes` — the table of

* every public class defined in the ``mlflow.entities`` package (all its modules, imported once
  when the table is built: that import is fixed, never chosen by a name on the wire), and
* the few classes outside it that MLflow's store API returns (``EXTRA_CLASSES``: each name is
  literally in the table with its one module, imported only when that exact name is decoded),

and of the kind its ext type needs (ext 3: an ``Enum``; ext 1: a class with ``from_proto``;
ext 4: ``from_dict`` or a dataclass; ext 5: ``mlflow.entities`` only). Any other name — e.g.
``"mlflow.pyfunc.stdin_server:X"`` or ``"mlflow.utils.file_utils:os.system"`` — is refused with
:class:`DecodeError` before anything is imported or called: the daemon decodes what clients send,
and importing a module runs its code. mlflow is imported lazily: importing this module (part of
``tracker_client``) does not import it.

Decoding is bounded like the wire (``bounds.Budget``): given ``max_values``,
:func:`decode_value` builds at most that many msgpack values in the document *and every ext
payload nested in it* (one budget for the whole value), and charges a protobuf payload before it
is parsed (:func:`_charge_proto`: each field it holds, and each message as 1 + the fields its type
declares — what ``from_proto`` builds), so a hostile ``call`` of N bytes (millions of empty
arrays, or a ``Run`` holding millions of empty metrics) costs a small multiple of the budget, not
of N. Ext values nest at most :data:`MAX_EXT_DEPTH` deep (each level is a decoder on the stack).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import msgpack

from ..wire.bounds import DEFAULT_MAX_RECORDS, Budget, OverBudget, value_budget

__all__ = [
    "EXTRA_CLASSES",
    "EXT_DICT",
    "EXT_ENUM",
    "EXT_PAGED",
    "EXT_PROTO",
    "EXT_SET",
    "EXT_STATE",
    "MAX_EXT_DEPTH",
    "DecodeError",
    "allowed_classes",
    "call_value_budget",
    "decode_value",
    "encode_value",
    "result_value_budget",
]

EXT_PROTO = 1
EXT_PAGED = 2
EXT_ENUM = 3
EXT_DICT = 4
EXT_STATE = 5
EXT_SET = 6
# Ext values inside ext values (a PagedList of entities is 2 deep): each level is a msgpack
# document decoded while the one around it is (C stack: msgpack's decoder keeps ~40 KB per level,
# and ~200 levels overflowed a thread's 8 MB stack — a 1.4 KB call ended the daemon).
MAX_EXT_DEPTH = 16


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


_ENTITIES = "mlflow.entities"
# Classes outside mlflow.entities that MLflow's store API returns (resolve_trace_archival_config,
# calculate_trace_filter_correlation): exact names, each resolved from its own module only.
EXTRA_CLASSES = frozenset(
    {
        "mlflow.store.workspace.abstract_store:ResolvedTraceArchivalConfig",
        "mlflow.tracing.analysis:TraceFilterCorrelationResult",
    }
)


class DecodeError(ValueError):
    """A value that does not decode; the message names the field and the value."""


def _public(qual: str) -> bool:
    return not any(part.startswith("_") for part in qual.split("."))


def _classes_of(owner: Any, module: str, prefix: str, into: dict[str, type]) -> None:
    """The public classes defined in ``module`` (and the classes nested in them)."""
    for name, obj in vars(owner).items():
        qual = f"{prefix}{name}"
        if (
            isinstance(obj, type)
            and obj.__module__ == module
            and obj.__qualname__ == qual
            and _public(qual)
        ):
            into[f"{module}:{qual}"] = obj
            _classes_of(obj, module, f"{qual}.", into)


@functools.cache
def allowed_classes() -> Mapping[str, type]:
    """``"module:QualName"`` → class for every public class defined in ``mlflow.entities``
    (each of its modules imported once, here; a module that does not import on this
    installation is left out)."""
    package = importlib.import_module(_ENTITIES)
    table: dict[str, type] = {}
    _classes_of(package, _ENTITIES, "", table)
    for info in pkgutil.walk_packages(package.__path__, f"{_ENTITIES}.", onerror=lambda _: None):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # an optional dependency missing: its classes cannot travel
            continue
        _classes_of(module, info.name, "", table)
    return table


def _refuse(name: Any, why: str) -> DecodeError:
    return DecodeError(f"refusing to decode a value of type {name!r}: {why}")


def _resolve(name: Any, entities_only: bool = False) -> type:
    """The class ``name`` ("module:QualName") denotes — only a key of :func:`allowed_classes`
    or of ``EXTRA_CLASSES``; nothing is imported for any other name."""
    if not isinstance(name, str):
        raise _refuse(
            name, "not an allowed MLflow entity class (a name is a str 'module:QualName')"
        )
    cls = allowed_classes().get(name)
    if cls is None and name in EXTRA_CLASSES and not entities_only:
        module, _, qual = name.partition(":")
        obj = getattr(importlib.import_module(module), qual, None)
        if isinstance(obj, type) and f"{obj.__module__}:{obj.__qualname__}" == name:
            cls = obj
    if cls is None:
        only = (
            "ext type 5 takes only classes defined in mlflow.entities"
            if entities_only
            else "only classes defined in mlflow.entities and the store API's result classes "
            "listed in PROTOCOL.md §5.8 decode"
        )
        raise _refuse(name, f"not an allowed MLflow entity class ({only})")
    return cls


def _prepare(value: Any) -> Any:
    """msgpack packs list/dict/str/int subclasses natively (without ``default``): handle them
    first — including MLflow's ``(str, Enum)`` members such as ``LoggedModelStatus``, which would
    otherwise arrive as plain strings."""
    if isinstance(value, enum.Enum) and type(value).__module__.startswith("mlflow."):
        return msgpack.ExtType(EXT_ENUM, _pack([_qualname(value), value.value]))
    if isinstance(value, list):
        if type(value).__name__ == "PagedList" and type(value).__module__.startswith("mlflow."):
            return msgpack.ExtType(EXT_PAGED, _pack([list(value), value.token]))  # type: ignore[attr-defined]
        return [_prepare(v) for v in value]
    if isinstance(value, tuple):
        return [_prepare(v) for v in value]
    if isinstance(value, dict):
        return {k: _prepare(v) for k, v in value.items()}
    return value


def _default(obj: Any) -> Any:
    module = type(obj).__module__
    if module.startswith("mlflow.") and callable(getattr(obj, "to_immutable_span", None)):
        obj = obj.to_immutable_span()  # a LiveSpan cannot be rebuilt (its from_dict refuses)
    if isinstance(obj, enum.Enum) and module.startswith("mlflow."):
        return msgpack.ExtType(EXT_ENUM, _pack([_qualname(obj), obj.value]))
    if (
        module.startswith("mlflow.")
        and hasattr(obj, "to_proto")
        and hasattr(type(obj), "from_proto")
    ):
        proto = obj.to_proto()
        return msgpack.ExtType(
            EXT_PROTO,
            _pack([_qualname(obj), proto.DESCRIPTOR.full_name, proto.SerializeToString()]),
        )
    if module.startswith("mlflow.") and (dataclasses.is_dataclass(obj) or hasattr(obj, "to_dict")):
        data = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        return msgpack.ExtType(EXT_DICT, _pack([_qualname(obj), data]))
    if module.startswith("mlflow.entities") and hasattr(obj, "__dict__"):
        return msgpack.ExtType(EXT_STATE, _pack([_qualname(obj), dict(vars(obj))]))
    if isinstance(obj, set | frozenset):
        return msgpack.ExtType(EXT_SET, _pack([isinstance(obj, frozenset), list(obj)]))
    raise TypeError(f"cannot send a value of type {type(obj).__module__}.{type(obj).__name__}")


def _pack(value: Any) -> bytes:
    return msgpack.packb(_prepare(value), default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def _ext_hook(code: int, data: bytes, budget: Budget | None, depth: int) -> Any:
    if depth > MAX_EXT_DEPTH:
        raise DecodeError(
            f"ext values nest deeper than {MAX_EXT_DEPTH} levels (each level is a msgpack "
            "document decoded inside another: the limit keeps the stack bounded)"
        )
    if code == EXT_PAGED:
        from mlflow.store.entities.paged_list import PagedList

        items, token = _unpack(data, budget, depth)
        return PagedList(items, token)
    if code == EXT_SET:
        frozen, items = _unpack(data, budget, depth)
        return frozenset(items) if frozen else set(items)
    if code == EXT_PROTO:
        name, full_name, payload = _unpack(data, budget, depth)
        cls = _resolve(name)
        if not callable(getattr(cls, "from_proto", None)):
            raise _refuse(name, "it has no from_proto (ext type 1)")
        proto = _proto_class(full_name)()
        if budget is not None:
            _charge_proto(proto.DESCRIPTOR, memoryview(payload), budget, 0)
        proto.ParseFromString(payload)
        return cls.from_proto(proto)  # type: ignore[attr-defined]
    if code not in (EXT_ENUM, EXT_DICT, EXT_STATE):
        return msgpack.ExtType(code, data)
    name, payload = _unpack(data, budget, depth)
    if code == EXT_ENUM:
        cls = _resolve(name)
        if not issubclass(cls, enum.Enum):
            raise _refuse(name, "not an Enum (ext type 3)")
        return cls(payload)
    if not isinstance(payload, dict):
        raise _refuse(name, "expected a map of fields")
    if code == EXT_DICT:
        cls = _resolve(name)
        if callable(getattr(cls, "from_dict", None)):
            return cls.from_dict(payload)  # type: ignore[attr-defined]
        if not dataclasses.is_dataclass(cls):
            raise _refuse(name, "neither from_dict nor a dataclass (ext type 4)")
        return cls(**payload)
    cls = _resolve(name, entities_only=True)
    if issubclass(cls, enum.Enum):
        raise _refuse(name, "an Enum travels as ext type 3")
    obj: Any = object.__new__(cls)  # no __init__: the state is restored as it was
    obj.__dict__.update(payload)
    return obj


def _proto_class(full_name: str) -> Any:
    """The generated protobuf class for a message's full name (from the default pool)."""
    cls = _PROTO_CLASSES.get(full_name)
    if cls is None:
        from google.protobuf import descriptor_pool, message_factory

        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
        cls = _PROTO_CLASSES[full_name] = message_factory.GetMessageClass(descriptor)
    return cls


_PROTO_CLASSES: dict[str, Any] = {}
_PROTO_MAX_DEPTH = 100  # protobuf's own default recursion limit when parsing
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise DecodeError("malformed protobuf payload (a varint runs past its end)")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _charge_proto(descriptor: Any, data: memoryview, budget: Budget, depth: int) -> None:
    """Charge ``budget`` for the protobuf message ``data`` of type ``descriptor`` before it is
    parsed: 1 + the number of fields its type declares (``from_proto`` reads each of them), plus 1
    for each field it holds (a repeated field's elements), plus its byte length for a packed
    repeated number field (one value per element at most), recursing into nested messages. A
    pure scan of the wire format: nothing is built; it stops at the first value past the budget."""
    if depth > _PROTO_MAX_DEPTH:
        raise DecodeError(f"protobuf payload nests deeper than {_PROTO_MAX_DEPTH} messages")
    budget.left -= 1 + len(descriptor.fields)
    i, end = 0, len(data)
    while i < end:
        if budget.left < 0:
            raise OverBudget
        key, i = _varint(data, i)
        wire = key & 7
        budget.left -= 1
        if wire == _WIRE_VARINT:
            _, i = _varint(data, i)
        elif wire == _WIRE_I64:
            i += 8
        elif wire == _WIRE_I32:
            i += 4
        elif wire == _WIRE_LEN:
            size, i = _varint(data, i)
            field = descriptor.fields_by_number.get(key >> 3)
            if field is not None and field.message_type is not None:
                _charge_proto(field.message_type, data[i : i + size], budget, depth + 1)
            elif field is not None and field.type not in (field.TYPE_STRING, field.TYPE_BYTES):
                budget.left -= size  # packed repeated numbers
            i += size
        else:  # groups (wire types 3, 4): no MLflow message has one
            raise DecodeError(f"malformed protobuf payload (wire type {wire})")
    if budget.left < 0:
        raise OverBudget


def _unpack(data: bytes, budget: Budget | None, depth: int = 0) -> Any:
    def ext_hook(code: int, payload: bytes) -> Any:
        return _ext_hook(code, payload, budget, depth + 1)

    if budget is None:
        return msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)
    return msgpack.unpackb(
        data,
        raw=False,
        ext_hook=ext_hook,
        strict_map_key=False,
        list_hook=budget.array,
        object_hook=budget.map,
        max_array_len=max(budget.left, 0),
        max_map_len=max(budget.left, 0) // 2,
    )


def encode_value(value: Any) -> bytes:
    return _pack(value)


def call_value_budget(max_records: int, max_frame: int) -> int:
    """The most values a daemon decodes for one ``call``'s ``args`` (and, separately, its
    ``kwargs``): the wire's budget for a frame (:func:`~.bounds.value_budget`), or one value per
    8 bytes of the largest frame when that is more — a ``log_spans`` that fills the frame with
    spans (~0.08 values per byte) still decodes, while a hostile value of N bytes (one value per
    byte: nested empty arrays) is stopped after an eighth of them."""
    return max(value_budget(max_records), max_frame // 8)


def result_value_budget(size: int) -> int:
    """The most values a client decodes for a ``result`` of ``size`` bytes: two per byte (MLflow
    entities take under one: a search result's runs ~0.7), at least the wire's default budget.
    The daemon is trusted more than a client, so this only keeps a broken reply proportional."""
    return max(value_budget(DEFAULT_MAX_RECORDS), 2 * size)


def decode_value(data: bytes, field: str = "value", max_values: int | None = None) -> Any:
    """The value ``data`` encodes; :class:`DecodeError` naming ``field`` if it does not decode
    (a refused class name, a malformed ext payload, an entity that rejects its fields) or, with
    ``max_values``, if it holds more than that many values (msgpack arrays, maps and their
    elements, in ``data`` and every ext payload inside it; protobuf payloads charged by their
    fields and messages, see :func:`_charge_proto`) — refused before they are all built."""
    budget = None if max_values is None else Budget(max_values)
    try:
        return _unpack(data, budget)
    except Exception as exc:
        if _over(exc):
            reason = (
                f"the value holds more than {max_values} values (msgpack arrays, maps and their "
                "elements, protobuf messages and fields; the limit follows from "
                "max_records_per_frame, see PROTOCOL.md §5.8)"
            )
        elif isinstance(exc, DecodeError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        raise DecodeError(f"{field}: {reason}"[:1000]) from exc


def _over(exc: BaseException) -> bool:
    """Whether decoding stopped at the budget: :class:`OverBudget` from a hook (possibly raised in
    a nested ext payload) or msgpack refusing an array/map header longer than the budget."""
    if isinstance(exc, OverBudget):
        return True
    text = str(exc)
    return isinstance(exc, ValueError) and ("max_array_len" in text or "max_map_len" in text)
