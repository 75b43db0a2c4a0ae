"""``tracker_client.entities``: the path the daemon and older code import; the module is
:mod:`tracker_client.mlflow.entities` (this one only re-exports it; the client's own modules import
the new path, a contract in .importlinter)."""

from __future__ import annotations

from .mlflow.entities import (
    EXT_DICT,
    EXT_ENUM,
    EXT_PAGED,
    EXT_PROTO,
    EXT_SET,
    EXT_STATE,
    EXTRA_CLASSES,
    MAX_EXT_DEPTH,
    DecodeError,
    allowed_classes,
    call_value_budget,
    decode_value,
    encode_value,
    result_value_budget,
)

__all__ = [
    "EXT_DICT",
    "EXT_ENUM",
    "EXT_PAGED",
    "EXT_PROTO",
    "EXT_SET",
    "EXT_STATE",
    "DecodeError",
    "EXTRA_CLASSES",
    "MAX_EXT_DEPTH",
    "allowed_classes",
    "call_value_budget",
    "decode_value",
    "encode_value",
    "result_value_budget",
]
