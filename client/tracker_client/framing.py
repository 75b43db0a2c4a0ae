"""``tracker_client.framing``: the path the daemon and older code import; the module is
:mod:`tracker_client.wire.framing` (this one only re-exports it; the client's own modules import
the new path, a contract in .importlinter)."""

from __future__ import annotations

from .wire.framing import (
    HEADER,
    MAX_PAYLOAD,
    Scan,
    encode_frame,
    scan,
)

__all__ = [
    "HEADER",
    "MAX_PAYLOAD",
    "Scan",
    "encode_frame",
    "scan",
]
