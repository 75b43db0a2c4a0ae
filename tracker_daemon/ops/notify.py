"""sd_notify in a few lines of standard library: one datagram to ``$NOTIFY_SOCKET``.

Supports filesystem and abstract (``@``-prefixed) socket addresses. Without ``$NOTIFY_SOCKET``
(not started by systemd) every call is a no-op. ``watchdog_interval`` is half of ``WatchdogSec``
(from ``$WATCHDOG_USEC``, honouring ``$WATCHDOG_PID``), the period systemd recommends.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import anyio

__all__ = ["Notifier"]

log = logging.getLogger("tracker_daemon.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        self._warned = False
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self._watchdog_usec = 0
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self._watchdog_usec = int(usec)

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    @property
    def watchdog_interval(self) -> float | None:
        return self._watchdog_usec / 2 / 1e6 if self._watchdog_usec else None

    def notify(self, *fields: str) -> None:
        if not self._addr:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as exc:
            if not self._warned:
                log.warning("event=sd_notify_failed socket=%r reason=%r", self._addr, str(exc))
                self._warned = True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    async def keepalive(self, status_line: Callable[[], str]) -> None:
        """WATCHDOG=1 at half of WatchdogSec, from the event loop itself (a wedged loop stops
        pinging and systemd restarts it), and a STATUS= line every 5 s."""
        interval = self.watchdog_interval
        if not self.enabled:
            return
        period = min(interval, 5.0) if interval else 5.0
        last_status = 0.0
        while True:
            if interval:
                self.watchdog()
            if time.monotonic() - last_status >= 5.0:
                self.status(status_line())
                last_status = time.monotonic()
            await anyio.sleep(period)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
