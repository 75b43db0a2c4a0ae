"""``tracker_client.curve``: the path the daemon and older code import; the module is
:mod:`tracker_client.wire.curve` (this one only re-exports it; the client's own modules import
the new path, a contract in .importlinter)."""

from __future__ import annotations

from .wire.curve import (
    ENV_CLIENT_KEY,
    ENV_SERVER_KEY,
    CurveConfigError,
    CurveKeys,
    apply_curve,
    curve_from_env,
    curve_hint,
    load_curve_keys,
)

__all__ = [
    "CurveConfigError",
    "CurveKeys",
    "ENV_CLIENT_KEY",
    "ENV_SERVER_KEY",
    "apply_curve",
    "curve_from_env",
    "curve_hint",
    "load_curve_keys",
]
