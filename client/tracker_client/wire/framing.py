"""Length + CRC framing for files (pure): the daemon's journal and the client's offline spool.

A file is a sequence of frames::

    u32 little-endian  payload length
    u32 little-endian  CRC-32 (zlib) of the payload
    payload            ``length`` bytes

:func:`scan` reads frames until the end of the data or the first frame that is incomplete
(a torn tail) or whose CRC does not match; it reports where the good prefix ends so the caller
can truncate there and quarantine the rest.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = ["HEADER", "MAX_PAYLOAD", "Scan", "encode_frame", "scan"]

HEADER = struct.Struct("<II")
MAX_PAYLOAD = 256 * 1024 * 1024


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(slots=True)
class Scan:
    """Result of scanning a buffer: frames as (offset, payload), and where the good data ends."""

    frames: list[tuple[int, bytes]]
    good_end: int
    problem: str | None  # None when the whole buffer was good


def scan(data: bytes | memoryview, start: int = 0) -> Scan:
    view = memoryview(data)
    frames: list[tuple[int, bytes]] = []
    pos = start
    end = len(view)
    while pos < end:
        if end - pos < HEADER.size:
            return Scan(frames, pos, f"torn header at offset {pos} ({end - pos} bytes)")
        length, crc = HEADER.unpack_from(view, pos)
        if length > MAX_PAYLOAD:
            return Scan(frames, pos, f"implausible frame length {length} at offset {pos}")
        body_start = pos + HEADER.size
        if body_start + length > end:
            return Scan(
                frames,
                pos,
                f"torn frame at offset {pos}: {length} bytes announced, {end - body_start} present",
            )
        payload = bytes(view[body_start : body_start + length])
        if zlib.crc32(payload) != crc:
            return Scan(frames, pos, f"CRC mismatch in frame at offset {pos}")
        frames.append((pos, payload))
        pos = body_start + length
    return Scan(frames, pos, None)
