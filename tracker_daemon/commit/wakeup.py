"""A resettable event for the daemon's loops (one task waits, anyone sets)."""

from __future__ import annotations

import anyio

__all__ = ["Wakeup"]


class Wakeup:
    """A resettable event: ``set`` from anywhere in the loop, ``wait`` with a timeout."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, limit: float | None) -> None:
        """Return when set, or after ``limit`` seconds (None: no limit)."""
        with anyio.move_on_after(limit):
            await self._event.wait()
        self._event = anyio.Event()
