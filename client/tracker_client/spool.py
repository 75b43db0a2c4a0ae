"""``tracker_client.spool``: the path the daemon and older code import; the modules are
:mod:`tracker_client.delivery.spool` and :mod:`tracker_client.delivery.spool_import` (this one
only re-exports them; the client's own modules import the new paths, a contract in
.importlinter)."""

from __future__ import annotations

from .delivery.spool import (
    SUFFIX,
    ImportRefused,
    ImportResult,
    Oversized,
    Spool,
    SpoolBusy,
    default_spool_dir,
    record_value_budget,
)
from .delivery.spool_import import import_spool

__all__ = [
    "SUFFIX",
    "ImportRefused",
    "ImportResult",
    "Oversized",
    "Spool",
    "SpoolBusy",
    "default_spool_dir",
    "import_spool",
    "record_value_budget",
]
