"""Barrier waiters: a flush, end_run or plugin call of a client waits until every sequenced
message of that client up to a seq is done (``committed_upto >= seq``), or a timeout.

    wait(client, seq) ─► already done? True
                      └► expedite(client): make that client's buffered runs due now (only its own)
                         park an event; release(client) sets the events whose seq is done
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

__all__ = ["Barriers"]


class Barriers:
    def __init__(
        self,
        committed_upto: Callable[[str], int],
        *,
        expedite: Callable[[str], None],
        timeout: float,
    ) -> None:
        self._committed_upto = committed_upto
        self._expedite = expedite
        self.timeout = timeout
        self._waiters: dict[str, list[tuple[int, anyio.Event]]] = {}

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def release(self, client_id: str) -> None:
        """Wake the waiters of ``client_id`` whose seq is done now."""
        waiters = self._waiters.get(client_id)
        if not waiters:
            return
        upto = self._committed_upto(client_id)
        keep = []
        for seq, event in waiters:
            if seq <= upto:
                event.set()
            else:
                keep.append((seq, event))
        if keep:
            self._waiters[client_id] = keep
        else:
            del self._waiters[client_id]

    async def wait(self, client_id: str, seq: int, within: float | None = None) -> bool:
        """True once every message of ``client_id`` up to ``seq`` is done; False after
        ``within`` s (default: the barrier timeout)."""
        if self._committed_upto(client_id) >= seq:
            return True
        self._expedite(client_id)
        event = anyio.Event()
        self._waiters.setdefault(client_id, []).append((seq, event))
        with anyio.move_on_after(self.timeout if within is None else within):
            await event.wait()
            return True
        left = [w for w in self._waiters.get(client_id, ()) if w[1] is not event]
        if left:
            self._waiters[client_id] = left
        else:
            self._waiters.pop(client_id, None)
        return False
