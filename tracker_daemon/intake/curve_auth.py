"""CURVE on tcp: the daemon's key pair and the ZAP credentials provider that admits only the
clients whose public key is in the allowed directory (re-read whenever the directory changes),
plus the daemon's own key (its spool imports, administrators holding its secret key)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AllowedKeys", "CurveSetup"]

log = logging.getLogger("tracker_daemon.server")  # the server's log lines, as before

DENIED_LOG_INTERVAL_S = 60.0  # an unknown key is logged at most this often


@dataclass(frozen=True, slots=True)
class CurveSetup:
    """The daemon's CURVE key pair (Z85) and the directory of allowed clients' public keys."""

    public: bytes
    secret: bytes
    allowed_dir: Path


class AllowedKeys:
    """A ``zmq.auth`` credentials provider: the public keys of the ``*.key`` certificates in a
    directory (re-read when its mtime changes) and the daemon's own key. Runs in the ZAP thread."""

    def __init__(self, directory: Path, own_public: bytes) -> None:
        self.directory = directory
        self.own = own_public
        self.keys: set[bytes] = set()
        self._mtime = -1.0
        self._lock = threading.Lock()
        self.allowed = 0
        self.denied = 0
        self._denied_logged: dict[bytes, float] = {}
        self.reload()

    def reload(self) -> None:
        from zmq.auth.certs import load_certificates

        try:
            mtime = self.directory.stat().st_mtime
            if mtime == self._mtime:
                return
            keys = set(load_certificates(self.directory))
        except (OSError, ValueError) as exc:
            log.error("event=curve_keys_unreadable dir=%s reason=%r", self.directory, str(exc))
            return
        self._mtime = mtime
        if keys != self.keys:
            self.keys = keys
            log.info("event=curve_keys_loaded dir=%s clients=%d", self.directory, len(keys))

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            self.reload()
            if key == self.own or key in self.keys:
                self.allowed += 1
                return True
            self.denied += 1
            now = time.monotonic()
            if now - self._denied_logged.get(key, -1e9) >= DENIED_LOG_INTERVAL_S:
                self._denied_logged[key] = now
                log.warning(
                    "event=auth_denied mechanism=CURVE client_key=%s denied_total=%d "
                    "note=key_not_in_curve_allowed_clients_dir",
                    key.decode(errors="replace"),
                    self.denied,
                )
            return False
