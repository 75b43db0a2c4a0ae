"""The wire protocol's codec (pure, no I/O): messages of :mod:`.messages` to msgpack and back.

Decoding is strict: a wrong version, unknown kind, missing/unknown/mistyped field or an oversize
frame raises :class:`~.messages.ProtocolError` with a stable ``code`` and a message naming the
field. The one exception is a record of a ``data`` frame: a record that does not decode (a wrong
kind, length or element type, an int outside int64) becomes an :class:`~.messages.Unreadable` in
place, so that it fails alone (the daemon reports it as that record's failure) and the frame's
other records still count. The test vectors of ``client/PROTOCOL.md`` are checked against it by
the protocol unit tests.

Decoding is bounded: a daemon passes ``max_values`` (see :func:`value_budget`), and the decoder
stops building Python objects as soon as a frame holds more arrays, maps and elements than that
(``frame_too_complex``), so a hostile frame of N bytes costs a small multiple of N at most,
however it nests (msgpack's own parser refuses nesting deeper than 1024).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final

import msgpack

from .bounds import (
    Budget,
    OverBudget,
    peek_req,
    peek_sequenced,
    value_budget,
)
from .messages import (
    _KIND_OF,
    _KINDS,
    DEFAULT_MAX_FRAME_BYTES,
    OPTIONAL_FIELDS,
    PROTOCOL_VERSION,
    SENT_WHEN_SET,
    SUPPORTED_VERSIONS,
    Data,
    Failure,
    Message,
    Metric,
    Param,
    ProtocolError,
    Record,
    Tag,
    Unreadable,
    new_metric,
)

__all__ = [
    "decode",
    "decode_record",
    "encode",
    "encode_data",
    "metric_wire",
    "peek_req",
    "peek_sequenced",
    "record_to_wire",
    "value_budget",
]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# The longest run id MLflow allows; an Unreadable keeps a longer one as None.
_MAX_RUN_ID = 256


def metric_wire(
    run_id: str,
    key: str,
    value: float,
    timestamp: int,
    step: int,
    model_id: str | None = None,
    dataset_name: str | None = None,
    dataset_digest: str | None = None,
) -> list[Any]:
    """The one place a metric record's wire form is built (PROTOCOL.md, "Records"); the caller
    passes checked values (``value`` a float, ``timestamp`` and ``step`` int64)."""
    return ["m", run_id, key, value, timestamp, step, model_id, dataset_name, dataset_digest]


def record_to_wire(record: Record) -> list[Any]:
    """The msgpack array form of a record (see PROTOCOL.md, "Records")."""
    if isinstance(record, Metric):
        return metric_wire(
            record.run_id,
            record.key,
            float(record.value),
            record.timestamp,
            record.step,
            record.model_id,
            record.dataset_name,
            record.dataset_digest,
        )
    kind = "p" if isinstance(record, Param) else "t"
    return [kind, record.run_id, record.key, record.value]


def _is_int(v: object) -> bool:
    return type(v) is int and _INT64_MIN <= v <= _INT64_MAX  # noqa: E721 (bool is excluded)


def _not_int64(v: object) -> str:
    if type(v) is int:  # an int msgpack carries (up to 2**64-1) but int64 does not
        return f"{v} is outside int64 (-2**63 .. 2**63-1)"
    return f"expected an int64, got {_tname(v)}"


def decode_record(item: object, where: str = "record") -> Record:
    """Decode one wire record; raises ProtocolError naming ``where`` on any type error."""
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ProtocolError("bad_field", f"{where}: expected an array starting with a kind string")
    kind = item[0]
    if kind == "m":
        if len(item) != 9:
            raise ProtocolError(
                "bad_field", f"{where}: metric record needs 9 elements, got {len(item)}"
            )
        _, run_id, key, value, ts, step, model_id, ds_name, ds_digest = item
        _need_str(run_id, f"{where}.run_id")
        _need_str(key, f"{where}.key")
        if type(value) is int and _is_int(value):
            value = float(value)
        if type(value) is not float:
            raise ProtocolError(
                "bad_field", f"{where}.value: expected a float64, got {_tname(value)}"
            )
        if not _is_int(ts):
            raise ProtocolError("bad_field", f"{where}.timestamp: {_not_int64(ts)}")
        if not _is_int(step):
            raise ProtocolError("bad_field", f"{where}.step: {_not_int64(step)}")
        for name, v in (
            ("model_id", model_id),
            ("dataset_name", ds_name),
            ("dataset_digest", ds_digest),
        ):
            if v is not None:
                _need_str(v, f"{where}.{name}")
        return Metric(run_id, key, value, ts, step, model_id, ds_name, ds_digest)
    if kind in ("p", "t"):
        if len(item) != 4:
            raise ProtocolError(
                "bad_field", f"{where}: {kind!r} record needs 4 elements, got {len(item)}"
            )
        _, run_id, key, value = item
        _need_str(run_id, f"{where}.run_id")
        _need_str(key, f"{where}.key")
        _need_str(value, f"{where}.value")
        return Param(run_id, key, value) if kind == "p" else Tag(run_id, key, value)
    raise ProtocolError(
        "bad_field", f"{where}: unknown record kind {kind!r} (expected 'm', 'p' or 't')"
    )


# Field type rules, derived from each dataclass's annotations (its field order is the documented
# field list, so a field is declared once): "str", "str?", "int", "int?", "bin", "map", "records",
# "failures", "tags".
_RULES: Final[dict[str, str]] = {
    "str": "str",
    "str | None": "str?",
    "int": "int",
    "int | None": "int?",
    "bytes": "bin",
    "dict[str, Any]": "map",
    "dict[str, str]": "tags",
    "tuple[Record | Unreadable, ...]": "records",
    "tuple[Failure, ...]": "failures",
    "tuple[str, ...]": "strs",
    "tuple[tuple[int, int], ...]": "units",
}


def _schema_of(cls: type[Any]) -> dict[str, str]:
    rules: dict[str, str] = {}
    for f in fields(cls):
        rule = _RULES.get(str(f.type))
        if rule is None:  # pragma: no cover - a message field of a type the wire cannot carry
            raise TypeError(f"{cls.__name__}.{f.name}: no wire rule for type {f.type!r}")
        rules[f.name] = rule
    return rules


_SCHEMA: Final[dict[type[Any], dict[str, str]]] = {cls: _schema_of(cls) for cls in _KINDS.values()}
_MAX_FEATURES: Final = 64


def _tname(v: object) -> str:
    return "nil" if v is None else type(v).__name__


def _need_str(v: object, where: str) -> None:
    if not isinstance(v, str):
        raise ProtocolError("bad_field", f"{where}: expected a string, got {_tname(v)}")


def _check(rule: str, v: object, where: str) -> object:
    optional = rule.endswith("?")
    if optional and v is None:
        return None
    base = rule.rstrip("?")
    if base == "str":
        _need_str(v, where)
        return v
    if base == "int":
        if not _is_int(v):
            raise ProtocolError("bad_field", f"{where}: expected an int64, got {_tname(v)}")
        return v
    if base == "bin":
        if not isinstance(v, bytes):
            raise ProtocolError("bad_field", f"{where}: expected bin (bytes), got {_tname(v)}")
        return v
    if base == "map":
        if not isinstance(v, dict):
            raise ProtocolError("bad_field", f"{where}: expected a map, got {_tname(v)}")
        return v
    if base == "tags":
        if not isinstance(v, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in v.items()
        ):
            raise ProtocolError("bad_field", f"{where}: expected a map of string to string")
        return v
    if base == "records":
        if not isinstance(v, list):
            raise ProtocolError("bad_field", f"{where}: expected an array, got {_tname(v)}")
        return _decode_records(v, where)
    if base in ("failures", "strs", "units"):
        return _check_array(base, v, where)
    raise AssertionError(rule)  # pragma: no cover - schema typo


def _check_array(base: str, v: object, where: str) -> object:
    """Failures, and the fields of features (section 11.1): ``hello/welcome.features``,
    ``data.units``."""
    if base == "failures":
        if not isinstance(v, list):
            raise ProtocolError("bad_field", f"{where}: expected an array, got {_tname(v)}")
        return tuple(_decode_failure(item, f"{where}[{i}]") for i, item in enumerate(v))
    if base == "strs":
        if not isinstance(v, list) or len(v) > _MAX_FEATURES:
            raise ProtocolError(
                "bad_field", f"{where}: expected an array of at most {_MAX_FEATURES} strings"
            )
        for i, item in enumerate(v):
            _need_str(item, f"{where}[{i}]")
        return tuple(v)
    if not isinstance(v, list):
        raise ProtocolError("bad_field", f"{where}: expected an array, got {_tname(v)}")
    out = []
    for i, item in enumerate(v):
        if not (isinstance(item, list) and len(item) == 2 and all(map(_is_int, item))):
            raise ProtocolError("bad_field", f"{where}[{i}]: expected [first, count] (ints)")
        out.append((item[0], item[1]))
    return tuple(out)


def _decode_records(items: list[Any], where: str) -> tuple[Record | Unreadable, ...]:
    """decode_record for each item; a plain metric (the common case) takes a fast path that
    checks exactly the same rules, anything else (and every error) the general one. An item
    that does not decode becomes an :class:`Unreadable` (it fails alone, the frame stands)."""
    out: list[Record | Unreadable] = []
    append = out.append
    for i, item in enumerate(items):
        if type(item) is list and len(item) == 9:
            kind, run_id, key, value, ts, step, model_id, ds_name, ds_digest = item
            if (
                kind == "m"
                and type(run_id) is str
                and type(key) is str
                and type(value) is float
                and type(ts) is int
                and type(step) is int
                and _INT64_MIN <= ts <= _INT64_MAX
                and _INT64_MIN <= step <= _INT64_MAX
                and model_id is None
                and ds_name is None
                and ds_digest is None
            ):
                append(new_metric(run_id, key, value, ts, step))
                continue
        try:
            append(decode_record(item, f"{where}[{i}]"))
        except ProtocolError as exc:
            append(Unreadable(_run_id_of(item), exc.message))
    return tuple(out)


def _run_id_of(item: object) -> str | None:
    if type(item) is list and len(item) > 1:
        run_id = item[1]
        if type(run_id) is str and len(run_id) <= _MAX_RUN_ID:
            return run_id
    return None


def _decode_failure(item: object, where: str) -> Failure:
    if not isinstance(item, list) or len(item) != 3:
        raise ProtocolError("bad_field", f"{where}: expected [record|nil, code, message]")
    rec, code, message = item
    _need_str(code, f"{where}.code")
    _need_str(message, f"{where}.message")
    return Failure(None if rec is None else decode_record(rec, f"{where}.record"), code, message)


def _to_wire(kind_cls: type[Any], msg: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    when_set = SENT_WHEN_SET.get(kind_cls, frozenset())
    for name, rule in _SCHEMA[kind_cls].items():
        v = getattr(msg, name)
        if name in when_set:
            if not v:
                continue
            if rule == "units":
                v = [list(x) for x in v]
            elif rule == "strs":
                v = list(v)
        elif rule == "records":
            v = [_record_out(r) for r in v]
        elif rule == "failures":
            v = [
                [None if f.record is None else record_to_wire(f.record), f.code, f.message]
                for f in v
            ]
        body[name] = v
    return body


def _record_out(record: Record | Unreadable) -> list[Any]:
    if isinstance(record, Unreadable):
        raise ValueError(f"an unreadable record is not encoded ({record.problem})")
    return record_to_wire(record)


def encode(msg: Message) -> bytes:
    """Encode a message into one frame."""
    cls = type(msg)
    body = _to_wire(cls, msg)
    return msgpack.packb([PROTOCOL_VERSION, _KIND_OF[cls], body], use_bin_type=True)  # type: ignore[no-any-return]


def encode_data(
    client_id: str,
    seq: int,
    wire_records: list[list[Any]],
    units: list[list[int]] | None = None,
) -> bytes:
    """Fast path for the client: records already in wire form (see :func:`record_to_wire`);
    ``units`` ([first, count] each) only for a daemon that announced them."""
    body: dict[str, Any] = {"client_id": client_id, "seq": seq, "records": wire_records}
    if units:
        body["units"] = units
    return msgpack.packb([PROTOCOL_VERSION, "data", body], use_bin_type=True)  # type: ignore[no-any-return]


def _req_of(obj: object) -> int | None:
    if type(obj) is list and len(obj) >= 3 and type(obj[2]) is dict:
        req = obj[2].get("req")
        if type(req) is int and 0 <= req <= _INT64_MAX:
            return req
    return None


def decode(
    frame: bytes, max_frame: int = DEFAULT_MAX_FRAME_BYTES, max_values: int | None = None
) -> Message:
    """Decode one frame strictly. Raises :class:`ProtocolError`, never anything else.

    ``max_values`` bounds the work: at most that many msgpack values (see :func:`value_budget`)
    are built, and no array or map longer than that is started; a daemon passes it for frames
    from clients. ``None`` (a client decoding its daemon's replies, or journal replay) leaves
    only msgpack's own bounds (lengths at most the frame size, nesting at most 1024)."""
    if len(frame) > max_frame:
        raise ProtocolError(
            "frame_too_large",
            f"frame is {len(frame)} bytes; the limit is {max_frame} bytes",
            peek_req(frame),
        )
    try:
        # each value takes a byte at least and the budget counts a value at most twice (as an
        # element, and as an array or map): a frame this short cannot exceed it, skip the hooks
        if max_values is None or 2 * len(frame) <= max_values:
            obj = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
        else:
            budget = Budget(max_values)
            obj = msgpack.unpackb(
                frame,
                raw=False,
                strict_map_key=True,
                use_list=True,
                list_hook=budget.array,
                object_hook=budget.map,
                max_array_len=max_values,
                max_map_len=max_values // 2,
            )
    except msgpack.ExtraData:
        raise ProtocolError("bad_msgpack", "trailing bytes after the msgpack envelope") from None
    except (OverBudget, msgpack.StackError) as exc:
        raise _too_complex(frame, max_values, exc) from None
    except ValueError as exc:
        text = str(exc)
        if max_values is not None and ("max_array_len" in text or "max_map_len" in text):
            raise _too_complex(frame, max_values, exc) from None  # a longer array/map header
        raise ProtocolError("bad_msgpack", f"not a msgpack document: {_why(exc)}") from None
    except Exception as exc:  # msgpack raises several types (FormatError, ...)
        raise ProtocolError("bad_msgpack", f"not a msgpack document: {_why(exc)}") from None
    req = _req_of(obj)
    try:
        return _decode_envelope(obj)
    except ProtocolError as exc:
        exc.req = req
        raise


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _too_complex(frame: bytes, max_values: int | None, exc: Exception) -> ProtocolError:
    if isinstance(exc, msgpack.StackError):
        why = "it nests arrays/maps deeper than msgpack's limit of 1024 levels"
    else:
        why = (
            f"it holds more than {max_values} msgpack values (arrays, maps and their elements; "
            "the limit follows from max_records_per_frame)"
        )
    return ProtocolError("frame_too_complex", f"frame not decoded: {why}", peek_req(frame))


def _decode_envelope(obj: object) -> Message:
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError("bad_envelope", "envelope must be an array [version, kind, body]")
    version, kind, body = obj
    if not _is_int(version):
        raise ProtocolError("bad_envelope", f"version: expected an int, got {_tname(version)}")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version} is not supported "
            f"(supported: {sorted(SUPPORTED_VERSIONS)})",
        )
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ProtocolError("unknown_kind", f"unknown message kind {kind!r}")
    if not isinstance(body, dict):
        raise ProtocolError("bad_envelope", f"{kind}: body must be a map, got {_tname(body)}")
    cls = _KINDS[kind]
    schema = _SCHEMA[cls]
    if not all(isinstance(k, str) for k in body):
        raise ProtocolError("bad_field", f"{kind}: every body key must be a string")
    unknown = sorted(set(body) - set(schema))
    if unknown:
        raise ProtocolError(
            "bad_field", f"{kind}: unknown field(s) {', '.join(map(repr, unknown))}"
        )
    optional = OPTIONAL_FIELDS.get(cls, frozenset())
    missing = [name for name in schema if name not in body and name not in optional]
    if missing:
        raise ProtocolError(
            "bad_field", f"{kind}: missing field(s) {', '.join(map(repr, missing))}"
        )
    values = {
        name: _check(rule, body[name], f"{kind}.{name}")
        for name, rule in schema.items()
        if name in body
    }
    if cls is Data and values.get("units"):
        _check_units(values["units"], values["records"])  # type: ignore[arg-type]
    return cls(**values)  # type: ignore[no-any-return]


def _check_units(
    units: tuple[tuple[int, int], ...], records: tuple[Record | Unreadable, ...]
) -> None:
    """Units are ascending, do not overlap, lie within the records and hold one run each (an
    Unreadable record does not count: it fails its whole unit, in the daemon)."""
    end = 0
    for i, (first, count) in enumerate(units):
        where = f"data.units[{i}]"
        if count < 1 or first < end or first + count > len(records):
            raise ProtocolError(
                "bad_field",
                f"{where}: [{first}, {count}] must hold at least one record, start at or after "
                f"the previous unit's end ({end}) and end within the {len(records)} records",
            )
        runs = {r.run_id for r in records[first : first + count] if not isinstance(r, Unreadable)}
        if len(runs) > 1:
            raise ProtocolError(
                "bad_field", f"{where}: every record of a unit must have the same run_id"
            )
        end = first + count
