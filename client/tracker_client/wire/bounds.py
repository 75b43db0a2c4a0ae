"""Bounds on what decoding one frame may cost (pure, no I/O; used by :mod:`.protocol`).

A daemon decodes client frames with a budget of msgpack values (:func:`value_budget`): the
:class:`Budget` hooks count every array and map and their elements as msgpack builds them and stop
it past the budget, so a hostile frame of N bytes (e.g. millions of nested empty arrays) costs a
small multiple of N in memory and time. :func:`peek_req` and :func:`peek_sequenced` read header
fields of a frame without building the rest.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "Budget",
    "OverBudget",
    "peek_req",
    "peek_sequenced",
    "value_budget",
]

DEFAULT_MAX_RECORDS: Final = 10_000  # a daemon's default max_records_per_frame
VALUES_PER_RECORD: Final = 11  # a metric record: its array, its 9 elements, its slot in "records"
ENVELOPE_VALUES: Final = 64  # the envelope, the body and its fields, with room to spare
PEEK_REQ_BYTES: Final = 4096  # peek_req reads the req of a frame from this many leading bytes
_INT64_MAX: Final = 2**63 - 1


def value_budget(max_records: int) -> int:
    """The most msgpack values (each array and map, and each of their elements and keys) the
    decoder of a daemon that accepts ``max_records`` records per data frame builds for one frame:
    room for a data frame of twice that many metric records (which is then still decoded, and
    refused with ``limit_exceeded`` naming the limit) plus the envelope."""
    return 2 * max_records * VALUES_PER_RECORD + ENVELOPE_VALUES


class Budget:
    """msgpack ``list_hook``/``object_hook``: counts the values built so far and aborts the
    unpacking once they exceed the budget. The hooks run as each array/map is completed, so at
    most one array or map (itself bounded by ``max_array_len``/``max_map_len``) is built past it."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def array(self, v: list[Any]) -> list[Any]:
        self.left -= 1 + len(v)
        if self.left < 0:
            raise OverBudget
        return v

    def map(self, v: dict[Any, Any]) -> dict[Any, Any]:
        self.left -= 1 + 2 * len(v)
        if self.left < 0:
            raise OverBudget
        return v


class OverBudget(Exception):
    """Raised by a :class:`Budget` hook: the frame holds more values than the budget."""


def peek_sequenced(frame: bytes) -> tuple[str, int, int]:
    """(client_id, seq, record count) of a DATA or artifact frame known to be valid (it was
    decoded strictly when it arrived); cheap: reads the header fields and the records array's
    length without building the records. For journal replay."""
    up = msgpack.Unpacker(raw=False, max_buffer_size=max(len(frame), 1024))
    up.feed(frame)
    up.read_array_header()
    up.skip()  # version
    kind = up.unpack()
    client_id: str | None = None
    seq: int | None = None
    count = None if kind == "data" else 1
    for _ in range(up.read_map_header()):
        key = up.unpack()
        if key == "client_id":
            client_id = up.unpack()
        elif key == "seq":
            seq = up.unpack()
        elif key == "records":
            count = up.read_array_header()
            if client_id is None or seq is None:  # (the reference encoder writes them first)
                for _ in range(count):
                    up.skip()
        else:
            up.skip()
        if client_id is not None and seq is not None and count is not None:
            break
    if client_id is None or seq is None or count is None:
        raise ValueError(f"{kind}: not a valid sequenced message")
    return client_id, seq, count


def peek_req(frame: bytes) -> int | None:
    """Best effort, bounded: the ``req`` of a frame that is not decoded (too large or too
    complex), read from its first ``PEEK_REQ_BYTES`` bytes without building the rest."""
    try:
        up = msgpack.Unpacker(raw=False, max_buffer_size=PEEK_REQ_BYTES)
        up.feed(frame[:PEEK_REQ_BYTES])
        if up.read_array_header() != 3:
            return None
        up.skip()  # version
        up.skip()  # kind
        for _ in range(up.read_map_header()):
            if up.unpack() == "req":
                req = up.unpack()
                return req if type(req) is int and 0 <= req <= _INT64_MAX else None
            up.skip()
    except Exception:  # truncated by the peek window, not msgpack, ...: no req
        return None
    return None
