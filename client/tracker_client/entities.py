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

Decoding only ever touches *classes*: a name must resolve, by exact module and qualified name, to a
class defined in an ``mlflow.`` module (ext 5: in ``mlflow.entities``), of the kind its ext type
needs (an Enum, a class with ``from_proto``, a dataclass or ``from_dict`` class). Anything else —
e.g. ``"mlflow.utils.file_utils:os.system"``, a function reachable as a module attribute — is
refused: the daemon decodes what clients send. mlflow is imported lazily: importing this module
(part of ``tracker_client``) does not import it.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any

import msgpack

__all__ = ["decode_value", "encode_value"]

EXT_PROTO = 1
EXT_PAGED = 2
EXT_ENUM = 3
EXT_DICT = 4
EXT_STATE = 5
EXT_SET = 6


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(name: Any, prefix: str = "mlflow.") -> type:
    """The MLflow class ``name`` ("module:QualName") denotes — only a class defined in that very
    module (so no function, module or foreign class reachable as an attribute)."""
    module, _, qual = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not module.startswith(prefix) or not qual or any(p.startswith("_") for p in qual.split(".")):
        raise ValueError(f"refusing to decode a value of type {name!r}: not an MLflow class")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if not (
        isinstance(obj, type)
        and getattr(obj, "__module__", None) == module
        and getattr(obj, "__qualname__", None) == qual
    ):
        raise ValueError(f"refusing to decode a value of type {name!r}: not an MLflow class")
    return obj


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


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_PAGED:
        from mlflow.store.entities.paged_list import PagedList

        items, token = _unpack(data)
        return PagedList(items, token)
    if code == EXT_SET:
        frozen, items = _unpack(data)
        return frozenset(items) if frozen else set(items)
    if code == EXT_PROTO:
        name, full_name, payload = _unpack(data)
        cls = _resolve(name)
        if not callable(getattr(cls, "from_proto", None)):
            raise ValueError(f"refusing to decode {name!r}: it has no from_proto")
        proto = _proto_class(full_name)()
        proto.ParseFromString(payload)
        return cls.from_proto(proto)  # type: ignore[attr-defined]
    if code not in (EXT_ENUM, EXT_DICT, EXT_STATE):
        return msgpack.ExtType(code, data)
    name, payload = _unpack(data)
    if code == EXT_ENUM:
        cls = _resolve(name)
        if not issubclass(cls, enum.Enum):
            raise ValueError(f"refusing to decode {name!r}: not an Enum")
        return cls(payload)
    if not isinstance(payload, dict):
        raise ValueError(f"decoding {name!r}: expected a map of fields")
    if code == EXT_DICT:
        cls = _resolve(name)
        if callable(getattr(cls, "from_dict", None)):
            return cls.from_dict(payload)  # type: ignore[attr-defined]
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"refusing to decode {name!r}: neither from_dict nor a dataclass")
        return cls(**payload)
    cls = _resolve(name, prefix="mlflow.entities")
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


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)


def encode_value(value: Any) -> bytes:
    return _pack(value)


def decode_value(data: bytes) -> Any:
    return _unpack(data)
